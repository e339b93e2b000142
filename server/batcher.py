"""Dynamic batcher of one channel: the single writer between this server's publishers and the
channel's store.

Why one thread per channel: sequence numbers must be assigned in commit order, and jointly
coding many frames in one packet is what makes the codec cheap per frame. RAW frames from all
publishers are gathered until `max_frames` are waiting or the oldest has waited `max_delay_ms`
(Triton's dynamic batcher policy), encoded with the channel's Codec and committed as packets of
at most max_frames frames. The channel's encode may score each frame and split a batch into
several packets (frames above the anomaly threshold go out as lossless packets, in place); the
scores are stored with their packets. Edge-coded packets go through the same queue so they keep their place
in the order. The queue is bounded (Limits.queue_frames): a publisher that would overflow it is
told RESOURCE_EXHAUSTED in-band and may retry.

A store that refuses a commit because it is full (StoreFull) or unreachable (StoreUnavailable) is an
expected state, logged once per change by StoreHealth; the publishers of the refused batch are told
(their stream ends) and resend. The same streams' messages queued behind it are refused too, so no
later frame of theirs is committed before the refused ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from latentwire.codec.coding.bitstream import CodingPath

from .store import ChannelStore, OffsetConflict, PendingPacket, StoredPacket, StoreFull, StoreReset, StoreUnavailable
from .store_health import StoreHealth

log = logging.getLogger("latentwire.server.batcher")


CONFLICT_RETRIES = 8  # redo a batch this often when other replicas keep moving its producers' offsets
# producers whose next offset the batcher remembers between commits (least recently used dropped first)
OFFSET_CACHE = 4096


@dataclass
class StreamState:
    """One Publish stream as the batcher sees it. Why: a refused commit ends its stream at that message,
    but the stream's later messages may be queued already; committing one of them (space came back
    meanwhile) would move the producer's offset past the refused frames, and their resend would then
    be dropped as duplicates. So once one is refused, every later one of the stream is refused too;
    the resend comes on a new stream."""

    refused: StoreFull | StoreUnavailable | None = None


class QueueFull(Exception):
    pass


class Stopped(Exception):
    pass


@dataclass
class Commit:
    """What happened to one work item: accepted frames have seqs first_seq .. first_seq+accepted-1."""

    accepted: int
    duplicates: int
    first_seq: int


@dataclass
class RawItem:
    frames: np.ndarray  # (n_valid, *sample_shape) raw samples that passed validation
    index: np.ndarray  # index of each valid frame inside its message (for producer offsets)
    n_total: int  # frames in the message, rejected ones included
    quality: int | None
    producer_id: str = ""
    producer_offset: int = 0
    future: Future = field(default_factory=Future)
    t_enqueue: float = field(default_factory=time.monotonic)
    stream: StreamState | None = None  # the Publish stream that sent it

    @property
    def n(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class PacketItem:
    packets: list[tuple[bytes, int, int, int]]  # (packet bytes, frame count, quality, frame offset in message)
    n_total: int  # frames in the message, rejected packets included (producer offsets count frames)
    producer_id: str = ""
    producer_offset: int = 0
    future: Future = field(default_factory=Future)
    t_enqueue: float = field(default_factory=time.monotonic)
    stream: StreamState | None = None  # the Publish stream that sent it

    @property
    def n(self) -> int:
        return sum(c for _, c, _, _ in self.packets)


@dataclass(frozen=True)
class Encoded:
    """One packet an Encode call produced for consecutive frames of its batch."""

    packet: bytes
    count: int
    anomaly_scores: tuple[float, ...] | None = None  # one per frame, when the encoder scored them


# frames, quality -> one packet of all frames, or packets covering the frames in order
Encode = Callable[[np.ndarray, "int | None"], "bytes | list[Encoded]"]


class Batcher:
    def __init__(
        self,
        name: str,
        store: ChannelStore,
        encode: Encode,
        model_id: str,
        default_quality: int,
        max_frames: int = 512,
        max_delay_ms: float = 5.0,
        queue_frames: int = 65536,
        metrics=None,
        trim_every_s: float = 1.0,
    ):
        self.name = name
        self.store = store
        self.encode = encode
        self.model_id = model_id
        self.default_quality = default_quality
        self.max_frames = max(1, max_frames)
        self.max_delay = max_delay_ms / 1000.0
        self.queue_frames = queue_frames
        self.metrics = metrics
        self.trim_every_s = trim_every_s
        self._items: deque[RawItem | PacketItem] = deque()
        self._depth = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._last_trim = 0.0
        # Why: a store round trip per commit only to learn what this batcher's own last commit wrote
        # (one Redis call in two on the packet path). Safe because every append passes the offsets it
        # deduplicated against as expected_offsets: a replica that moved one in between makes the
        # append raise OffsetConflict, which empties the cache and redoes the batch from the store.
        self._offsets: OrderedDict[str, int] = OrderedDict()
        self.health = StoreHealth(name, metrics)
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._depth

    def submit(self, item: RawItem | PacketItem) -> Future:
        with self._cond:
            if self._stopping:
                raise Stopped(f"channel {self.name!r} is shutting down: reconnect to the restarted server")
            if item.n and self._depth + item.n > self.queue_frames:
                raise QueueFull(
                    f"channel {self.name!r} queue is full ({self._depth} of {self.queue_frames} frames waiting): "
                    "retry later, send fewer frames per message, or raise limits.queue_frames"
                )
            self._items.append(item)
            self._depth += item.n
            self._set_depth()
            self._cond.notify()
        return item.future

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(self._depth)

    def stop(self, timeout: float = 10.0) -> None:
        """Flush everything queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker

    def _take_batch(self) -> list[RawItem | PacketItem] | None:
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait(timeout=self.trim_every_s)
                if not self._items:
                    self._maybe_trim()
            first = self._items[0]
            if isinstance(first, PacketItem):
                self._items.popleft()
                self._depth -= first.n
                return [first]
            # RAW: wait until enough frames or the oldest frame's deadline
            deadline = first.t_enqueue + self.max_delay
            while not self._stopping:
                waiting, blocked = 0, False
                for it in self._items:
                    if isinstance(it, PacketItem) or it.quality != first.quality:
                        blocked = True
                        break
                    waiting += it.n
                if waiting >= self.max_frames or blocked:
                    break  # enough frames, or a packet/other quality is queued behind them
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            batch: list[RawItem | PacketItem] = []
            frames = 0
            while self._items:
                it = self._items[0]
                if isinstance(it, PacketItem) or it.quality != first.quality:
                    break
                if batch and frames + it.n > self.max_frames:
                    break
                batch.append(self._items.popleft())
                frames += it.n
                self._depth -= it.n
            self._set_depth()
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = self._unfenced(batch)
            if batch:
                try:
                    self._commit(batch)
                except StoreReset as e:  # logged once by the store; every publisher gets it (DATA_LOSS)
                    _fail(batch, e)
                except (StoreFull, StoreUnavailable) as e:  # expected: one line per state change, no traceback
                    self.health.failed(e, "commit", sum(it.n for it in batch))
                    for it in batch:
                        if it.stream is not None:
                            it.stream.refused = e
                    _fail(batch, e)
                except Exception as e:
                    log.exception("channel %s: commit failed", self.name)
                    _fail(batch, e)
                else:
                    self.health.succeeded("commit")
            self._maybe_trim()

    @staticmethod
    def _unfenced(batch: list[RawItem | PacketItem]) -> list[RawItem | PacketItem]:
        """The batch less the messages of streams that had one refused before (refused the same way)."""
        keep: list[RawItem | PacketItem] = []
        for it in batch:
            if it.stream is not None and it.stream.refused is not None:
                _fail([it], it.stream.refused)
            else:
                keep.append(it)
        return keep

    def _commit(self, batch: list[RawItem | PacketItem]) -> None:
        """Deduplicate against the producers' offsets and commit; when another replica moved an
        offset in between (OffsetConflict), read the offsets again and redo the batch."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                if isinstance(batch[0], PacketItem):
                    self._commit_packets(batch[0])
                else:  # a batch is one packet item or raw items only (see _take_batch)
                    self._commit_raw(cast(list[RawItem], batch))
                return
            except OffsetConflict as e:
                self._offsets.clear()
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                log.info("channel %s: %s; deduplicating the batch again", self.name, e)
                if self.metrics is not None:
                    self.metrics.store_errors.labels(self.name, "offset_conflict").inc()

    def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim < self.trim_every_s:
            return
        self._last_trim = now
        try:
            reports = self.store.trim()
        except (StoreFull, StoreUnavailable) as e:  # expected: retried on the next tick, one line per state change
            self.health.failed(e, "trim")
            return
        except Exception:
            log.exception("channel %s: retention trim failed; retrying in %.0f s", self.name, self.trim_every_s)
            return
        self.health.succeeded("trim")
        for r in reports:
            if self.metrics is not None:
                self.metrics.trimmed_frames.labels(self.name, r.reason.split()[0]).inc(r.frames)

    def _dedup(self, producer_id: str, hwm: dict[str, int], read: dict[str, int]) -> int:
        """The producer's next offset as the store has it (remembered since this batcher's last commit
        for it, or read; remembered in read, the append's expected offset)."""
        if producer_id not in hwm:
            known = self._offsets.get(producer_id)
            hwm[producer_id] = read[producer_id] = (
                known if known is not None else self.store.producer_next_offset(producer_id))
        return hwm[producer_id]

    def _append(self, pending: list[PendingPacket], hwm: dict[str, int], read: dict[str, int]) -> list[StoredPacket]:
        stored = self.store.append(pending, hwm, read)
        for pid, offset in hwm.items():  # committed: the store holds these now
            self._offsets[pid] = offset
            self._offsets.move_to_end(pid)
        while len(self._offsets) > OFFSET_CACHE:
            self._offsets.popitem(last=False)
        return stored

    def _commit_raw(self, batch: list[RawItem]) -> None:
        hwm: dict[str, int] = {}
        read: dict[str, int] = {}
        keep: list[np.ndarray] = []
        per_item: list[tuple[int, int]] = []  # (accepted, duplicates)
        for it in batch:
            frames = it.frames
            dups = 0
            if it.producer_id:
                mark = self._dedup(it.producer_id, hwm, read)
                fresh = (it.producer_offset + it.index) >= mark
                dups = int(np.count_nonzero(~fresh))
                frames = frames[fresh]
                hwm[it.producer_id] = max(mark, it.producer_offset + it.n_total)
            keep.append(frames)
            per_item.append((int(frames.shape[0]), dups))
        total = sum(a for a, _ in per_item)
        stored: list[StoredPacket] = []
        if total:
            raw = np.concatenate([k for k in keep if k.shape[0]], axis=0)
            pending = []
            t0 = time.perf_counter()
            for s in range(0, total, self.max_frames):
                chunk = raw[s : s + self.max_frames]
                out = self.encode(chunk, batch[0].quality)
                parts = [Encoded(out, int(chunk.shape[0]))] if isinstance(out, (bytes, bytearray)) else out
                if sum(e.count for e in parts) != chunk.shape[0]:
                    raise RuntimeError(f"the encoder returned packets for {sum(e.count for e in parts)} frames "
                                       f"of a batch of {chunk.shape[0]}")
                for e in parts:
                    pending.append(PendingPacket(e.count, self.model_id,
                                                 _packet_quality(e.packet, batch[0].quality, self.default_quality),
                                                 bytes(e.packet), e.anomaly_scores))
            dt = time.perf_counter() - t0
            if self.metrics is not None:
                self.metrics.encode_seconds.labels(self.name).observe(dt)
                self.metrics.batch_frames.labels(self.name).observe(total)
                self.metrics.raw_bytes_in.labels(self.name).inc(raw.nbytes)
            stored = self._append(pending, hwm, read)
        elif hwm:
            self._append([], hwm, read)
        seq = stored[0].first_seq if stored else self.store.next_seq
        for it, (acc, dups) in zip(batch, per_item, strict=True):
            it.future.set_result(Commit(acc, dups, seq))
            seq += acc
        self._after_commit(stored, "raw")

    def _commit_packets(self, it: PacketItem) -> None:
        hwm: dict[str, int] = {}
        read: dict[str, int] = {}
        pending = []
        dups = 0
        mark = self._dedup(it.producer_id, hwm, read) if it.producer_id else 0
        for data, count, quality, pos in it.packets:
            if it.producer_id and it.producer_offset + pos + count <= mark:
                dups += count
            else:
                pending.append(PendingPacket(count, self.model_id, quality, data))
        if it.producer_id:
            hwm[it.producer_id] = max(mark, it.producer_offset + it.n_total)
        stored = self._append(pending, hwm, read) if (pending or hwm) else []
        acc = sum(p.count for p in pending)
        it.future.set_result(Commit(acc, dups, stored[0].first_seq if stored else self.store.next_seq))
        self._after_commit(stored, "packet")

    def _after_commit(self, stored: list[StoredPacket], kind: str) -> None:
        """Metrics; subscribers hear of the commit from the store (ChannelStore.follow)."""
        if not stored:
            return
        if self.metrics is not None:
            self.metrics.frames_in.labels(self.name, kind).inc(sum(s.count for s in stored))
            self.metrics.wire_bytes_in.labels(self.name).inc(sum(len(s.payload) for s in stored))
            paths: dict[str, int] = {}
            for s in stored:
                paths[packet_path(s.payload)] = paths.get(packet_path(s.payload), 0) + s.count
            for path, n in paths.items():
                self.metrics.frames_path.labels(self.name, path).inc(n)


def _fail(items: list[RawItem | PacketItem], error: Exception) -> None:
    for it in items:
        if not it.future.done():
            it.future.set_exception(error)


def packet_path(packet: bytes) -> str:
    """"latent", "residual" or "lossless" from a committed packet's flags byte (Codec.path without
    re-checking the CRC: the packet was validated before it was committed)."""
    return CodingPath.from_flags(packet[3] if len(packet) > 3 else 0).value


def _packet_quality(packet: bytes, asked: int | None, default: int) -> int:
    """The quality the packet header records (what the encoder really used)."""
    try:
        from latentwire.codec.coding.bitstream import peek_header

        return int(peek_header(packet).quality)
    except Exception:  # noqa: BLE001 - a codec without the packet format: trust the request
        return default if asked is None else int(asked)
