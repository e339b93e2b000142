"""The embedded channel store: every committed packet of a channel, on local disk, in seq order.

Why SQLite in WAL mode: one writer and many readers without blocking each other, crash-safe
commits, and a single file per channel that a restarted server reopens to continue the
sequence numbers exactly where it stopped.

Durability (fsync policy):
- synchronous=NORMAL (default, `--fsync normal`): a commit writes the WAL to the OS page cache;
  SQLite fsyncs only at checkpoints. A `kill -9` of the server loses NOTHING that was committed
  (the kernel still holds the pages); a power loss or kernel crash can lose the last commits.
- synchronous=FULL (`--fsync full`): the WAL is fsynced on every commit; a power loss loses
  nothing acknowledged. Costs one fsync per packet (the batcher amortizes it over a batch).
Publishers are acknowledged only AFTER the commit, so whatever a crash loses was never acked and
an idempotent producer (producer_id) resends it without creating duplicates: the producers table
is updated in the same transaction as the packet rows. One server owns a data directory (its
lock, server/main.py), so no other writer can move a producer's offset under the batcher.

A full disk (SQLITE_FULL) raises StoreFull: the transaction is rolled back (by SQLite itself when
the COMMIT failed), the in-memory next_seq/bytes/producers move only after a COMMIT succeeded, so
the file and this object still agree; readers need no space and go on; the next write after space
returns succeeds. A trim that cannot get space for its DELETE changes nothing either.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .store import (
    EpochState,
    OnCommit,
    OnReset,
    PendingPacket,
    RetentionPolicy,
    StoredPacket,
    StoreFull,
    StoreReset,
    TrimReport,
    pack_scores,
    unpack_scores,
)

log = logging.getLogger("latentwire.server.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packets (
    first_seq INTEGER PRIMARY KEY,
    count     INTEGER NOT NULL,
    ts        REAL    NOT NULL,
    model_id  TEXT    NOT NULL,
    quality   INTEGER NOT NULL,
    payload   BLOB    NOT NULL,
    anomaly_scores BLOB  -- float32 little-endian, one per frame; NULL: not scored
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS producers (producer_id TEXT PRIMARY KEY, next_offset INTEGER NOT NULL);
"""


