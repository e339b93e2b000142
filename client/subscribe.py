"""Subscribing: resume-exact streams of packets, decoded locally in batches.

Delivery: each frame exactly once and in seq order. After a failure the stream reconnects with
exponential backoff and resumes from the seq after the last packet handed out, so a server
restart or network cut neither loses nor duplicates frames (as long as the server's retention
still holds them); a packet that starts before the wanted seq is decoded whole and its
already-delivered frames are dropped here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from latentwire.codec.codec import Codec
from latentwire.codec.coding.bitstream import CodingPath
from latentwire.codec.coding.compact import CompactReader, RecordClock, is_compact
from latentwire.codec.errors import BitstreamError
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

from .errors import ChannelReset
from .retry import RETRYABLE, backoff
from .types import Frame, FrameBatch, Packet

FromSeq = int | str | None  # an int, "latest", or None (the oldest retained frame)


def check_from_seq(from_seq: FromSeq) -> None:
    if from_seq is not None and from_seq != "latest" and not isinstance(from_seq, int):
        raise ValueError(f"from_seq must be None, an int or 'latest', got {from_seq!r}")


@dataclass(frozen=True)
class StreamOptions:
    """How one subscription behaves. idle_timeout: stop after this many seconds without data
    (None: never). max_retries: reconnects in a row before the error reaches the caller (None:
    forever). stop: an Event that ends the iteration promptly when set (signal handlers).
    compact: ask for one-frame packets as compact stream frames (codec/FORMAT.md), ~20 bytes less
    per frame on the wire; they are expanded back to the full packets here."""

    idle_timeout: float | None = None
    max_backoff: float = 5.0
    max_retries: int | None = None
    stop: threading.Event | None = None
    compact: bool = True
    epoch: str = ""  # the epoch from_seq belongs to (a saved position's); "" : not checked


class Subscriber:
    """The subscribe side of a Client: one stub, the codecs it decodes with, a logger."""

    def __init__(self, stub: pb_grpc.LatentwireStub, metadata: tuple[tuple[str, str], ...],
                 codec_for: Callable[[str, str | Path | None, bool], Codec], log: logging.Logger) -> None:
        self.stub, self.metadata, self.codec_for, self.log = stub, metadata, codec_for, log
        # responses read ahead on a helper thread (bounded: a slow consumer still pushes back on the
        # server through gRPC flow control), and the most frames decoded in one call (1024:
        # decode_many is near the bare graph's speed there, and onnxruntime's arena grows to the
        # largest batch it has seen, so a larger cap only costs receiver memory)
        self.prefetch_responses = 16
        self.max_batch_frames = 1024

    # ------------------------------------------------------------------ packets
    def responses(self, channel: str, from_seq: int | None, opts: StreamOptions) -> Iterator[tuple[list[Packet], int]]:
        """(new packets, protobuf size of the responses that carried them), resuming after the last
        packet of the last list handed out (callers consume a whole list before the next).

        Why a list of every response already received: a receiver that fell behind then decodes the
        backlog in one decode_many call instead of one call per response. Under a steady stream of
        small responses (the server sends each commit at once; gRPC flow control only pushes back
        after ~64 KiB) per-call overhead would otherwise keep a behind receiver behind for good."""
        next_seq = from_seq
        epoch = opts.epoch  # then the one the server names: a reconnect must not cross into another epoch
        attempt = 0
        stop = opts.stop
        last_data = time.monotonic()  # idle time counts across reconnects: failing calls bring no data
        while stop is None or not stop.is_set():
            req = pb.SubscribeRequest(channel=channel, compact_frames=opts.compact, compact_records=opts.compact,
                                      epoch=epoch if next_seq is not None else "")
            if next_seq is not None:
                req.from_seq = next_seq
            call = self.stub.Subscribe(req, metadata=self.metadata)
            idle = _IdleWatch(call, opts.idle_timeout, stop)
            ahead = _Prefetch(call, depth=self.prefetch_responses)
            model_id = ""  # a PacketRecord names its model only when it changes within the stream
            reader = CompactReader()  # compact frames refer to this call's previous packet, as the server's writer
            clock = RecordClock()  # ... and so do compact records' seqs and commit times
            try:
                for group in ahead.groups(self.max_batch_frames):
                    idle.touch()
                    attempt = 0
                    out, wire = [], 0
                    for resp in group:
                        if resp.epoch and epoch and resp.epoch != epoch:  # a server that does not check
                            raise ChannelReset(channel, f"the server now serves epoch {resp.epoch}, not {epoch}",
                                               None if next_seq is None else next_seq - 1)
                        epoch = resp.epoch or epoch
                        if resp.trimmed_frames:
                            self.log.warning("channel %s: %d frames from seq %s were trimmed by retention before "
                                             "delivery", channel, resp.trimmed_frames, next_seq)
                        wire += resp.ByteSize()
                        for p in resp.packets:
                            model_id = p.model_id or model_id
                            payload, count, quality, shape = p.payload, p.count, p.quality, tuple(p.sample_shape)
                            first, stamp = p.first_seq, p.timestamp
                            if opts.compact:  # every packet sets the context, delivered before or not
                                compact = is_compact(payload)
                                payload = reader.unpack(payload)  # raises on a frame it cannot expand
                                if compact and reader.context is not None:
                                    count, quality, shape = 1, reader.context.quality, reader.context.sample_shape
                                if p.HasField("timestamp_delta_us"):  # a trimmed compact record (0: it follows)
                                    first, stamp = clock.fill(first or None, p.timestamp_delta_us)
                                else:
                                    clock.whole(first, count, stamp)
                            if next_seq is not None and first + count <= next_seq:
                                continue  # already delivered
                            next_seq = first + count
                            if not model_id:
                                raise BitstreamError("the server sent a packet without naming its model: "
                                                     "server and client disagree on the Subscribe protocol")
                            out.append(Packet(first, count, stamp, model_id, quality, shape, payload,
                                              tuple(p.anomaly_scores), epoch))
                    if out:
                        yield out, wire
                        idle.touch()
                        last_data = time.monotonic()
                self.log.info("channel %s: server ended the stream (shutdown); resuming from seq %s", channel, next_seq)
            except grpc.RpcError as e:
                if idle.expired or (stop is not None and stop.is_set()):
                    return
                if e.code() == grpc.StatusCode.DATA_LOSS:
                    raise ChannelReset(channel, str(e.details()), None if next_seq is None else next_seq - 1) from None
                if e.code() not in RETRYABLE or (opts.max_retries is not None and attempt >= opts.max_retries):
                    raise
                if opts.idle_timeout is not None and time.monotonic() - last_data > opts.idle_timeout:
                    raise  # reconnecting brought nothing for idle_timeout: the caller sees why
                self.log.info("channel %s: %s (%s); reconnecting from seq %s", channel, e.code().name, e.details(),
                              next_seq)
            finally:
                ahead.close()
                idle.cancel()
                call.cancel()
            delay = backoff(attempt, opts.max_backoff)
            attempt += 1
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)

    def packets(self, channel: str, from_seq: int | None, opts: StreamOptions) -> Generator[Packet, None, None]:
        for packets, _ in self.responses(channel, from_seq, opts):
            yield from packets

    # ------------------------------------------------------------------ decoded
    def decoded(self, responses: Iterator[tuple[list[Packet], int]], cache_dir: str | Path | None,
                denoise: bool = False) -> Iterator[tuple[list[Packet], list[np.ndarray], int]]:
        """Each response's packets with their decoded arrays: one decode_many per model per response."""
        for packets, wire in responses:
            if len(packets) == 1 and not denoise:
                p = packets[0]
                yield packets, [self.codec_for(p.model_id, cache_dir, False).decode(p.payload)], wire
                continue
            arrays: list[np.ndarray] = [np.empty(0)] * len(packets)
            by_model: dict[str, list[int]] = {}
            for i, p in enumerate(packets):
                by_model.setdefault(p.model_id, []).append(i)
            for model_id, idx in by_model.items():
                codec = self.codec_for(model_id, cache_dir, denoise)  # denoise runs the encoder
                decoded = codec.decode_many([packets[i].payload for i in idx])
                if denoise:
                    decoded = denoised(codec, [packets[i] for i in idx], decoded)
                for i, a in zip(idx, decoded, strict=True):
                    arrays[i] = a
            yield packets, arrays, wire

    def batches(self, channel: str, from_seq: int | None, opts: StreamOptions, cache_dir: str | Path | None,
                denoise: bool) -> Iterator[FrameBatch]:
        want = from_seq
        for packets, arrays, wire in self.decoded(self.responses(channel, from_seq, opts), cache_dir, denoise):
            frames = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            counts = [p.count for p in packets]
            stamps = np.repeat(np.array([p.timestamp for p in packets]), counts)
            paths = np.repeat(np.array([p.path for p in packets]), counts)
            scores = np.concatenate([np.asarray(p.anomaly_scores, dtype=np.float32) if p.anomaly_scores
                                     else np.full(p.count, np.nan, dtype=np.float32) for p in packets])
            first = packets[0].first_seq
            if want is not None and first < want:  # the first packet started before the resume point
                cut = want - first
                frames, stamps, paths, scores, first = frames[cut:], stamps[cut:], paths[cut:], scores[cut:], want
            want = packets[-1].first_seq + packets[-1].count
            yield FrameBatch(first, frames, stamps, len(packets), sum(len(p.payload) for p in packets), wire,
                             paths, scores)

    def frames(self, channel: str, from_seq: int | None, opts: StreamOptions, cache_dir: str | Path | None,
               denoise: bool) -> Iterator[Frame]:
        want = from_seq
        for packets, arrays, _ in self.decoded(self.responses(channel, from_seq, opts), cache_dir, denoise):
            for p, data in zip(packets, arrays, strict=True):
                path = p.path
                scores = p.anomaly_scores
                for i in range(p.count):
                    seq = p.first_seq + i
                    if want is not None and seq < want:
                        continue  # the packet started before the resume point
                    yield Frame(seq, p.timestamp, p.model_id, p.quality, data[i], path,
                                float(scores[i]) if scores else None)
                want = p.first_seq + p.count


