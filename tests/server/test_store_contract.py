"""Both channel stores keep the same contract (server/store.py): dense seqs, resume from any seq,
producer offsets committed with the packets, retention by frames, bytes and age with reports,
and every commit reaching followers in order. Redis alone has several writers, so only it can
see an offset move under a batch (OffsetConflict), another replica's commits, a channel bound to
another model, and an outage."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from latentwire.server.sqlite_store import SqliteStore
from latentwire.server.store import (
    ChannelMismatch,
    OffsetConflict,
    PendingPacket,
    RetentionPolicy,
    StoredPacket,
    StoreUnavailable,
)


def _pkt(n: int, size: int = 100, tag: int = 0, scores: bool = False) -> PendingPacket:
    return PendingPacket(
        n, "m" * 64, 1, bytes([tag % 256]) * size, tuple(float(i) for i in range(n)) if scores else None
    )


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):
    """make_store(policy) -> a store of channel "digits" (each call: a new handle on the same log)."""
    made = []

    def make(policy: RetentionPolicy = RetentionPolicy()):
        if request.param == "sqlite":
            s = SqliteStore(tmp_path / "digits.sqlite3", policy)
        else:
            from latentwire.server.redis_store import RedisStore

            s = RedisStore(request.getfixturevalue("redis_server").url, "digits", policy)
        made.append(s)
        return s

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for s in made:
        s.close()


def test_seqs_are_dense_and_reads_resume_anywhere(make_store) -> None:
    store = make_store()
    seen: list[StoredPacket] = []
    store.follow(seen.extend)
    assert (store.next_seq, store.first_seq, store.size_bytes) == (0, 0, 0)
    a = store.append([_pkt(3, tag=1), _pkt(5, tag=2, scores=True)], {"cam": 8})
    b = store.append([_pkt(2, tag=3)], {"cam": 10}, expected_offsets={"cam": 8})
    assert [(p.first_seq, p.count) for p in a + b] == [(0, 3), (3, 5), (8, 2)]
    assert a[1].anomaly_scores == tuple(float(i) for i in range(5))
    assert store.next_seq == 10 and store.size_bytes == 300 and store.producer_next_offset("cam") == 10
    # a read from inside a packet starts with that packet; limits hold
    assert [p.first_seq for p in store.read_from(4)] == [3, 8]
    assert [p.first_seq for p in store.read_from(0, limit=2)] == [0, 3]
    assert store.read_from(10) == []
    assert store.read_from(5)[0].payload == bytes([2]) * 100
    # a second handle on the same log (a restart, or another replica) sees the same seqs
    again = make_store()
    assert again.next_seq == 10 and [p.first_seq for p in again.read_from(0)] == [0, 3, 8]
    _wait(lambda: sum(p.count for p in seen) == 10)
    assert [p.first_seq for p in seen] == [0, 3, 8]  # every commit, in order, once


def test_retention_by_frames_bytes_and_age(make_store) -> None:
    store = make_store(RetentionPolicy(max_bytes=0, max_age_s=0, max_frames=6))
    store.append([_pkt(2, tag=i) for i in range(5)], ts=1000.0)
    reports = store.trim(now=1001.0)
    assert sum(r.frames for r in reports) == 4 and store.first_seq == 4  # whole packets, >= 6 frames kept
    assert [p.first_seq for p in store.read_from(0)] == [4, 6, 8]
    by_bytes = make_store(RetentionPolicy(max_bytes=250, max_age_s=0))
    assert sum(r.bytes for r in by_bytes.trim(now=1001.0)) == 100 and by_bytes.size_bytes == 200
    old = make_store(RetentionPolicy(max_bytes=0, max_age_s=60))
    old.append([_pkt(1, tag=9)], ts=2000.0)
    reports = old.trim(now=1065.0)  # the packets of ts 1000 are past 60 s, the one of ts 2000 is not
    assert sum(r.packets for r in reports) == 2 and old.first_seq == 10 and old.next_seq == 11
    assert [r.first_seq for r in reports][-1] == 10


def test_redis_replicas_share_one_log(redis_server) -> None:
    from latentwire.server.redis_store import RedisStore

    a, b = RedisStore(redis_server.url, "digits"), RedisStore(redis_server.url, "digits")
    try:
        seen_b: list[StoredPacket] = []
        b.follow(seen_b.extend)
        a.append([_pkt(4)], {"cam": 4})
        b.append([_pkt(2)], {"cam": 6}, expected_offsets={"cam": 4})
        _wait(lambda: sum(p.count for p in seen_b) == 6)
        assert [(p.first_seq, p.count) for p in seen_b] == [(0, 4), (4, 2)]  # A's commit reached B's channel
        # a batch deduplicated against a stale offset is refused as a whole, nothing appended
        with pytest.raises(OffsetConflict, match="producer cam is at offset 6"):
            a.append([_pkt(3)], {"cam": 7}, expected_offsets={"cam": 4})
        assert a.next_seq == 6 == b.next_seq
        a.check_model("m" * 64)
        b.check_model("m" * 64)
        with pytest.raises(ChannelMismatch, match="holds model mmmmmmmmmmmm"):
            RedisStore(redis_server.url, "digits").check_model("x" * 64)
    finally:
        a.close()
        b.close()


def test_redis_outage_is_unavailable_and_the_tail_resumes(tmp_path: Path) -> None:
    from _redis import RedisServer
    from latentwire.server.redis_store import RedisStore

    if __import__("shutil").which("redis-server") is None:
        pytest.skip("redis-server is not installed and could not be (the README's test command installs it)")
    redis_server = RedisServer(tmp_path / "redis", persist=True).start()  # AOF fsynced on every write
    store = RedisStore(redis_server.url, "digits", socket_timeout=1.0)
    seen: list[StoredPacket] = []
    store.follow(seen.extend)
    try:
        store.append([_pkt(1)])
        port = redis_server.port
        redis_server.stop()
        for call in (lambda: store.append([_pkt(1)]), lambda: store.read_from(0), lambda: store.next_seq):
            with pytest.raises(StoreUnavailable, match="Redis store unreachable"):
                call()
        redis_server.port = port
        redis_server.start()  # the same port and append-only file: every acknowledged write is back
        assert store.next_seq == 1
        other = RedisStore(redis_server.url, "digits")
        assert [p.first_seq for p in other.append([_pkt(3)])] == [1]
        other.close()
        _wait(lambda: sum(p.count for p in seen) == 4, timeout=15)  # the tail resumed where it stood
        assert [(p.first_seq, p.count) for p in seen] == [(0, 1), (1, 3)]
    finally:
        store.close()
        redis_server.stop()


def _wait(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_concurrent_replica_appends_never_duplicate_a_producer(redis_server) -> None:
    """Two replicas race to commit the same producer's frames (a client that failed over while the
    first replica still ran): the offset check inside the append script lets exactly one win."""
    from latentwire.server.redis_store import RedisStore

    stores = [RedisStore(redis_server.url, "digits") for _ in range(2)]
    wins = []

    def commit(s: RedisStore) -> None:
        for _ in range(50):
            mark = s.producer_next_offset("cam")
            if mark >= 100:
                return
            try:
                s.append([_pkt(10)], {"cam": mark + 10}, expected_offsets={"cam": mark})
                wins.append(mark)
            except OffsetConflict:
                continue

    threads = [threading.Thread(target=commit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert sorted(wins) == list(range(0, 100, 10))  # each producer range committed exactly once
        assert stores[0].next_seq == 100
    finally:
        for s in stores:
            s.close()
