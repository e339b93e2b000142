"""Channel epochs: a seq is never handed out twice, and a reset store is noticed.

Why: a store can lose a channel without anyone deleting it (Redis restarted without persistence,
flushed, or failed over to a lagging replica; an embedded channel file deleted). A replica that
went on would hand out seqs 0.. again: live subscribers would never see those frames and a
subscriber resuming from a saved seq would skip or mix frames of two incarnations, silently.

So each channel in a store carries an epoch, a random id written when the channel is created
there (EpochState), and each replica keeps a small record per channel in its --data-dir
(`<channel>.epoch.json`: the epoch and the highest next seq it has seen, rewritten at most every
RECORD_EVERY_S while it moves, and at shutdown). At start `settle` compares the two:
- no record: adopt what the store holds (create the epoch when it holds none);
- the record's epoch with a next seq at least the record's: go on;
- a newer epoch whose `previous` is the record's and that starts above it (an operator ran
  --new-epoch on another replica): adopt it;
- anything else is a reset: refuse to start (StoreReset, one line), unless the operator named the
  channel in --new-epoch: then the store's copy of the channel is dropped and a new epoch starts
  at the highest next seq known (record or store) + EPOCH_GAP, so no saved position can point
  into frames of another incarnation.
While running, the bound store checks the epoch on every append and (Redis) in its tailer.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .store import ChannelStore, EpochState, StoreReset

log = logging.getLogger("latentwire.server.epoch")

# Seqs a new epoch leaves between the highest next seq known and its first seq. Why 2^30: the
# record (fsynced) lags the channel by at most RECORD_EVERY_S of commits, far fewer than 2^30
# frames at any rate one server reaches (BENCHMARKS.md: ~10^4-10^5 frames/s), while 2^30 per reset
# leaves 2^23 resets below 2^53 (the Lua script's exact integers).
EPOCH_GAP = 1 << 30
RECORD_EVERY_S = 0.25
RECORD_SUFFIX = ".epoch.json"


@dataclass(frozen=True)
class EpochRecord:
    """A replica's memory of one channel: its epoch and the highest next seq this replica saw."""

    channel: str
    epoch: str
    next_seq: int
    store: str  # where the channel lived (for the messages)

    @staticmethod
    def path(data_dir: Path, channel: str) -> Path:
        return data_dir / f"{channel}{RECORD_SUFFIX}"

    @classmethod
    def load(cls, data_dir: Path, channel: str) -> EpochRecord | None:
        p = cls.path(data_dir, channel)
        try:
            raw = json.loads(p.read_text())
            return cls(channel, str(raw["epoch"]), int(raw["next_seq"]), str(raw.get("store", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"epoch record {p} is unreadable ({e}): restore it, or delete it to adopt whatever "
                             "the store holds (a reset store then goes unnoticed once)") from e

    def save(self, data_dir: Path) -> None:
        """Atomically (temp file, fsync, rename): a replica killed mid-write keeps the old record."""
        p = self.path(data_dir, self.channel)
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"channel": self.channel, "epoch": self.epoch, "next_seq": self.next_seq, "store": self.store},
                      f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)


def new_epoch_id() -> str:
    return secrets.token_hex(8)


def settle(store: ChannelStore, channel: str, where: str, record: EpochRecord | None,
           new_epoch: bool) -> EpochState:
    """The epoch this replica serves the channel with (see the module docstring); StoreReset when
    the store was reset and the operator did not ask for a new epoch."""
    found = store.epoch_state()
    if record is None:
        if found.epoch:
            if new_epoch:
                log.warning("channel %s: --new-epoch ignored: this replica has no record to compare with, and the "
                            "store holds epoch %s (next seq %d)", channel, found.epoch, found.next_seq)
            return found
        start = max(found.next_seq, EPOCH_GAP) if new_epoch else found.next_seq
        state = store.create_epoch(new_epoch_id(), start)
        log.info("channel %s: epoch %s created in %s (next seq %d)", channel, state.epoch, where, state.next_seq)
        return state
    if found.epoch == record.epoch and found.next_seq >= record.next_seq:
        if new_epoch:
            log.warning("channel %s: --new-epoch ignored: epoch %s is intact in %s (next seq %d)", channel,
                        found.epoch, where, found.next_seq)
        return found
    if found.epoch and found.previous == record.epoch and found.start_seq >= record.next_seq:
        log.info("channel %s: adopting epoch %s, which replaced this replica's epoch %s from seq %d", channel,
                 found.epoch, record.epoch, found.start_seq)
        return found
    reset = StoreReset(channel, where, record.epoch, found, record.next_seq - 1)
    if not new_epoch:
        raise reset
    start = max(record.next_seq, found.next_seq) + EPOCH_GAP
    state = store.create_epoch(new_epoch_id(), start, previous=record.epoch, wipe=True)
    log.warning("channel %s: new epoch %s in %s from seq %d (operator step --new-epoch; epoch %s ended at seq %d, "
                "the store held %s; what it still held of the channel was dropped)", channel, state.epoch, where,
                state.next_seq, record.epoch, record.next_seq - 1,
                f"epoch {found.epoch} at next seq {found.next_seq}" if found.epoch else "no epoch")
    return state


class RecordKeeper:
    """Rewrites each channel's record while its next seq moves (at most every RECORD_EVERY_S, on
    one thread for the whole server), and once more at stop."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._channels: dict[str, tuple[EpochRecord, Callable[[], int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()  # channels whose last write failed (logged once per state change)

    def add(self, record: EpochRecord, next_seq: Callable[[], int]) -> None:
        record.save(self.data_dir)
        with self._lock:
            self._channels[record.channel] = (record, next_seq)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="epoch-records", daemon=True)
            self._thread.start()

    def flush(self) -> None:
        with self._lock:
            items = list(self._channels.items())
        for name, (rec, next_seq) in items:
            seq = next_seq()
            if seq > rec.next_seq:
                rec = EpochRecord(rec.channel, rec.epoch, seq, rec.store)
                try:
                    rec.save(self.data_dir)
                except OSError as e:  # retried on the next tick; logged when it starts and stops failing
                    if name not in self._failing:
                        self._failing.add(name)
                        log.warning("channel %s: cannot write its epoch record in %s (%s); retrying: until it "
                                    "succeeds, --new-epoch after a reset relies on the last record written",
                                    name, self.data_dir, e.strerror or e)
                    continue
                if name in self._failing:
                    self._failing.discard(name)
                    log.info("channel %s: epoch record written again (next seq %d)", name, seq)
                with self._lock:
                    self._channels[name] = (rec, next_seq)

    def _run(self) -> None:
        while not self._stop.wait(RECORD_EVERY_S):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()
