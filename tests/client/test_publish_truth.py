"""Nothing a user sends is dropped silently (issue 12), against a real server: publish raises what
the caller's source raised and reports exactly what was committed; a damaged packet among good
ones is named and the good ones still go; the daemons exit non-zero with one line; the position
file never moves past a refused frame; one server per data dir; the server checks what it can."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from _transport import REPO, digits, free_port, running_server
from latentwire.client import Client, ConnectError, PublishAborted, PublishAck
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.errors import InputError
from latentwire.server.config import ConfigError, Limits


def _stored(target: str) -> list[int]:
    with Client(target) as c:
        return [f.seq for f in c.subscribe("digits", 0, idle_timeout=1.0)]


@pytest.fixture()
def server(tiny_bundle: Path, tmp_path: Path):
    with running_server(tiny_bundle, tmp_path / "data") as s:
        yield s


@pytest.mark.parametrize("per_message", [1, 5])
def test_a_damaged_packet_is_named_and_the_good_ones_are_delivered(server, tiny_bundle: Path,
                                                                   per_message: int) -> None:
    codec = Codec.load(tiny_bundle, provider="cpu", threads=1)
    packets = [codec.encode(digits(8), quality=0) for _ in range(5)]
    flipped = bytearray(packets[1])
    flipped[30] ^= 0x10
    packets[1] = bytes(flipped)
    target = f"127.0.0.1:{server.port}"
    acks: list[PublishAck] = []
    with Client(target) as c:
        r = c.publish_packets("digits", iter(packets), packets_per_message=per_message, on_ack=acks.append)
    assert r.accepted == 32 and r.rejected == 0 and r.invalid_packets == 1
    assert [(e.packet_index, e.code) for e in r.errors] == [(1, grpc.StatusCode.INVALID_ARGUMENT)]
    assert "ChecksumMismatch" in r.errors[0].message
    assert _stored(target) == list(range(32))
    assert sum(a.accepted for a in acks) == r.accepted  # on_ack and the result tell the same story


def test_an_exception_from_the_source_reaches_the_caller_with_what_was_committed(server) -> None:
    target = f"127.0.0.1:{server.port}"
    frames = digits(300)

    def source():
        for i in range(400):
            if i == 300:
                raise OSError("camera unplugged")
            yield frames[i % 300]

    acks: list[PublishAck] = []
    with Client(target) as c, pytest.raises(PublishAborted) as info:
        c.publish("digits", source(), on_ack=acks.append)
    err = info.value
    assert isinstance(err.__cause__, OSError) and "camera unplugged" in str(err)
    # every frame the generator gave was sent (256 + the 44 it had buffered) and committed
    assert err.result.accepted == 300 and err.result.frames_sent == 300
    assert (err.result.first_seq, err.result.last_seq) == (0, 299)
    assert sum(a.accepted for a in acks) == 300
    assert _stored(target) == list(range(300))


def test_an_encoding_error_at_the_edge_reaches_the_caller(server) -> None:
    target = f"127.0.0.1:{server.port}"
    with Client(target) as c, pytest.raises(PublishAborted) as info:
        c.publish("digits", digits(10).astype(np.float32), encode_at_edge=True)
    assert isinstance(info.value.__cause__, InputError) and info.value.result.accepted == 0
    assert _stored(target) == []


def _send(target: str, state: Path, *sources: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, LATENTWIRE_CACHE=str(state.parent / "cache"))
    return subprocess.run([sys.executable, "-m", "latentwire.client.send", "--target", target, "--channel", "digits",
                           "--state", str(state), *extra, *sources], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def _one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("latentwire ")]
    assert len(errors) == 1, done.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def test_send_exits_non_zero_with_one_line_on_unreadable_input(server, tmp_path: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    good = tmp_path / "good.npy"
    np.save(good, digits(20))
    truncated = tmp_path / "cut-images-idx3-ubyte.gz"
    whole = (REPO / "tests/data/mnist/t10k-images-idx3-ubyte.gz").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 3])
    not_array = tmp_path / "labels.npy"
    np.save(not_array, np.array({"a": 1}, dtype=object), allow_pickle=True)
    _one_line_error(_send(target, tmp_path / "s1.pos", str(tmp_path / "missing.npy")), "missing.npy", "no such file")
    _one_line_error(_send(target, tmp_path / "s2.pos", str(truncated)), "cut-images", "cannot read")
    _one_line_error(_send(target, tmp_path / "s3.pos", str(not_array)), "labels.npy")
    assert _stored(target) == []
    # a good file still goes through, exit 0
    assert _send(target, tmp_path / "s4.pos", str(good)).returncode == 0 and _stored(target) == list(range(20))


def test_send_stops_at_refused_frames_and_a_fixed_rerun_sends_each_frame_once(server, tmp_path: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    state = tmp_path / "send.pos"
    bad = tmp_path / "frames.npy"
    floats = digits(40).astype(np.float32)
    np.save(bad, floats)
    line = _one_line_error(_send(target, state, str(bad)), "refused 40 frame(s)", "frame 0")
    assert "integer" in line
    pos = json.loads(state.read_text())
    assert pos["files"].get(str(bad.resolve()), 0) == 0 and pos["sent"] == 0  # nothing counted as sent
    # one bad frame in the middle: the position stops right before it, the frames after it that
    # the server took are remembered, and the fixed file then sends only what is missing
    mixed = digits(40).astype(np.int16)
    mixed[25, 0, 0, 0] = 300  # outside the uint8 model's range: only this frame is refused
    np.save(bad, mixed)
    _one_line_error(_send(target, state, str(bad), extra=("--frames-per-message", "10")), "refused 1 frame(s)",
                    "frame 25")
    pos = json.loads(state.read_text())
    assert pos["files"][str(bad.resolve())] == 25
    assert set(pos["ahead"][str(bad.resolve())]) >= {26, 27, 28, 29}
    np.save(bad, digits(40))
    assert _send(target, state, str(bad), extra=("--frames-per-message", "10")).returncode == 0
    stored = _stored(target)
    assert len(stored) == 40  # 0..24, 26..39 the first time, 25 once fixed: each frame exactly once
    assert json.loads(state.read_text())["files"][str(bad.resolve())] == 40


def test_daemons_without_a_server_say_where_they_looked(tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    np.save(tmp_path / "d.npy", digits(3))
    done = _send(target, tmp_path / "s.pos", str(tmp_path / "d.npy"), extra=("--connect-timeout", "1"))
    _one_line_error(done, f"no latentwire server at {target}", "connection refused")
    env = dict(os.environ, LATENTWIRE_CACHE=str(tmp_path / "cache"))
    got = subprocess.run([sys.executable, "-m", "latentwire.client.receive", "--target", target, "--channel", "digits",
                          "--state", str(tmp_path / "r.pos"), "--out", str(tmp_path / "out"), "--connect-timeout", "1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    _one_line_error(got, target, "connection refused")
    with pytest.raises(ConnectError) as info:
        Client(target, connect_timeout=0.5).channels()
    assert info.value.reason == "connection refused" and info.value.target == target


def test_receive_on_an_unknown_channel_is_one_line(server, tmp_path: Path) -> None:
    env = dict(os.environ, LATENTWIRE_CACHE=str(tmp_path / "cache"))
    got = subprocess.run([sys.executable, "-m", "latentwire.client.receive", "--target", f"127.0.0.1:{server.port}",
                          "--channel", "nope", "--state", str(tmp_path / "r.pos"), "--out", str(tmp_path / "out")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    _one_line_error(got, "nope")


def test_one_server_per_data_dir_and_a_busy_port_are_one_line(server, tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"in use by another latentwire serve \\(pid {os.getpid()}\\)"):
        with running_server(tiny_bundle, tmp_path / "data"):
            pass
    for args in ([f"--listen=127.0.0.1:{server.port}", "--data-dir", str(tmp_path / "other")],
                 ["--listen=127.0.0.1:0", "--data-dir", str(tmp_path / "data")]):
        done = subprocess.run([sys.executable, "-m", "latentwire.server.main", "--channel", f"digits={tiny_bundle}",
                               *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("latentwire serve: ")
    # the first server still works
    with Client(f"127.0.0.1:{server.port}") as c:
        assert c.publish("digits", digits(3)).accepted == 3


def test_server_checks_edge_packets_against_their_reconstruction_crc(server, tiny_bundle: Path) -> None:
    codec = Codec.load(tiny_bundle, provider="cpu", threads=1)
    good = codec.encode(digits(8), quality=3)  # a residual level: carries the reconstruction CRC
    header, payload = bitstream.read_packet(good)
    assert header.recon_crc is not None
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(20):
        garbage = rng.integers(0, 256, size=len(payload), dtype=np.uint8).tobytes()
        forged = bitstream.write_packet(model_id=codec.model_id, quality=header.quality,
                                        sample_shape=header.sample_shape, count=header.count, payload=garbage,
                                        residual=True, recon_crc=header.recon_crc)
        with Client(f"127.0.0.1:{server.port}") as c:
            r = c.publish_packets("digits", [forged])
        refused += r.rejected == 8 and r.accepted == 0
    assert refused == 20
    assert _stored(f"127.0.0.1:{server.port}") == []


def test_limit_hits_are_logged_once_per_stream(tiny_bundle: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="latentwire.server")
    with running_server(tiny_bundle, tmp_path / "data", limits=Limits(max_frames_per_message=10)) as s:
        with Client(f"127.0.0.1:{s.port}") as c:
            r = c.publish("digits", digits(60), frames_per_message=20)
    assert r.rejected == 60 and len(r.errors) == 3
    hits = [m for m in caplog.messages if "limit frames_per_message hit" in m]
    assert len(hits) == 1 and "max_frames_per_message is 10" in hits[0]
    assert s.metrics.value("latentwire_limit_hits_total", limit="frames_per_message") == 3


def test_token_files_are_strict(tmp_path: Path) -> None:
    from latentwire.server.auth import TokenStore

    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": {"s3cret-token": {"name": "cam", "publish": ["digits"], "subscibe": ["*"]}}}))
    with pytest.raises(ConfigError, match="unknown keys \\['subscibe'\\]"):
        TokenStore.load(path)
    path.write_text(json.dumps({"tokens": {"s3cret-token": {"publish": "digits"}}}))
    with pytest.raises(ConfigError, match="must be a list"):
        TokenStore.load(path)
    path.write_text(json.dumps({"tokens": {"s3cret-token": {"publish": ["digits"]}}, "extra": 1}))
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        TokenStore.load(path)


def test_shape_errors_name_the_fix() -> None:
    codec = Codec.load("default", provider="cpu", threads=1)
    with pytest.raises(InputError, match=r"channel axis is missing.*x\[:, None\]"):
        codec.encode(np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(InputError, match=r"x\[None, None\]"):
        codec.encode(np.zeros((28, 28), np.uint8))
