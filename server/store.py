"""Where a channel's packets live: the store interface and what both implementations share.

A channel store is an append-only log of committed packets in frame-seq order, plus the producer
high-water marks that make resending idempotent. Two implementations keep the same guarantees:
- `SqliteStore` (sqlite_store.py): the embedded default, one file per channel on local disk;
- `RedisStore` (redis_store.py): a Redis Stream per channel, shared by any number of server
  replicas (`latentwire serve --store redis://HOST:PORT/DB`).

Guarantees (tests/test_store_contract.py runs the same checks on both):
- sequence numbers are dense and assigned at commit, identical for every reader on every replica;
- a reader can resume from any retained seq;
- `append` checks the producers' offsets and appends in one atomic step: a batch whose dedup
  decision is stale (another replica committed for the same producer meanwhile) raises
  OffsetConflict and is redone, so a producer's frame is never committed twice;
- retention bounds frames, bytes and age; what a trim removes is reported;
- every commit, local or from another replica, reaches `follow`ers in seq order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """Base of the store's own failures."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (Redis down, network cut): nothing was committed by the call
    that raised it, so publishers are told UNAVAILABLE and resend, subscribers reconnect."""


class OffsetConflict(StoreError):
    """A producer's offset moved between the dedup read and the append (another replica committed
    for it): the batch must be deduplicated again before it is appended."""


class ChannelMismatch(StoreError):
    """The store already holds this channel for another model: a replica with a different bundle
    must not append to it."""


@dataclass(frozen=True)
class StoredPacket:
    """One committed packet: `count` frames with seqs first_seq .. first_seq+count-1."""

    first_seq: int
    count: int
    ts: float
    model_id: str
    quality: int
    payload: bytes
    anomaly_scores: tuple[float, ...] | None = None  # one per frame when the server scored them

    @property
    def end_seq(self) -> int:
        """One past the last seq in the packet."""
        return self.first_seq + self.count


@dataclass(frozen=True)
class PendingPacket:
    """A packet about to be committed."""

    count: int
    model_id: str
    quality: int
    payload: bytes
    anomaly_scores: tuple[float, ...] | None = None  # one per frame, or None (not scored)


@dataclass(frozen=True)
class RetentionPolicy:
    """Bounds on one channel's log. 0 means unbounded."""

    max_bytes: int = 1 << 30
    max_age_s: float = 7 * 24 * 3600.0
    max_frames: int = 0  # keep at most this many of the newest frames


@dataclass(frozen=True)
class TrimReport:
    packets: int
    frames: int
    bytes: int
    first_seq: int  # first seq still retained after the trim
    reason: str


OnCommit = Callable[[list[StoredPacket]], None]


class ChannelStore(Protocol):
    """One channel's log. append/trim come from the channel's one batcher thread (per replica);
    read_from from any thread."""

    @property
    def next_seq(self) -> int:
        """The seq the next committed frame gets (authoritative: asks the store)."""
        ...

    @property
    def first_seq(self) -> int:
        """Oldest retained seq (== next_seq when empty)."""
        ...

    @property
    def size_bytes(self) -> int: ...

    def producer_next_offset(self, producer_id: str) -> int: ...

    def check_model(self, model_id: str) -> None:
        """Record the channel's model, or raise ChannelMismatch if the store holds another one."""
        ...

    def follow(self, on_commit: OnCommit) -> None:
        """Deliver every commit from now on (this replica's and the others') in seq order."""
        ...

    def append(self, packets: list[PendingPacket], producer_offsets: dict[str, int] | None = None,
               expected_offsets: dict[str, int] | None = None, ts: float | None = None) -> list[StoredPacket]:
        """Commit packets (consecutive seqs) and producer high-water marks atomically; with
        expected_offsets, only if every listed producer is still at that offset (OffsetConflict)."""
        ...

    def trim(self, now: float | None = None) -> list[TrimReport]: ...

    def read_from(self, seq: int, limit: int = 64) -> list[StoredPacket]:
        """Packets holding seq or later frames, oldest first (the first one may start before seq)."""
        ...

    def close_reader(self) -> None: ...

    def close(self) -> None: ...


def pack_scores(scores: tuple[float, ...] | None, count: int) -> bytes | None:
    """Anomaly scores as stored: float32 little-endian, one per frame."""
    if scores is None:
        return None
    if len(scores) != count:
        raise ValueError(f"{len(scores)} anomaly scores for a packet of {count} frames: give one per frame")
    return struct.pack(f"<{count}f", *scores)


def unpack_scores(blob: bytes | None) -> tuple[float, ...] | None:
    return None if blob is None else struct.unpack(f"<{len(blob) // 4}f", blob)
