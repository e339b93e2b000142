"""Faults not covered elsewhere (kill -9 of server and receiver: tests/test_daemons.py; graceful
restart: tests/test_client.py): the server's port going away and coming back under live streams,
cancelled and deadline-exceeded calls leaving nothing behind on the server (after Triton's
L0_grpc_state_cleanup), and a subscriber 100x slower than the stream."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from _tmpfs import fill, small_tmpfs
from _transport import digits, free_port, running_server, wait_until
from latentwire.client import Client, PublishAck
from latentwire.codec.codec import Codec, default_bundle_path
from latentwire.server.config import BatchPolicy, Limits
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

BUNDLE = default_bundle_path()


def _port_outside_ephemeral_range() -> int:
    """A free port below the kernel's ephemeral range, so no outgoing connection (the proxy's own,
    gRPC's, another test's) can be handed it while the proxy's port is closed."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.sample(range(max(1024, low - 12000), low - 1), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    return free_port()


class Proxy:
    """A TCP forwarder standing for the network path to the server: cut() closes the listening
    port and every connection (RST), restore() listens on the same port again."""

    def __init__(self, upstream: int, port: int | None = None):
        self.upstream, self.port = upstream, port or _port_outside_ephemeral_range()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for attempt in range(50):  # the old listener's close can take a moment to release the port
            try:
                s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                down, _ = listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                down.close()
                continue
            with self._lock:
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        assert self._listener is not None
        try:  # wakes the accept() blocked in _accept: a plain close() leaves the port listening until it returns
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                # shutdown first: it wakes the pump blocked in recv() on this socket; a plain close()
                # from this thread leaves the connection open until that recv returns (no RST at all)
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.cut()


def _paced(x: np.ndarray, per: int, pause: float) -> Iterator[np.ndarray]:
    for s in range(0, len(x), per):
        yield x[s : s + per]
        time.sleep(pause)


def test_port_goes_away_and_comes_back(tmp_path: Path) -> None:
    """The path to a live server breaks twice mid-stream (connections reset, port closed for
    1.5 s): the publisher resends its unacknowledged messages, the subscriber resumes from its
    last seq; 0 lost, 0 duplicated, and the server holds no stale stream afterwards."""
    n = 3000
    x = digits(n)
    with running_server(BUNDLE, tmp_path / "data") as server:
        proxy = Proxy(server.port)
        target = f"127.0.0.1:{proxy.port}"
        seen: list[int] = []
        errors: list[BaseException] = []
        sub = Client(target, cache_dir=tmp_path / "cache")

        def consume() -> None:
            try:
                for p in sub.subscribe_packets("digits", 0, idle_timeout=30, max_backoff=0.5):
                    seen.extend(range(p.first_seq, p.first_seq + p.count))
                    if len(seen) >= n:
                        return
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=consume)
        t.start()
        result: list = []

        def produce() -> None:
            with Client(target) as pub:
                result.append(pub.publish("digits", _paced(x, 50, 0.02), frames_per_message=50,
                                          producer_id="cam-proxy", max_backoff=0.5, max_retries=20))

        p = threading.Thread(target=produce)
        p.start()
        for cut_at in (800, 2000):
            wait_until(lambda cut_at=cut_at: server.channels["digits"].store.next_seq >= cut_at,
                       "publishing progressed")
            proxy.cut()
            time.sleep(1.5)
            proxy.restore()
        p.join(120)
        t.join(120)
        assert not errors, errors
        assert result and result[0].accepted + result[0].duplicates == n and result[0].reconnects >= 1
        assert server.channels["digits"].store.next_seq == n, "no frame committed twice"
        assert seen == list(range(n)), "every frame once, in order, across both cuts"
        # both clients are done: no stream that lived on a reset connection is still held
        wait_until(lambda: server.service._subscribers == 0 and server.service._publishers == 0,
                   "no stale stream left on the server", timeout=10)
        sub.close()
        assert server.metrics.value("latentwire_subscribers", channel="digits") == 0
        proxy.close()


def _state(server) -> dict:
    ch = server.channels["digits"]
    return {
        "subscribers": server.service._subscribers,
        "publishers": server.service._publishers,
        "channel subscribers": ch.subscribers,
        "subscriber gauge": server.metrics.value("latentwire_subscribers", channel="digits"),
        "queue depth": ch.batcher.depth,
        "publish reader threads": sum(t.name.startswith("publish-") for t in threading.enumerate()),
    }


