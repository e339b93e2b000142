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
- every commit, local or from another replica, reaches `follow`ers in seq order;
- a seq is never handed out twice: each channel carries an epoch (an incarnation id written with
  the channel, epoch.py); once a store is bound to an epoch, an append finding it gone or changed
  (Redis flushed, restarted empty, failed over) raises StoreReset and writes nothing, and so does a
  store whose next seq went below what this replica had seen.
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


class StoreFull(StoreError):
    """The store has no room for the write (the data dir's disk is full): nothing was committed by
    the call that raised it and the store is unchanged, so readers go on and publishers are told
    RESOURCE_EXHAUSTED and resend; writes succeed again, with no restart, once space returns."""


class OffsetConflict(StoreError):
    """A producer's offset moved between the dedup read and the append (another replica committed
    for it): the batch must be deduplicated again before it is appended."""


class StoreReset(StoreError):
    """The channel's epoch in the store is gone or changed, or the store went back below a seq this
    replica had seen: the store was reset (flushed, restarted without persistence, failed over to
    a lagging replica). Appending would reuse seqs, so this replica stops serving the channel
    (DATA_LOSS) until an operator starts a new epoch (`latentwire serve --new-epoch CHANNEL`)."""

    def __init__(self, channel: str, where: str, epoch: str, found: EpochState, last_seq: int,
                 what: str = "") -> None:
        self.channel, self.where, self.epoch, self.found, self.last_seq = channel, where, epoch, found, last_seq
        if not what and not found.epoch:
            what = f"no epoch (next seq {found.next_seq})"
        elif not what and found.epoch != epoch:
            what = f"epoch {found.epoch} (next seq {found.next_seq})"
        elif not what:
            what = f"the same epoch but next seq {found.next_seq}, below what this replica had seen"
        last = f"seq {last_seq}" if last_seq >= 0 else "no seq yet"
        super().__init__(
            f"channel {channel!r} was reset in the store {where}: it held epoch {epoch}, the store now holds "
            f"{what}; the last seq this replica knew is {last}. Nothing more is appended or served on it: "
            f"restart a replica with --new-epoch {channel} to go on with seqs above {last_seq} (server/README.md)"
        )


@dataclass(frozen=True)
class EpochState:
    """What a store holds of a channel's incarnation: its epoch id ("" when it holds none), the
    seq the next frame gets, the first seq of the epoch and the epoch it replaced ("" when it was
    the channel's first)."""

    epoch: str
    next_seq: int
    start_seq: int = 0
    previous: str = ""


OnReset = Callable[["StoreReset"], None]


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

    @property
    def epoch(self) -> str:
        """The epoch this store is bound to ("" before bind)."""
        ...

    def epoch_state(self) -> EpochState:
        """What the store holds now (asks it)."""
        ...

    def create_epoch(self, epoch: str, start_seq: int, previous: str = "", wipe: bool = False) -> EpochState:
        """Write `epoch` if the store holds none (next seq raised to start_seq); with wipe (the
        operator's new epoch) replace whatever it holds and drop the channel's packets and producer
        offsets. Returns what the store holds afterwards."""
        ...

    def bind(self, state: EpochState, known_next_seq: int) -> None:
        """From now on refuse appends (StoreReset) unless the store holds state.epoch and a next seq
        >= every seq seen (known_next_seq included)."""
        ...

    @property
    def reset(self) -> StoreReset | None:
        """The reset this store noticed (sticky), or None."""
        ...

    def watch_reset(self, on_reset: OnReset) -> None:
        """Hear of a reset the store notices (on an append or, Redis, in its tailer), once."""
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
