"""Both channel stores keep the same contract (server/store.py): dense seqs, resume from any seq,
producer offsets committed with the packets, retention by frames, bytes and age with reports,
and every commit reaching followers in order. Redis alone has several writers, so only it can
see an offset move under a batch (OffsetConflict), another replica's commits, a channel bound to
another model, and an outage."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from _transport import wait_until
from latentwire.server.sqlite_store import SqliteStore
from latentwire.server.store import (
    ChannelMismatch,
    OffsetConflict,
    PendingPacket,
    RetentionPolicy,
    StoredPacket,
    StoreFull,
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

            s = RedisStore(redis_url, "digits", policy)
        made.append(s)
        return s

    make.kind = request.param  # type: ignore[attr-defined]
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    make.redis_url = redis_url  # type: ignore[attr-defined]
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
    wait_until(lambda: sum(p.count for p in seen) == 10, "the follower got all 10 frames")
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
        wait_until(lambda: sum(p.count for p in seen_b) == 6, "the other replica got all 6 frames")
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
        # the tail resumed where it stood
        wait_until(lambda: sum(p.count for p in seen) == 4, "the tail resumed after the outage", timeout=15)
        assert [(p.first_seq, p.count) for p in seen] == [(0, 1), (1, 3)]
    finally:
        store.close()
        redis_server.stop()


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


def test_redis_at_maxmemory_is_store_full_and_changes_nothing(redis_server) -> None:
    """Redis's full disk: maxmemory with noeviction. The append is refused whole (StoreFull, like the
    embedded store on a full disk), nothing moves, reads go on, and writes resume once memory does."""
    import os

    import redis

    from latentwire.server.redis_store import RedisStore

    admin = redis.Redis.from_url(redis_server.url)
    store = RedisStore(redis_server.url, "digits", RetentionPolicy(max_bytes=0, max_age_s=0))
    try:
        store.append([_pkt(4)], {"p": 4})
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] + (64 << 10))
        big = PendingPacket(4, "m" * 64, 1, os.urandom(4000))
        with pytest.raises(StoreFull, match="is full \\(maxmemory reached\\) while appending"):
            for i in range(1000):
                store.append([big], {"p": 8 + 4 * i})
        committed = store.next_seq
        with pytest.raises(StoreFull):  # still full: refused again
            store.append([big], {"p": committed + 4})
        assert store.next_seq == committed and store.producer_next_offset("p") == committed
        assert sum(p.count for p in store.read_from(0, 1000)) == committed
        admin.config_set("maxmemory", 0)
        assert store.append([_pkt(4)], {"p": committed + 4})[0].first_seq == committed
        assert store.producer_next_offset("p") == committed + 4
    finally:
        store.close()
        admin.close()


# ---------------------------------------------------------------------- epochs (server/epoch.py)


def test_a_reset_store_is_noticed_and_a_new_epoch_starts_above_every_seq(make_store, tmp_path: Path) -> None:
    """The replica's record notices a store that lost the channel (Redis flushed; the SQLite file
    deleted) when it opens it again; --new-epoch then starts the channel above every seq it knew."""
    from latentwire.server.epoch import EPOCH_GAP, EpochRecord, settle
    from latentwire.server.store import StoreReset

    data = tmp_path / "replica"
    data.mkdir()
    store = make_store()
    state = settle(store, "digits", "here", None, new_epoch=False)
    assert len(state.epoch) == 16 and state.next_seq == 0 and state.previous == ""
    store.bind(state, 0)
    store.append([_pkt(5)], {"cam": 5})
    EpochRecord("digits", state.epoch, store.next_seq, "here").save(data)
    again = make_store()  # a restart against the same, intact store: same epoch, no refusal
    assert settle(again, "digits", "here", EpochRecord.load(data, "digits"), new_epoch=True) == store.epoch_state()
    # the store loses the channel
    store.close()
    again.close()
    if make_store.kind == "sqlite":
        (tmp_path / "digits.sqlite3").unlink()
    else:
        import redis

        redis.Redis.from_url(make_store.redis_url).flushall()
    fresh = make_store()
    with pytest.raises(StoreReset, match=rf"held epoch {state.epoch}, the store now holds no epoch.*last seq this "
                                         r"replica knew is seq 4.*--new-epoch digits"):
        settle(fresh, "digits", "here", EpochRecord.load(data, "digits"), new_epoch=False)
    assert fresh.next_seq == 0  # nothing written by the refusal
    new = settle(fresh, "digits", "here", EpochRecord.load(data, "digits"), new_epoch=True)
    assert new.epoch != state.epoch and new.previous == state.epoch and new.next_seq == new.start_seq == 5 + EPOCH_GAP
    fresh.bind(new, 0)
    assert [p.first_seq for p in fresh.append([_pkt(2)])] == [5 + EPOCH_GAP]
    assert fresh.producer_next_offset("cam") == 0 and fresh.first_seq == 5 + EPOCH_GAP
    # another replica whose record still names the old epoch adopts the new one (it starts above it)
    other = make_store()
    assert settle(other, "digits", "here", EpochRecord("digits", state.epoch, 5, "here"), new_epoch=False).epoch == \
        new.epoch


def test_a_bound_redis_store_refuses_appends_and_its_tail_notices_a_flush(redis_server) -> None:
    """Redis flushed under a live replica: the append script finds the epoch gone and writes nothing,
    and the tailer of a replica that does not append reports the reset by itself."""
    import redis

    from latentwire.server.epoch import settle
    from latentwire.server.redis_store import RedisStore
    from latentwire.server.store import StoreReset

    a, b = RedisStore(redis_server.url, "digits"), RedisStore(redis_server.url, "digits")
    heard: list[StoreReset] = []
    try:
        state = settle(a, "digits", redis_server.url, None, new_epoch=False)
        assert settle(b, "digits", redis_server.url, None, new_epoch=False) == state  # one epoch for both
        a.bind(state, 0)
        b.bind(state, 0)
        b.watch_reset(heard.append)
        seen_b: list[StoredPacket] = []
        b.follow(seen_b.extend)
        a.append([_pkt(500)])
        wait_until(lambda: sum(p.count for p in seen_b) == 500, "b followed the first 500 frames")
        redis.Redis.from_url(redis_server.url).flushall()
        with pytest.raises(StoreReset, match=r"the store now holds no epoch \(next seq 0\); the last seq this replica "
                                             r"knew is seq 499"):
            a.append([_pkt(500)])
        r = redis.Redis.from_url(redis_server.url)
        assert r.xlen(a.k_log) == 0 and not r.exists(a.k_meta)  # nothing written: no seq handed out again
        with pytest.raises(StoreReset):  # sticky: no second try reaches Redis
            a.append([_pkt(1)])
        wait_until(lambda: bool(heard), "b's tailer noticed the flush", timeout=5)  # b never appended
        assert b.reset is heard[0] and heard[0].last_seq == 499 and heard[0].found.epoch == ""
        assert [p.first_seq for p in seen_b] == [0]  # nothing delivered after the reset
        assert a.trim() == []
    finally:
        a.close()
        b.close()


def test_a_tail_behind_retention_is_no_reset_but_a_log_rolled_back_is(redis_server) -> None:
    """Seqs are dense, so the tailer takes a stream that does not go on where it stopped for a reset,
    unless retention trimmed the entries it had not read yet (the head is past them)."""
    import redis

    from latentwire.server.epoch import settle
    from latentwire.server.redis_store import RedisStore

    a = RedisStore(redis_server.url, "digits", RetentionPolicy(max_bytes=0, max_age_s=0, max_frames=6))
    b = RedisStore(redis_server.url, "digits")
    try:
        state = settle(a, "digits", redis_server.url, None, new_epoch=False)
        a.bind(state, 0)
        b.bind(state, 0)
        a.append([_pkt(2, tag=i) for i in range(5)])
        a.trim()  # b's tailer has not started: the entries it would read first are gone
        seen: list[StoredPacket] = []
        b.follow(seen.extend)
        wait_until(lambda: sum(p.count for p in seen) == 6, "b delivered the 6 retained frames")
        assert [p.first_seq for p in seen] == [4, 6, 8] and b.reset is None
        # the store goes back (a lagging copy: same epoch, next seq 0) and a replica that knows no better
        # appends 3-frame packets: b must not deliver them as if they followed seq 9
        r = redis.Redis.from_url(redis_server.url)
        r.delete(b.k_log)
        r.hset(b.k_meta, "next_seq", 0)
        other = RedisStore(redis_server.url, "digits")
        other.append([_pkt(3) for _ in range(5)])
        other.close()
        wait_until(lambda: b.reset is not None, "b noticed the rolled-back log", timeout=5)
        assert b.reset.last_seq == 9 and [p.first_seq for p in seen] == [4, 6, 8]
    finally:
        a.close()
        b.close()


def test_a_channel_from_before_epochs_keeps_its_seqs(make_store, tmp_path: Path) -> None:
    """A log written before channels had epochs (no epoch in the store, no record in the data dir) is
    adopted as it is: the epoch is created at its next seq, nothing is dropped."""
    from latentwire.server.epoch import settle

    store = make_store()
    store.append([_pkt(3), _pkt(4)], {"cam": 7})
    assert store.epoch_state().epoch == ""
    state = settle(store, "digits", "here", None, new_epoch=False)
    assert state.epoch and state.next_seq == state.start_seq == 7 and state.previous == ""
    store.bind(state, 0)
    assert [p.first_seq for p in store.append([_pkt(1)])] == [7]
    assert [p.first_seq for p in store.read_from(0)] == [0, 3, 7] and store.producer_next_offset("cam") == 7
    assert settle(make_store(), "digits", "here", None, new_epoch=False).epoch == state.epoch  # written once