def test_cancel_and_deadline_leave_nothing_behind(tmp_path: Path) -> None:
    """Like Triton's L0_grpc_state_cleanup: streams cancelled or past their deadline at every
    stage (before the first response, mid-stream, blocked waiting for data, mid-publish, mid-
    download) release every server-side resource: counts and gauges return to their baseline and
    a fresh client still gets every committed frame."""
    with running_server(BUNDLE, tmp_path / "data", batch=BatchPolicy(max_frames=32)) as server:
        target = f"127.0.0.1:{server.port}"
        with Client(target) as c:
            c.publish("digits", digits(2000), frames_per_message=100)
        baseline = _state(server)
        assert baseline["subscribers"] == 0 and baseline["publish reader threads"] == 0
        ch = grpc.insecure_channel(target)
        stub = pb_grpc.LatentwireStub(ch)
        outcomes: list[grpc.StatusCode] = []
        for _ in range(3):
            # mid-stream deadline: one packet per response, read slowly
            call = stub.Subscribe(pb.SubscribeRequest(channel="digits", from_seq=0, max_packets_per_response=1),
                                  timeout=0.5)
            with pytest.raises(grpc.RpcError) as e:
                for _ in call:
                    time.sleep(0.05)
            outcomes.append(e.value.code())
            # cancelled after the first response, with the server ahead of the reader
            call = stub.Subscribe(pb.SubscribeRequest(channel="digits", from_seq=0, max_packets_per_response=1))
            next(call)
            call.cancel()
            # blocked waiting for new frames (latest), then deadline / cancel
            call = stub.Subscribe(pb.SubscribeRequest(channel="digits", latest=True), timeout=0.3)
            with pytest.raises(grpc.RpcError) as e:
                next(call)
            outcomes.append(e.value.code())
            call = stub.Subscribe(pb.SubscribeRequest(channel="digits", latest=True))
            wait_until(lambda: server.service._subscribers >= 1, "the idle subscriber is open")
            call.cancel()
            # a publisher cancelled mid-stream and one whose request stream stalls past its deadline
            stall = threading.Event()

            def reqs(stall: threading.Event = stall) -> Iterator[pb.PublishRequest]:
                yield pb.PublishRequest(open=pb.PublishOpen(channel="digits"))
                for i in range(1, 4):
                    a = digits(10)
                    yield pb.PublishRequest(message_index=i, raw=pb.RawFrames(data=a.tobytes(), dtype="|u1",
                                                                              shape=list(a.shape)))
                stall.wait(5)

            call = stub.Publish(reqs())
            next(call)
            next(call)
            call.cancel()
            call = stub.Publish(reqs(), timeout=0.5)
            with pytest.raises(grpc.RpcError) as e:
                list(call)
            outcomes.append(e.value.code())
            stall.set()
            # a bundle download cancelled after its first chunk
            dl = stub.DownloadBundle(pb.DownloadBundleRequest(model_id=Codec.load(BUNDLE).model_id))
            next(dl)
            dl.cancel()
        assert set(outcomes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
        wait_until(lambda: _state(server) == baseline, f"server state back to baseline {baseline}", timeout=10)
        # whatever the cancelled publishers got committed is whole and readable, without gaps
        with Client(target, cache_dir=tmp_path / "cache") as c:
            frames = [f.seq for f in c.subscribe("digits", 0, idle_timeout=1)]
        assert frames == list(range(server.channels["digits"].store.next_seq))
        assert 2000 <= len(frames) <= 2000 + 3 * 60
        wait_until(lambda: _state(server) == baseline, "the reader's stream was released too", timeout=10)
        ch.close()


def test_slow_subscriber_is_bounded_and_catches_up(tmp_path: Path) -> None:
    """One subscriber reads >= 100x slower than the stream. The others get every frame at full
    speed; the server never holds more for the slow one than one response plus the transport's
    flow-control window (no per-subscriber queue: it reads from its own position, from the shared
    memory tail or the log); once it speeds up it catches up from the log, every frame in order."""
    codec = Codec.load(BUNDLE, provider="cpu", threads=1)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    packet = codec.encode_lossless(noise)  # ~50 KB of incompressible frames per packet
    n_packets = 800  # ~40 MB through the channel: far more than any bound below
    total_bytes = len(packet) * n_packets
    limits = Limits(max_message_bytes=4 << 20)
    with running_server(BUNDLE, tmp_path / "data", limits=limits, subscribe_packets_per_response=8) as server:
        target = f"127.0.0.1:{server.port}"
        ch = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 4 << 20)])
        slow = pb_grpc.LatentwireStub(ch).Subscribe(pb.SubscribeRequest(channel="digits", from_seq=0,
                                                                         max_packets_per_response=1))
        slow_read = {"frames": 0, "bytes": 0}
        fast_done: dict[str, float] = {}
        fast_frames: list[int] = []

        def fast_reader() -> None:
            with Client(target, cache_dir=tmp_path / "c1", max_message_bytes=4 << 20) as c:
                for p in c.subscribe_packets("digits", 0, idle_timeout=30):
                    fast_frames.append(p.count)
                    if sum(fast_frames) >= n_packets * 64:
                        fast_done["t"] = time.monotonic()
                        return

        ft = threading.Thread(target=fast_reader)
        ft.start()
        t0 = time.monotonic()
        sent = 0
        with Client(target, max_message_bytes=4 << 20) as pub:
            stub = pub.stub
            reqs = [pb.PublishRequest(open=pb.PublishOpen(channel="digits"))] + [
                pb.PublishRequest(message_index=i + 1, packets=pb.Packets(packets=[packet]))
                for i in range(n_packets)]
            for r in stub.Publish(iter(reqs)):
                sent += r.accepted
                if slow_read["frames"] < 64 * 3 and r.message_index % 100 == 0:  # a few slow reads meanwhile
                    resp = next(slow)
                    slow_read["frames"] += sum(p.count for p in resp.packets)
                    slow_read["bytes"] += sum(len(p.payload) for p in resp.packets)
        publish_s = time.monotonic() - t0
        ft.join(120)
        assert sent == n_packets * 64 and "t" in fast_done, "the fast subscriber got every frame"
        fast_s = fast_done["t"] - t0
        time.sleep(1.0)  # let the server push whatever flow control admits toward the slow reader
        m = server.metrics
        out_bytes = m.value("latentwire_wire_bytes_out_total", channel="digits")
        held_for_slow = out_bytes - total_bytes - slow_read["bytes"]  # sent toward it but not yet read
        publish_rate = sent / publish_s
        slow_rate = slow_read["frames"] / publish_s
        assert publish_rate >= 100 * slow_rate, (publish_rate, slow_rate)
        bound = limits.max_message_bytes + (8 << 20)  # one response + HTTP/2 window and socket buffers
        assert 0 <= held_for_slow <= bound < total_bytes / 3, (held_for_slow, bound, total_bytes)
        assert server.channels["digits"].tail_bytes <= 32 << 20
        assert fast_s <= publish_s + 10, "the fast subscriber was not held back"
        # now the slow one speeds up: everything, in order, from the log
        seqs_ok, expect = True, slow_read["frames"]
        for resp in slow:
            for p in resp.packets:
                seqs_ok &= p.first_seq == expect
                expect = p.first_seq + p.count
            if expect >= sent:
                break
        slow.cancel()
        assert seqs_ok and expect == sent
        print(f"\n[slow consumer] publish {publish_rate:.0f} frames/s, slow reader {slow_rate:.1f} frames/s "
              f"({publish_rate / max(slow_rate, 1e-9):.0f}x slower); held for it {held_for_slow / 2**20:.2f} MiB "
              f"of {total_bytes / 2**20:.1f} MiB published; fast subscriber done {fast_s - publish_s:+.2f}s "
              "after the publisher")
        ch.close()