class SqliteStore:
    """Append-only packet log of one channel (a ChannelStore). `append` is called from one writer
    thread; `read_from` may be called from any thread (each reader thread gets its own connection)."""

    def __init__(self, path: str | Path, policy: RetentionPolicy = RetentionPolicy(), fsync: str = "normal"):
        if fsync not in ("normal", "full"):
            raise ValueError(f"fsync must be 'normal' or 'full', got {fsync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self._sync = fsync.upper()
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the writer connection
        try:
            self._w = self._connect()
            with self._w:
                self._w.executescript(_SCHEMA)
                columns = {r[1] for r in self._w.execute("PRAGMA table_info(packets)")}
                if "anomaly_scores" not in columns:  # a log written before the server scored frames
                    self._w.execute("ALTER TABLE packets ADD COLUMN anomaly_scores BLOB")
                    log.info("%s: added the anomaly_scores column (older packets have none)", self.path.name)
        except sqlite3.OperationalError as e:  # a new channel on a full disk: say so, not "disk is full"
            if _disk_full(e):
                raise self._full() from e
            raise
        row = self._w.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        last = self._w.execute("SELECT MAX(first_seq + count) FROM packets").fetchone()[0]
        self._next_seq = max(int(row[0]) if row else 0, int(last or 0))
        first = self._w.execute("SELECT MIN(first_seq) FROM packets").fetchone()[0]
        self._first_seq = int(first) if first is not None else self._next_seq
        self._bytes = int(self._w.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM packets").fetchone()[0])
        self._producers: dict[str, int] = dict(self._w.execute("SELECT producer_id, next_offset FROM producers"))
        self._followers: list[OnCommit] = []
        self._epoch = ""

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        return conn

    # ------------------------------------------------------------------ state

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def first_seq(self) -> int:
        """Oldest retained seq (== next_seq when the log is empty)."""
        return self._first_seq

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def producer_next_offset(self, producer_id: str) -> int:
        return self._producers.get(producer_id, 0)

    def check_model(self, model_id: str) -> None:
        """Nothing to check: one server owns the file, and a channel may switch bundles between runs
        (every packet names its model; subscribers follow the switch)."""

    def follow(self, on_commit: OnCommit) -> None:
        self._followers.append(on_commit)

    # ------------------------------------------------------------------ epoch
    # Why only at open: one server owns the file while it runs; what a restart can meet (the file
    # deleted or replaced while the server was down) is what the replica's record catches (epoch.py).

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def reset(self) -> StoreReset | None:
        return None

    def epoch_state(self) -> EpochState:
        meta = dict(self._w.execute("SELECT key, value FROM meta WHERE key IN ('epoch', 'epoch_start', 'epoch_prev')"))
        return EpochState(meta.get("epoch", ""), self._next_seq, int(meta.get("epoch_start", 0)),
                          meta.get("epoch_prev", ""))

    def create_epoch(self, epoch: str, start_seq: int, previous: str = "", wipe: bool = False) -> EpochState:
        if not epoch:
            raise ValueError("an epoch id must not be empty (empty means: the store holds none)")
        with self._lock:
            if not wipe and self.epoch_state().epoch:
                return self.epoch_state()
            start = int(start_seq) if wipe else max(int(start_seq), self._next_seq)
            self._w.execute("BEGIN IMMEDIATE")
            try:
                if wipe:
                    self._w.execute("DELETE FROM packets")
                    self._w.execute("DELETE FROM producers")
                self._w.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [
                    ("epoch", epoch), ("epoch_start", str(start)), ("epoch_prev", previous), ("next_seq", str(start))])
                self._w.execute("COMMIT")
            except BaseException:
                self._w.execute("ROLLBACK")
                raise
            empty = wipe or self._first_seq == self._next_seq
            self._next_seq = start
            if empty:
                self._first_seq = start
            if wipe:
                self._bytes, self._producers = 0, {}
        return self.epoch_state()

    def watch_reset(self, on_reset: OnReset) -> None:
        """Nothing to watch while running (see above)."""

    def bind(self, state: EpochState, known_next_seq: int) -> None:
        self._epoch = state.epoch

    # ------------------------------------------------------------------ writes

    def append(
        self, packets: list[PendingPacket], producer_offsets: dict[str, int] | None = None,
        expected_offsets: dict[str, int] | None = None, ts: float | None = None,
    ) -> list[StoredPacket]:
        """Commit packets (consecutive seqs) and producer high-water marks in ONE transaction.
        expected_offsets cannot be stale here (one writer per data dir), so it is not checked."""
        ts = time.time() if ts is None else ts
        stored: list[StoredPacket] = []
        with self._lock:
            seq = self._next_seq
            rows = []
            for p in packets:
                if p.count <= 0:
                    raise ValueError("a packet must hold at least one frame")
                blob = pack_scores(p.anomaly_scores, p.count)
                scores = unpack_scores(blob)  # as read back later: float32
                stored.append(StoredPacket(seq, p.count, ts, p.model_id, p.quality, p.payload, scores))
                rows.append((seq, p.count, ts, p.model_id, p.quality, sqlite3.Binary(p.payload), blob))
                seq += p.count
            producers = {k: v for k, v in (producer_offsets or {}).items() if v > self._producers.get(k, 0)}
            with self._transaction():
                self._w.executemany(
                    "INSERT INTO packets(first_seq, count, ts, model_id, quality, payload, anomaly_scores) "
                    "VALUES (?,?,?,?,?,?,?)", rows
                )
                self._w.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('next_seq', ?)", (str(seq),))
                if producers:
                    self._w.executemany(
                        "INSERT OR REPLACE INTO producers(producer_id, next_offset) VALUES (?, ?)", producers.items()
                    )
            if self._first_seq == self._next_seq and stored:
                self._first_seq = stored[0].first_seq
            self._next_seq = seq
            self._bytes += sum(len(p.payload) for p in packets)
            self._producers.update(producers)
        if stored:
            for follower in self._followers:
                follower(stored)
        return stored

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT on the writer connection. Why the rollback checks in_transaction:
        a COMMIT that fails for lack of space is rolled back by SQLite itself, and a second ROLLBACK
        raised "cannot rollback - no transaction is active" over the real error. SQLITE_FULL becomes
        StoreFull (naming the data dir and its free bytes); other errors pass unchanged."""
        try:
            self._w.execute("BEGIN IMMEDIATE")
            yield
            self._w.execute("COMMIT")
        except BaseException as e:
            if self._w.in_transaction:
                try:
                    self._w.execute("ROLLBACK")
                except sqlite3.Error as rollback:  # the original error is the one to raise; say this one too
                    log.warning("%s: the rollback after %s failed too: %s", self.path.name, e, rollback)
            if isinstance(e, sqlite3.OperationalError) and _disk_full(e):
                raise self._full() from e
            raise

    def _full(self) -> StoreFull:
        free = shutil.disk_usage(self.path.parent).free
        return StoreFull(f"data dir {self.path.parent} is full ({free:,} bytes free)")

    def trim(self, now: float | None = None) -> list[TrimReport]:
        """Drop the oldest packets beyond the age and size bounds; the reports say what went."""
        now = time.time() if now is None else now
        reports: list[TrimReport] = []
        with self._lock:
            try:
                self._trim(now, reports)
            finally:  # what went before a failed step (StoreFull) went for good: say so
                for r in reports:
                    log.info(
                        "retention %s: trimmed %d packets (%d frames, %d bytes) from %s; oldest retained seq is now %d",
                        r.reason, r.packets, r.frames, r.bytes, self.path.name, r.first_seq,
                    )
        return reports

    def _trim(self, now: float, reports: list[TrimReport]) -> None:
        """One DELETE per bound; reports holds the finished ones when a later one raises."""
        if self.policy.max_age_s > 0:
            cutoff = now - self.policy.max_age_s
            r = self._delete("ts < ?", (cutoff,), f"age > {self.policy.max_age_s:.0f}s")
            if r:
                reports.append(r)
        if self.policy.max_frames > 0 and self._next_seq - self._first_seq > self.policy.max_frames:
            # whole packets only: the oldest ones that end at or before the first frame to keep
            keep_from = self._next_seq - self.policy.max_frames
            r = self._delete("first_seq + count <= ?", (keep_from,), f"frames > {int(self.policy.max_frames)}")
            if r:
                reports.append(r)
        if self.policy.max_bytes > 0 and self._bytes > self.policy.max_bytes:
            excess = self._bytes - self.policy.max_bytes
            # the smallest prefix of rows whose payload sum covers the excess
            acc, cut = 0, None
            for first_seq, n in self._w.execute("SELECT first_seq, length(payload) FROM packets ORDER BY first_seq"):
                acc += n
                cut = first_seq
                if acc >= excess:
                    break
            if cut is not None:
                r = self._delete("first_seq <= ?", (cut,), f"size > {int(self.policy.max_bytes)} bytes")
                if r:
                    reports.append(r)

    def _delete(self, where: str, params: tuple, reason: str) -> TrimReport | None:
        n, frames, nbytes = self._w.execute(
            f"SELECT COUNT(*), COALESCE(SUM(count),0), COALESCE(SUM(length(payload)),0) FROM packets WHERE {where}",
            params,
        ).fetchone()
        if not n:
            return None
        with self._transaction():
            self._w.execute(f"DELETE FROM packets WHERE {where}", params)
        first = self._w.execute("SELECT MIN(first_seq) FROM packets").fetchone()[0]
        self._first_seq = int(first) if first is not None else self._next_seq
        self._bytes -= int(nbytes)
        return TrimReport(int(n), int(frames), int(nbytes), self._first_seq, reason)

    # ------------------------------------------------------------------ reads

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def read_from(self, seq: int, limit: int = 64) -> list[StoredPacket]:
        """Packets holding seq or later frames, oldest first (the first one may start before seq)."""
        rows = self._reader().execute(
            "SELECT first_seq, count, ts, model_id, quality, payload, anomaly_scores FROM packets "
            "WHERE first_seq + count > ? ORDER BY first_seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [StoredPacket(int(a), int(b), float(c), str(d), int(e), bytes(f), unpack_scores(g))
                for a, b, c, d, e, f, g in rows]

    def close_reader(self) -> None:
        """Close this thread's reader connection (call when a subscriber thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        with self._lock:
            try:
                self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:  # the WAL still holds every commit: the next open replays it
                log.warning("%s: checkpoint at close failed (%s); the WAL keeps the commits", self.path.name, e)
            self._w.close()


_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL from Python 3.11 on; its value is fixed by SQLite's C API


def _disk_full(e: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL: SQLite's unix VFS reports ENOSPC on a write as this code."""
    code = getattr(e, "sqlite_errorcode", None)  # Python >= 3.11; 3.10 only has the message
    return (code & 0xFF) == _SQLITE_FULL if code is not None else "database or disk is full" in str(e)