def denoised(codec: Codec, packets: list[Packet], decoded: list[np.ndarray]) -> list[np.ndarray]:
    """The frames of residual and lossless packets replaced by the model's latent-only
    reconstruction (Codec.denoise), one encoder + decoder run per sample shape. Latent packets
    already decode to the model's reconstruction of the sender's frame: re-encoding it would only
    add a second round of error, so they stay as decoded."""
    out = list(decoded)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for k, p in enumerate(packets):
        if p.path != CodingPath.LATENT:
            by_shape.setdefault(tuple(decoded[k].shape[1:]), []).append(k)
    for ks in by_shape.values():
        clean = codec.denoise(np.concatenate([decoded[k] for k in ks]))
        start = 0
        for k in ks:
            n = decoded[k].shape[0]
            out[k] = clean[start : start + n]
            start += n
    return out


_EOS = object()


class _Prefetch:
    """Reads a server-streaming call on its own thread into a bounded queue, so the consumer can
    take every response that has already arrived in one go (see Subscriber.responses)."""

    def __init__(self, call: grpc.Call, depth: int = 16):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._closed = threading.Event()
        threading.Thread(target=self._pump, args=(call,), name="latentwire-subscribe", daemon=True).start()

    def _pump(self, call: grpc.Call) -> None:
        try:
            for resp in call:  # type: ignore[attr-defined]
                if not self._put(resp):
                    return
            self._put(_EOS)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def groups(self, max_frames: int) -> Iterator[list[pb.SubscribeResponse]]:
        """Lists of responses: blocks for one, then adds those already queued (up to max_frames)."""
        while True:
            item = self._q.get()
            group: list[pb.SubscribeResponse] = []
            frames = 0
            while True:
                if item is _EOS or isinstance(item, BaseException):
                    if group:
                        yield group
                    if isinstance(item, BaseException):
                        raise item
                    return
                group.append(item)
                frames += sum(p.count for p in item.packets)
                if frames >= max_frames:
                    break
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            yield group

    def close(self) -> None:
        self._closed.set()


class _IdleWatch:
    """Cancels a streaming call when no response arrived for `timeout` seconds."""

    def __init__(self, call: grpc.Call, timeout: float | None, stop: threading.Event | None = None):
        self.call, self.timeout, self.expired, self.outer = call, timeout, False, stop
        self._last = time.monotonic()
        self._stop = threading.Event()
        if timeout is not None or stop is not None:
            threading.Thread(target=self._watch, daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.1, self.timeout or 0.1)):
            if self.outer is not None and self.outer.is_set():
                self.call.cancel()
                return
            if self.timeout is not None and time.monotonic() - self._last > self.timeout:
                self.expired = True
                self.call.cancel()
                return

    def cancel(self) -> None:
        self._stop.set()