def _server_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("latentwire.server") and r.exc_info]


def test_a_full_disk_is_resource_exhausted_and_writes_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The embedded store's data dir on a small tmpfs that fills up under a publisher of real MNIST
    digits: publishers get RESOURCE_EXHAUSTED naming the data dir and its free bytes, subscribers
    keep reading everything committed, the log has one line when it fills and one when writes go
    through again (no traceback), and once space returns (a filler file deleted, nothing restarted)
    the publisher's own retries finish the job: every frame exactly once, in order."""
    caplog.set_level(logging.INFO)
    n = 3000
    x = digits(n)
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        data = disk / "data"
        with running_server(BUNDLE, data, batch=BatchPolicy(max_frames=64, max_delay_ms=2)) as server:
            filler = fill(disk, leave=192 << 10)  # room for a few hundred frames' commits
            target = f"127.0.0.1:{server.port}"
            store = server.channels["digits"].store
            seen: list[int] = []
            errors: list[BaseException] = []
            sub = Client(target, cache_dir=tmp_path / "cache")

            def consume() -> None:
                try:
                    for p in sub.subscribe_packets("digits", 0, idle_timeout=60, max_backoff=0.5):
                        seen.extend(range(p.first_seq, p.first_seq + p.count))
                        if len(seen) >= n:
                            return
                except BaseException as e:  # noqa: BLE001 - the assertion below reports it
                    errors.append(e)

            acks: list[PublishAck] = []
            result: list = []

            def produce() -> None:
                try:
                    with Client(target) as pub:
                        result.append(pub.publish("digits", x, frames_per_message=50, producer_id="cam-full",
                                                  max_backoff=0.2, max_retries=1000, on_ack=acks.append))
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)

            threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
            for t in threads:
                t.start()
            try:
                wait_until(lambda: server.metrics.value("latentwire_store_state", channel="digits", state="full") == 1,
                           "the data dir filling up")
                committed = store.next_seq
                assert 0 < committed < n
                # a publisher that does not retry sees the status itself: RESOURCE_EXHAUSTED, naming the dir
                with Client(target) as probe, pytest.raises(grpc.RpcError) as refused:
                    probe.publish("digits", x[:50], frames_per_message=50, producer_id="probe", max_retries=0)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                details = refused.value.details()
                assert f"data dir {data} is full (" in details and " bytes free)" in details, details
                assert "nothing of message 0 or later was committed" in details, details
                # reads are served while full: a new subscriber gets every committed frame, in order
                with Client(target, cache_dir=tmp_path / "cache") as reader:
                    assert [f.seq for f in reader.subscribe("digits", 0, idle_timeout=1.0)] == list(range(committed))
                time.sleep(0.5)
                assert store.next_seq == committed, "nothing is committed while the disk is full"
                filler.unlink()  # space returns; nothing is restarted
            finally:
                for t in threads:
                    t.join(120)
            sub.close()
            assert not errors, errors
            r = result[0]
            assert r.accepted == n and r.rejected == 0 and r.duplicates == 0 and r.reconnects >= 1
            assert all(a.first_seq == a.first_frame for a in acks), "frame k of the input is seq k: in order, no gap"
            assert store.next_seq == n and seen == list(range(n)), "every frame once, in order"
            assert server.metrics.value("latentwire_commits_refused_total", channel="digits", state="full") >= 1
            assert server.metrics.value("latentwire_store_state", channel="digits", state="full") == 0
    batcher = [r for r in caplog.records if r.name == "latentwire.server.batcher"]
    assert [r.levelname for r in batcher if "is full" in r.getMessage()] == ["WARNING"], "one line when it fills"
    back = [r.getMessage() for r in batcher if "writes go through again" in r.getMessage()]
    assert len(back) == 1 and "space returned after" in back[0], back
    assert not _server_tracebacks(caplog), "an expected fault is a line, not a traceback"


