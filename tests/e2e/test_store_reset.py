"""A store that loses a channel under a replica (issue: "Redis restarted empty"), as real processes:
a real redis-server killed with -9 and restarted empty under a live replica with a live publisher
and subscriber; the replica restarted on it; the operator's --new-epoch; the daemons' one line;
the embedded store's channel file deleted while the server is down; and Redis's persistence
settings read at start (a volatile Redis refused unless --allow-volatile-store)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from _redis import RedisServer
from _transport import REPO, ServerProcess, digits, wait_until
from latentwire.client import ChannelReset, Client
from latentwire.server.epoch import EPOCH_GAP

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed and could not be (the README's test command "
                                       "installs it)")


def _serve(bundle: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    """A server that is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "latentwire.server.main", "--channel", f"digits={bundle}",
                           "--listen", "127.0.0.1:0", "--data-dir", str(data), "--threads", "1", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def _daemon(kind: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"latentwire.client.{kind}", *args], cwd=REPO,
                          env=dict(os.environ, LATENTWIRE_CACHE=str(cache)), capture_output=True, text=True,
                          timeout=120)


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_redis_restarted_empty_under_a_live_replica(tiny_bundle: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()  # no persistence: a restart comes back empty
    store = ["--store", redis.url, "--allow-volatile-store"]
    a = ServerProcess(tiny_bundle, tmp_path / "a", extra=store).start()
    seen: list[int] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def subscribe() -> None:
        try:
            with Client(a.target) as c:
                for batch in c.subscribe_batches("digits", 0, stop=stop):
                    seen.extend(range(batch.first_seq, batch.end_seq))
        except BaseException as e:  # noqa: BLE001 - asserted below
            failed.append(e)

    watcher = threading.Thread(target=subscribe, daemon=True)
    watcher.start()
    cache = tmp_path / "cache"
    try:
        with Client(a.target) as c:
            epoch = c.channel("digits").epoch
            assert len(epoch) == 16
            assert c.publish("digits", digits(500), frames_per_message=50).accepted == 500
            wait_until(lambda: len(seen) >= 500, "the live subscriber got the first 500 frames", timeout=30)
            # Redis dies and comes back empty on the same port
            port = redis.port
            os.kill(redis.proc.pid, signal.SIGKILL)
            redis.proc.wait(10)
            redis.port = port
            redis.start()
            with pytest.raises(ChannelReset, match=rf"channel 'digits' was reset in the store .*held epoch {epoch}, "
                                                   r"the store now holds no epoch.*last seq this replica knew is "
                                                   r"seq 499") as got:
                c.publish("digits", digits(500), frames_per_message=50, max_retries=30)
            assert got.value.last_seq is None  # nothing of this call was committed
            info = c.channel("digits")  # listed as this replica last knew it
            assert (info.next_seq, info.epoch) == (500, epoch)
        watcher.join(30)
        assert len(failed) == 1 and isinstance(failed[0], ChannelReset), failed
        assert failed[0].last_seq == 499 and "DATA_LOSS" in str(failed[0])
        assert seen == list(range(500))  # nothing twice under one seq, nothing after the reset
        import redis as redis_py

        r = redis_py.Redis.from_url(redis.url)
        assert r.xlen("latentwire:digits:log") == 0  # no seq was handed out again
        log = a.log_path.read_text()
        assert log.count("was reset in the store") == 1, log  # one line, when the replica noticed
        assert "Traceback" not in log
        # the daemons: one line, exit 1, whichever of the two the reset meets
        state = tmp_path / "recv.pos"
        state.write_text(json.dumps({"next_seq": 500, "epoch": epoch}))
        recv = _daemon("receive", "--target", a.target, "--channel", "digits", "--state", str(state),
                       "--out", str(tmp_path / "out"), "--idle-timeout", "10", cache=cache)
        assert recv.returncode == 1 and "DATA_LOSS" in _one_line(recv) and "epoch" in _one_line(recv)
        np.save(tmp_path / "frames.npy", digits(100))
        send = _daemon("send", "--target", a.target, "--channel", "digits", "--state", str(tmp_path / "send.pos"),
                       str(tmp_path / "frames.npy"), cache=cache)
        assert send.returncode == 1 and "DATA_LOSS" in _one_line(send)
        # the replica restarted on the empty Redis refuses to start at seq 0, in one line
        assert a.terminate() == 0
        refused = _serve(tiny_bundle, tmp_path / "a", *store)
        assert refused.returncode == 2
        line = _one_line(refused)
        assert f"held epoch {epoch}" in line and "seq 499" in line and "--new-epoch digits" in line
        assert r.xlen("latentwire:digits:log") == 0 and not r.exists("latentwire:digits:meta")
        # the operator's step: a new epoch whose seqs start above every seq handed out before
        a = ServerProcess(tiny_bundle, tmp_path / "a", extra=[*store, "--new-epoch", "digits"]).start()
        with Client(a.target) as c:
            info = c.channel("digits")
            assert info.epoch not in ("", epoch) and info.next_seq == info.first_retained_seq == 500 + EPOCH_GAP
            res = c.publish("digits", digits(500), frames_per_message=50)
            assert res.accepted == 500 and res.first_seq == 500 + EPOCH_GAP
            assert [f.seq for f in c.subscribe("digits", idle_timeout=2)] == list(range(500 + EPOCH_GAP,
                                                                                      1000 + EPOCH_GAP))
            # a saved position of the old epoch still cannot point into the new frames
            with pytest.raises(ChannelReset, match=rf"not epoch {epoch}"):
                next(iter(c.subscribe_packets("digits", 500, epoch=epoch)))
        recv = _daemon("receive", "--target", a.target, "--channel", "digits", "--state", str(state),
                       "--out", str(tmp_path / "out"), "--idle-timeout", "10", cache=cache)
        assert recv.returncode == 1 and "DATA_LOSS" in _one_line(recv)
        assert not list((tmp_path / "out").glob("*.npy"))
        assert "new epoch" in a.log_path.read_text()
    finally:
        stop.set()
        a.stop()
        redis.stop()


def test_embedded_channel_file_deleted_while_the_server_is_down(tiny_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    a = ServerProcess(tiny_bundle, data).start()
    with Client(a.target) as c:
        epoch = c.channel("digits").epoch
        assert c.publish("digits", digits(100), frames_per_message=50).accepted == 100
    assert a.terminate() == 0
    for p in data.glob("digits.sqlite3*"):
        p.unlink()
    refused = _serve(tiny_bundle, data)
    assert refused.returncode == 2
    line = _one_line(refused)
    assert f"held epoch {epoch}, the store now holds no epoch" in line and "seq 99" in line
    a = ServerProcess(tiny_bundle, data, extra=["--new-epoch", "digits"]).start()
    try:
        with Client(a.target) as c:
            info = c.channel("digits")
            assert info.epoch != epoch and info.next_seq == 100 + EPOCH_GAP
            assert c.publish("digits", digits(10)).first_seq == 100 + EPOCH_GAP
    finally:
        a.stop()


def test_a_volatile_redis_is_refused_unless_allowed(tiny_bundle: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()  # --save "" --appendonly no
    try:
        refused = _serve(tiny_bundle, tmp_path / "a", "--store", redis.url)
        assert refused.returncode == 2
        line = _one_line(refused)
        assert "Redis is volatile, appendonly no, save ''" in line and "--allow-volatile-store" in line
        a = ServerProcess(tiny_bundle, tmp_path / "a", extra=["--store", redis.url, "--allow-volatile-store"]).start()
        a.stop()
        warnings = [x for x in a.log_path.read_text().splitlines() if "is volatile" in x]
        assert len(warnings) == 1 and " WARNING " in warnings[0]
        # a user that may not run CONFIG GET (as managed Redis services): unknown counts as volatile
        import redis as redis_py

        redis_py.Redis.from_url(redis.url).acl_setuser("limited", enabled=True, passwords=["+limited-pw"], keys=["*"],
                                                       channels=["*"], commands=["+@all", "-config"])
        limited = redis.url.replace("redis://", "redis://limited:limited-pw@")
        refused = _serve(tiny_bundle, tmp_path / "b", "--store", limited)
        assert refused.returncode == 2
        line = _one_line(refused)
        assert "CONFIG GET refused" in line and "limited-pw" not in line
        b = ServerProcess(tiny_bundle, tmp_path / "b", extra=["--store", limited, "--allow-volatile-store"]).start()
        try:
            with Client(b.target) as c:
                assert c.publish("digits", digits(10)).accepted == 10
        finally:
            b.stop()
        assert "limited-pw" not in b.log_path.read_text()
    finally:
        redis.stop()


def test_a_persistent_redis_starts_without_the_flag(tiny_bundle: Path, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", persist=True, appendfsync="everysec").start()
    try:
        a = ServerProcess(tiny_bundle, tmp_path / "a", extra=["--store", redis.url]).start()
        a.stop()
        log = a.log_path.read_text()
        assert "appendonly yes (appendfsync everysec)" in log and "volatile" not in log
    finally:
        redis.stop()
