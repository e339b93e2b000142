"""`latentwire send` / `receive` / `serve` as real processes: kill -9 and restart of a receiver and
of the server lose and duplicate nothing; SIGTERM flips health to NOT_SERVING and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from _transport import REPO, ServerProcess, digits, running_server, wait_until
from latentwire.client import Client
from latentwire.codec.codec import Codec

N = 10_000


@pytest.fixture(scope="module")
def codec(tiny_bundle: Path) -> Codec:
    return Codec.load(tiny_bundle, provider="cpu", threads=1)


def _daemon(kind: str, *args: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, LATENTWIRE_CACHE=str(log.parent / "cache"))
    return subprocess.Popen([sys.executable, "-m", f"latentwire.client.{kind}", *args], cwd=REPO, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _state(path: Path, key: str) -> int:
    try:
        return int(json.loads(path.read_text()).get(key, 0))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _expected(target: str, codec: Codec, n: int) -> np.ndarray:
    """Decode the channel's packets locally: what every receiver must have written."""
    with Client(target) as c:
        out, got = [], 0
        for p in c.subscribe_packets("digits", 0, idle_timeout=5):
            out.append(codec.decode(p.payload))
            got += p.count
            if got >= n:
                break
    return np.concatenate(out)[:n]


def _check_npy_dir(out: Path, expected: np.ndarray) -> None:
    files = sorted(out.glob("*.npy"))
    assert [int(f.stem) for f in files] == list(range(len(expected))), "every seq exactly once, no extras"
    got = np.stack([np.load(f) for f in files])
    assert np.array_equal(got, expected)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{proc.args[2]} did not finish:\n{log.read_text()[-3000:]}") from None
    assert rc == 0, log.read_text()[-3000:]


def test_receiver_killed_mid_stream_resumes_exactly(tiny_bundle: Path, codec: Codec, tmp_path: Path) -> None:
    src = tmp_path / "digits.npy"
    np.save(src, digits(N))
    with running_server(tiny_bundle, tmp_path / "data") as server:
        target = f"127.0.0.1:{server.port}"
        send_state, recv_state, out = tmp_path / "send.json", tmp_path / "recv.json", tmp_path / "out"
        sender = _daemon("send", str(src), "--target", target, "--channel", "digits", "--state", str(send_state),
                         "--rate", "4000", log=tmp_path / "send.log")
        recv_args = ["--target", target, "--channel", "digits", "--state", str(recv_state), "--out", str(out),
                     "--until-seq", str(N)]
        receiver = _daemon("receive", *recv_args, log=tmp_path / "recv.log")
        wait_until(lambda: _state(recv_state, "next_seq") > 1500, "receiver made no progress", timeout=60)
        receiver.kill()  # SIGKILL: no chance to save anything
        receiver.wait(10)
        killed_at = _state(recv_state, "next_seq")
        assert 0 < killed_at < N
        receiver = _daemon("receive", *recv_args, log=tmp_path / "recv.log")
        _finish(sender, tmp_path / "send.log")
        _finish(receiver, tmp_path / "recv.log")
        assert _state(send_state, "sent") == N
        assert server.channels["digits"].store.next_seq == N
        _check_npy_dir(out, _expected(target, codec, N))


def test_server_kill9_and_restart_loses_and_duplicates_nothing(tiny_bundle: Path, codec: Codec,
                                                              tmp_path: Path) -> None:
    src = tmp_path / "digits.npy"
    np.save(src, digits(N))
    server = ServerProcess(tiny_bundle, tmp_path / "data").start()
    try:
        send_state, recv_state, out = tmp_path / "send.json", tmp_path / "recv.json", tmp_path / "out"
        sender = _daemon("send", str(src), "--target", server.target, "--channel", "digits", "--state",
                         str(send_state), "--rate", "1500", "--frames-per-message", "200", log=tmp_path / "send.log")
        receiver = _daemon("receive", "--target", server.target, "--channel", "digits", "--state", str(recv_state),
                           "--out", str(out), "--until-seq", str(N), log=tmp_path / "recv.log")
        wait_until(lambda: _state(recv_state, "next_seq") > 2500, "receiver made no progress", timeout=60)
        server.kill9()
        at_kill = _state(send_state, "sent")
        # 1,500 frames/s: ~6.7 s of sending, so a receiver slow to start on a loaded machine still
        # sees frame 2,500 well before the sender is done
        assert at_kill < N, "the sender must still be mid-stream when the server dies"
        time.sleep(0.3)
        server.start()
        _finish(sender, tmp_path / "send.log", 90)
        _finish(receiver, tmp_path / "recv.log", 90)
        assert _state(send_state, "sent") == N
        with Client(server.target) as c:
            assert c.channel("digits").next_seq == N, "no frame committed twice"
        _check_npy_dir(out, _expected(server.target, codec, N))
        assert "reconnect" in (tmp_path / "recv.log").read_text()
    finally:
        server.stop()


def test_sigterm_flips_health_and_exits_zero(tiny_bundle: Path, tmp_path: Path) -> None:
    server = ServerProcess(tiny_bundle, tmp_path / "data").start()
    try:
        ch = grpc.insecure_channel(server.target)
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # a well-behaved client leaves; open streams would hold the shutdown grace
        assert server.proc.wait(20) == 0  # type: ignore[union-attr]
        assert "shutdown complete" in server.log_path.read_text()
        ch.close()
    finally:
        server.stop()


def test_watch_folder_to_png_sink_and_sigterm(tiny_bundle: Path, codec: Codec, tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "png"
    inbox.mkdir()
    x = digits(90)
    with running_server(tiny_bundle, tmp_path / "data") as server:
        target = f"127.0.0.1:{server.port}"
        sender = _daemon("send", "--watch", str(inbox), "--poll", "0.1", "--target", target, "--channel", "digits",
                         "--state", str(tmp_path / "send.json"), log=tmp_path / "send.log")
        receiver = _daemon("receive", "--target", target, "--channel", "digits", "--state",
                           str(tmp_path / "recv.json"), "--out", str(out), "--format", "png", "--until-seq", "90",
                           log=tmp_path / "recv.log")
        for i in range(3):  # files appear one by one, each written atomically
            tmp = inbox / f".{i}.tmp.npy"
            np.save(tmp, x[i * 30 : (i + 1) * 30])
            os.replace(tmp, inbox / f"batch-{i:03d}.npy")
            time.sleep(0.2)
        _finish(receiver, tmp_path / "recv.log")
        sender.send_signal(signal.SIGTERM)
        _finish(sender, tmp_path / "send.log", 20)
        assert server.channels["digits"].store.next_seq == 90
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == 90
        got = np.stack([np.asarray(Image.open(p))[None] for p in pngs])
        assert np.array_equal(got, _expected(target, codec, 90))