def test_redis_down_during_trims_is_one_line_each_way(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis goes away under an idle channel whose batcher trims every second: one line when it
    goes, one when it is back, no traceback per trim; commits go on afterwards."""
    import shutil

    from _redis import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed and could not be (the README's test command installs it)")
    caplog.set_level(logging.INFO)
    redis = RedisServer(tmp_path / "redis", persist=True).start()
    try:
        with running_server(BUNDLE, tmp_path / "data", store=redis.url) as server:
            target = f"127.0.0.1:{server.port}"
            with Client(target) as c:
                assert c.publish("digits", digits(10)).accepted == 10
            port = redis.port
            redis.stop()
            time.sleep(3.5)  # three trim ticks with Redis gone
            redis.port = port
            redis.start()  # same port and append-only file
            wait_until(lambda: any("writes go through again" in r.getMessage() for r in caplog.records),
                       "the reachable-again line", timeout=15)
            with Client(target) as c:
                assert c.publish("digits", digits(10)).first_seq == 10
    finally:
        redis.stop()
    lines = [r for r in caplog.records if r.name == "latentwire.server.batcher"]
    down = [r.getMessage() for r in lines if "unreachable" in r.getMessage()]
    assert len(down) == 1 and "a trim was refused" in down[0], down
    back = [r.getMessage() for r in lines if "writes go through again" in r.getMessage()]
    assert len(back) == 1 and "the store is reachable again after" in back[0], back
    assert not _server_tracebacks(caplog), "an expected fault is a line, not a traceback"
