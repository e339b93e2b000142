"""Client delivery guarantees against real in-process servers: resume across a server restart,
mid-packet resume, 'latest', the idempotent producer, edge encoding, the bundle cache."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _transport import digits, free_port, running_server
from latentwire.client import Client
from latentwire.client.publish import batches as _batches
from latentwire.codec.codec import Codec


@pytest.fixture(scope="module")
def codec(tiny_bundle: Path) -> Codec:
    return Codec.load(tiny_bundle, provider="cpu", threads=1)


def test_subscribe_resumes_across_server_restart(tiny_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    x = digits(3000)
    seen: list[int] = []
    errors: list[BaseException] = []
    with running_server(tiny_bundle, data, listen=f"127.0.0.1:{port}") as server:
        with Client(server_target := f"127.0.0.1:{port}") as pub:
            pub.publish("digits", x[:1000], frames_per_message=100)
        sub = Client(server_target, cache_dir=tmp_path / "cache")

        def consume() -> None:
            try:
                for f in sub.subscribe("digits", 0, idle_timeout=15, max_backoff=0.5):
                    seen.append(f.seq)
                    if f.seq == 2999:
                        return
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=consume)
        t.start()
        deadline = time.monotonic() + 10
        while len(seen) < 1000 and time.monotonic() < deadline:
            time.sleep(0.02)
    # server stopped (graceful): the subscriber is now reconnecting with backoff
    with running_server(tiny_bundle, data, listen=f"127.0.0.1:{port}") as server:
        assert server.channels["digits"].store.next_seq == 1000, "seq continues from the log"
        with Client(server_target) as pub:
            r = pub.publish("digits", x[1000:], frames_per_message=128)
        assert (r.first_seq, r.last_seq) == (1000, 2999)
        t.join(30)
    sub.close()
    assert not errors, errors
    assert seen == list(range(3000)), "no frame lost or duplicated across the restart"


def test_mid_packet_resume_and_latest(tiny_bundle: Path, codec: Codec, tmp_path: Path) -> None:
    x = digits(600)
    with running_server(tiny_bundle, tmp_path / "data") as server:
        target = f"127.0.0.1:{server.port}"
        with Client(target, cache_dir=tmp_path / "cache") as c:
            c.publish("digits", x[:500], frames_per_message=500)  # one packet holds 0..499
            frames = list(c.subscribe("digits", 123, idle_timeout=1))
            assert [f.seq for f in frames] == list(range(123, 500)), "frames before from_seq are dropped"
            whole = codec.decode(next(c.subscribe_packets("digits", 0)).payload)
            assert np.array_equal(np.stack([f.data for f in frames]), whole[123:])
            got: list[int] = []
            it = c.subscribe("digits", "latest", idle_timeout=3)
            c.publish("digits", x[500:], frames_per_message=50)
            for f in it:
                got.append(f.seq)
                if f.seq == 599:
                    break
            assert got == list(range(500, 600)), "'latest' starts at the next seq, nothing older"


def test_idempotent_producer_drops_resent_frames(tiny_bundle: Path, tmp_path: Path) -> None:
    x = digits(1000)
    with running_server(tiny_bundle, tmp_path / "data") as server:
        with Client(f"127.0.0.1:{server.port}") as c:
            r1 = c.publish("digits", x[:600], producer_id="cam-1", frames_per_message=100)
            assert (r1.accepted, r1.duplicates) == (600, 0)
            # a producer that crashed after frame 400 was acknowledged resends from 400
            r2 = c.publish("digits", x[400:], producer_id="cam-1", start_offset=400, frames_per_message=100)
            assert (r2.accepted, r2.duplicates) == (400, 200)
            assert (r2.first_seq, r2.last_seq) == (600, 999)
            assert server.channels["digits"].store.next_seq == 1000
            # another producer id is independent
            assert c.publish("digits", x[:10], producer_id="cam-2").accepted == 10


def test_edge_encoding_relays_packets(tiny_bundle: Path, codec: Codec, tmp_path: Path) -> None:
    x = digits(300)
    with running_server(tiny_bundle, tmp_path / "data") as server:
        with Client(f"127.0.0.1:{server.port}", cache_dir=tmp_path / "cache") as c:
            r = c.publish("digits", x, encode_at_edge=True, frames_per_message=100)
            assert r.accepted == 300 and r.rejected == 0
            packets = list(c.subscribe_packets("digits", 0, idle_timeout=1))
            assert [p.count for p in packets] == [100, 100, 100]
            assert server.metrics.value("latentwire_frames_in_total", channel="digits", kind="packet") == 300
            assert np.array_equal(codec.decode(packets[0].payload), codec.decode(codec.encode(x[:100])))
            # the bundle cache is reused: a second fetch downloads nothing
            p1 = c.fetch_decoder(codec.model_id)
            mtime = (p1 / "decoder.onnx").stat().st_mtime_ns
            assert c.fetch_decoder(codec.model_id) == p1 and (p1 / "decoder.onnx").stat().st_mtime_ns == mtime


def test_batches_rechunks_iterables() -> None:
    frames = [np.full((1, 2, 2), i, np.uint8) for i in range(5)] + [np.zeros((7, 1, 2, 2), np.uint8)]
    sizes = [b.shape[0] for b in _batches(iter(frames), 3, 4)]
    assert sizes == [4, 4, 4]
    assert [b.shape[0] for b in _batches(np.zeros((10, 1, 2, 2)), 3, 4)] == [4, 4, 2]


def test_full_queue_ends_stream_and_client_resends_in_order(tiny_bundle: Path, tmp_path: Path) -> None:
    from latentwire.server.config import BatchPolicy, Limits

    x = digits(600)
    # the batcher holds frames up to 1.5 s waiting for a full batch, so a 250-frame queue overflows
    with running_server(tiny_bundle, tmp_path / "data", limits=Limits(queue_frames=250),
                        batch=BatchPolicy(max_frames=4096, max_delay_ms=1500)) as server:
        with Client(f"127.0.0.1:{server.port}") as c:
            r = c.publish("digits", x, frames_per_message=100, max_backoff=0.5)
        assert server.metrics.value("latentwire_limit_hits_total", limit="queue_frames") >= 1
        assert r.reconnects >= 1, "RESOURCE_EXHAUSTED ends the stream; the client resends"
        assert r.accepted == 600 and r.rejected == 0 and not r.errors
        assert server.channels["digits"].store.next_seq == 600, "resent frames are not committed twice"


def test_idle_timeout_counts_across_reconnects_and_says_why(tiny_bundle: Path, tmp_path: Path) -> None:
    """A subscriber whose server went away must not retry in silence forever: after idle_timeout
    without data the last error reaches the caller (a clean end is only for a quiet, live stream)."""
    import grpc

    port = free_port()
    with running_server(tiny_bundle, tmp_path / "data", listen=f"127.0.0.1:{port}") as server:
        with Client(f"127.0.0.1:{server.port}") as c:
            assert c.publish("digits", digits(5)).accepted == 5
            assert [f.seq for f in c.subscribe("digits", 0, idle_timeout=1)] == list(range(5))  # quiet: clean end
    with Client(f"127.0.0.1:{port}") as c:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(c.subscribe_packets("digits", 0, idle_timeout=1, max_backoff=0.2))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 10
