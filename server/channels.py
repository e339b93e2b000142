"""Channels: a name bound to a codec bundle, a store (its log), a batcher and its subscribers.

Fan-out policy: subscribers never get a per-subscriber queue. Each one reads packets from its
own position: from a small in-memory tail of the newest packets (`tail_packets`, shared by all)
when its position is still in it, otherwise from the store (the SQLite file, or Redis). Every
commit the store reports (this replica's or another's) only bumps `next_seq` and wakes waiters
on a Condition. A slow subscriber therefore blocks no one and costs
O(1) memory: it just falls behind and catches up from disk (gRPC flow control stops the server
from reading ahead more than one response per stream). If it falls behind the retention window
it gets the oldest retained packet and `trimmed_frames` tells it how many frames it lost.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from latentwire.codec.bundle import Manifest, sha256_file
from latentwire.codec.codec import Codec

from .batcher import Batcher
from .store import ChannelStore, StoredPacket, StoreReset

log = logging.getLogger("latentwire.server.channels")


@dataclass(frozen=True)
class BundleFileInfo:
    name: str
    size: int
    sha256: str


@dataclass
class ModelEntry:
    """A loaded bundle: its Codec plus the files GetModel and DownloadBundle report."""

    codec: Codec
    files: list[BundleFileInfo]

    @property
    def model_id(self) -> str:
        return self.codec.model_id

    @property
    def path(self) -> Path:
        return Path(self.codec.bundle.path)

    @property
    def manifest(self) -> Manifest:
        return self.codec.manifest

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_codec(cls, codec: Codec) -> ModelEntry:
        path = Path(codec.bundle.path)
        names = ["manifest.json"] + sorted(codec.manifest.files)
        entropy = codec.manifest.entropy_file
        if entropy and entropy not in names:
            names.append(entropy)
        files = [BundleFileInfo(n, (path / n).stat().st_size, sha256_file(path / n))
                 for n in names if (path / n).is_file()]
        return cls(codec, files)


class Channel:
    batcher: Batcher  # set by the server once the batcher is built, before the channel is served

    def __init__(self, name: str, model: ModelEntry, store: ChannelStore, quality: int | None, tail_packets: int = 256,
                 tail_bytes: int = 32 << 20, *, fallback: bool = False, anomaly_threshold: float | None = None):
        self.name = name
        self.model = model
        self.store = store
        self.quality = quality
        self.fallback = fallback  # RAW frames above anomaly_threshold go out as lossless packets
        self.anomaly_threshold = anomaly_threshold  # effective: configured, else the bundle's, else None
        # bounded by count AND bytes: 256 packets of up to max_message_bytes each would be GiBs
        self._tail: deque[StoredPacket] = deque()
        self._tail_packets, self._tail_cap, self._tail_bytes = tail_packets, tail_bytes, 0
        self._cond = threading.Condition()
        self._closed = False
        self.subscribers = 0
        self._next_seq = store.next_seq  # then advanced by every commit the store reports
        store.follow(self.on_commit)
        store.watch_reset(self.on_reset)

    @property
    def epoch(self) -> str:
        return self.store.epoch

    @property
    def fault(self) -> StoreReset | None:
        """Set once the store was found reset: the channel is no longer served (DATA_LOSS)."""
        return self.store.reset

    def on_reset(self, reset: StoreReset) -> None:
        """The store was reset under this channel: wake every subscriber so it ends with the status."""
        with self._cond:
            self._cond.notify_all()

    @property
    def next_seq(self) -> int:
        """The next seq as this replica has seen it (the store's own answer: store.next_seq)."""
        return self._next_seq

    def on_commit(self, stored: list[StoredPacket]) -> None:
        with self._cond:
            for p in stored:
                if p.end_seq <= self._next_seq:
                    continue  # seen already (the store's tail starts where this channel stood)
                if self._tail and p.first_seq != self._tail[-1].end_seq:
                    self._tail.clear()  # a gap (after a store outage): the tail must stay contiguous
                    self._tail_bytes = 0
                self._tail.append(p)
                self._tail_bytes += len(p.payload)
                self._next_seq = max(self._next_seq, p.end_seq)
            while self._tail and (len(self._tail) > self._tail_packets or self._tail_bytes > self._tail_cap):
                self._tail_bytes -= len(self._tail.popleft().payload)
            self._cond.notify_all()

    def read_from(self, seq: int, limit: int) -> list[StoredPacket]:
        """Packets holding frames >= seq, oldest first: from the memory tail when it covers seq."""
        with self._cond:
            if self._tail and self._tail[0].first_seq <= seq:
                out = []
                for p in self._tail:
                    if p.end_seq > seq:
                        out.append(p)
                        if len(out) >= limit:
                            break
                return out
        return self.store.read_from(seq, limit)

    @property
    def tail_bytes(self) -> int:
        """Bytes held by the shared in-memory tail (<= tail_bytes, see __init__)."""
        return self._tail_bytes

    def wait_for(self, seq: int, timeout: float) -> bool:
        """Block until a frame with seq >= `seq` exists (True) or timeout/close (False)."""
        with self._cond:
            if self._next_seq > seq:
                return True
            if self._closed or self.fault is not None:
                return False
            self._cond.wait(timeout)
            return self._next_seq > seq

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
