"""The gRPC server in-process on 127.0.0.1 with a real tiny bundle: end to end, in-band errors,
status codes, auth, bundle download, health, reflection, metrics, limits."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from _transport import digits, free_port, running_server
from latentwire.client import Client, ConnectError
from latentwire.codec.bundle import Bundle, compute_model_id
from latentwire.codec.codec import Codec
from latentwire.codec.coding.bitstream import peek_header
from latentwire.codec.errors import BundleError
from latentwire.server.config import Limits
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

N = 10_000


@pytest.fixture(scope="module")
def codec(tiny_bundle: Path) -> Codec:
    return Codec.load(tiny_bundle, provider="cpu", threads=1)


def _collect(client: Client, want: int, out: list, errors: list) -> None:
    try:
        got = 0
        for p in client.subscribe_packets("digits", 0, idle_timeout=20):
            out.append(p)
            got += p.count
            if got >= want:
                return
    except Exception as e:  # noqa: BLE001 - surfaced by the test
        errors.append(e)


def test_10k_digits_to_two_receivers(tiny_bundle: Path, codec: Codec, tmp_path: Path, capsys) -> None:
    x = digits(N)
    with running_server(tiny_bundle, tmp_path / "data") as server:
        target = f"127.0.0.1:{server.port}"
        subs = [Client(target, cache_dir=tmp_path / f"cache{i}") for i in range(2)]
        got: list[list] = [[], []]
        errors: list = []
        threads = [threading.Thread(target=_collect, args=(subs[i], N, got[i], errors)) for i in range(2)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        with Client(target) as pub:
            result = pub.publish("digits", x, frames_per_message=500)
        for t in threads:
            t.join(60)
        elapsed = time.perf_counter() - t0
        assert not errors, errors
        assert result.accepted == N and result.rejected == 0 and not result.errors
        assert (result.first_seq, result.last_seq) == (0, N - 1)

        reference = None
        for packets in got:
            seqs = np.concatenate([np.arange(p.first_seq, p.first_seq + p.count) for p in packets])
            assert np.array_equal(seqs, np.arange(N)), "every frame, in order, no gaps, no duplicates"
            assert all(p.model_id == codec.model_id for p in packets)
            payloads = [p.payload for p in packets]
            if reference is None:
                reference = payloads
            assert payloads == reference, "both receivers get the same packets"
        # the frames a subscriber decodes equal decoding the same packets locally
        local = np.concatenate([codec.decode(p) for p in reference])
        frames = list(subs[0].subscribe("digits", 0, idle_timeout=5))
        assert [f.seq for f in frames] == list(range(N))
        assert np.array_equal(np.stack([f.data for f in frames]), local)
        assert local.shape == x.shape and local.dtype == x.dtype
        # bytes on the wire: what the server counted equals the packet sizes the receivers got
        wire = sum(len(p) for p in reference)
        m = server.metrics
        assert m.value("latentwire_wire_bytes_in_total", channel="digits") == wire
        assert m.value("latentwire_wire_bytes_out_total", channel="digits") == 3 * wire
        assert m.value("latentwire_frames_in_total", channel="digits", kind="raw") == N
        assert m.value("latentwire_raw_bytes_in_total", channel="digits") == x.nbytes
        assert sum(peek_header(p).count for p in reference) == N
        for c in subs:
            c.close()
    with capsys.disabled():
        print(f"\n[transport] {N} digits -> server -> 2 receivers in {elapsed:.2f}s = {N / elapsed:.0f} frames/s; "
              f"{x.nbytes} raw bytes -> {wire} packet bytes ({x.nbytes / wire:.1f}x), {len(reference)} packets")


def test_bad_frames_are_rejected_in_band_and_stream_goes_on(tiny_bundle: Path, codec: Codec, tmp_path: Path) -> None:
    x = digits(300)
    good = codec.encode(x[200:250])
    corrupt = bytearray(codec.encode(x[250:300]))
    corrupt[len(corrupt) // 2] ^= 0xFF
    with running_server(tiny_bundle, tmp_path / "data") as server:
        stub = pb_grpc.LatentwireStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))

        def raw(i: int, a: np.ndarray) -> pb.PublishRequest:
            return pb.PublishRequest(message_index=i, raw=pb.RawFrames(data=a.tobytes(), dtype=a.dtype.str,
                                                                       shape=list(a.shape)))

        wrong_shape = np.zeros((5, 1, 27, 27), np.uint8)
        reqs = [
            pb.PublishRequest(open=pb.PublishOpen(channel="digits")),
            raw(1, x[:100]),
            raw(2, wrong_shape),
            pb.PublishRequest(message_index=3, raw=pb.RawFrames(data=b"\x00" * 7, dtype="uint8", shape=[1, 1, 28, 28])),
            pb.PublishRequest(message_index=4, packets=pb.Packets(packets=[bytes(corrupt), good])),
            raw(5, x[100:200]),
        ]
        resps = list(stub.Publish(iter(reqs)))
        assert resps[0].channel.name == "digits"
        by_index = {r.message_index: r for r in resps[1:]}
        assert by_index[1].accepted == 100 and not by_index[1].errors
        assert by_index[2].accepted == 0 and by_index[2].rejected == 5
        assert by_index[2].errors[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "28" in by_index[2].errors[0].message, "the message says which shape to send"
        assert by_index[3].rejected == 1 and "needs" in by_index[3].errors[0].message
        r4 = by_index[4]
        # a packet failing its CRC has no trustworthy frame count: it counts as one rejected frame
        assert r4.accepted == 50 and r4.rejected == 1 and r4.errors[0].index == 0
        assert "Checksum" in r4.errors[0].message
        assert by_index[5].accepted == 100
        got = []
        with Client(f"127.0.0.1:{server.port}", cache_dir=tmp_path / "cache") as c:
            for f in c.subscribe("digits", 0, idle_timeout=2):
                got.append(f)
        assert [f.seq for f in got] == list(range(250))
        # the edge-coded packet is relayed byte for byte: its frames decode like the sender's
        assert np.array_equal(np.stack([f.data for f in got[100:150]]), codec.decode(good))


def test_status_codes(tiny_bundle: Path, tmp_path: Path) -> None:
    with running_server(tiny_bundle, tmp_path / "data", limits=Limits(max_subscribers=1)) as server:
        ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.LatentwireStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            next(stub.Subscribe(pb.SubscribeRequest(channel="nope")))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "digits" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModel(pb.GetModelRequest(model_id="0123456789abcdef"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Publish(iter([pb.PublishRequest(raw=pb.RawFrames())])))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "open" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            next(stub.Subscribe(pb.SubscribeRequest(channel="digits", from_seq=5)))
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
        # subscriber limit
        first = stub.Subscribe(pb.SubscribeRequest(channel="digits", latest=True))
        deadline = time.monotonic() + 5
        while server.service._subscribers < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as e:
            next(stub.Subscribe(pb.SubscribeRequest(channel="digits")))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_subscribers" in e.value.details()
        assert server.metrics.value("latentwire_limit_hits_total", limit="subscribers") == 1
        first.cancel()
        ch.close()


def test_tokens(tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="latentwire")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {
        "viewer-token-1": {"name": "viewer", "subscribe": ["digits"]},
        "camera-token-1": {"name": "camera", "publish": ["digits"]},
    }}))
    with running_server(tiny_bundle, tmp_path / "data", tokens_file=str(tokens)) as server:
        target = f"127.0.0.1:{server.port}"
        with Client(target, token="camera-token-1") as cam:
            assert cam.publish("digits", digits(20)).accepted == 20
        anonymous = Client(target, cache_dir=tmp_path / "c0")
        received = []
        with pytest.raises(grpc.RpcError) as e:
            for f in anonymous.subscribe("digits", 0):
                received.append(f)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and received == []
        with pytest.raises(grpc.RpcError) as e:
            anonymous.models()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(target, token="camera-token-1", cache_dir=tmp_path / "c1") as cam:
            with pytest.raises(grpc.RpcError) as e:
                next(cam.subscribe_packets("digits", 0))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "subscribe" in e.value.details()
        with Client(target, token="viewer-token-1", cache_dir=tmp_path / "c2") as viewer:
            assert len(list(viewer.subscribe("digits", 0, idle_timeout=1))) == 20
            with pytest.raises(grpc.RpcError) as e:
                viewer.publish("digits", digits(1))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        anonymous.close()
    logged = caplog.text
    assert "refused" in logged and "viewer" in logged, "auth decisions are logged by token name"
    assert "viewer-token-1" not in logged and "camera-token-1" not in logged, "tokens are never logged"


def test_model_metadata_and_verified_download(tiny_bundle: Path, tmp_path: Path) -> None:
    served = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, served)
    model_id = Bundle.load(served).model_id
    with running_server(served, tmp_path / "data") as server:
        with Client(f"127.0.0.1:{server.port}", cache_dir=tmp_path / "cache") as c:
            (info,) = c.models()
            assert info.model_id == model_id and c.model(model_id[:12]) == info
            assert info.sample_shape == (1, 28, 28) and info.raw_dtype == "uint8" and info.qualities
            assert info.bundle_size == sum(f[1] for f in info.files) > 0
            path = c.fetch_decoder(model_id)
            assert compute_model_id(path) == model_id, "the downloaded decoder hashes to its id"
            # a receiver's copy: everything but the sender's graph, verified without it
            assert not (path / "encoder.onnx").exists() and (path / "decoder.onnx").is_file()
            assert Bundle.load(path, verify=True, require_encoder=False).model_id == model_id
            with pytest.raises(BundleError, match="receiver's copy"):
                Bundle.load(path, verify=True)
            receiver = c.codec(model_id)
            x = digits(8)
            assert receiver.decode(Codec.load(served).encode(x)).shape == x.shape
            with pytest.raises(BundleError, match="receiver's copy"):
                receiver.encode(x)
            # asking for an encoder fetches just that file into the same folder, hash-checked
            decoder_mtime = (path / "decoder.onnx").stat().st_mtime_ns
            assert c.codec(model_id, encoder=True) is receiver
            assert Bundle.load(path, verify=True).model_id == model_id
            assert (path / "decoder.onnx").stat().st_mtime_ns == decoder_mtime
            assert receiver.decode(receiver.encode(x)).shape == x.shape
            with pytest.raises(grpc.RpcError) as e:
                list(c.stub.DownloadBundle(pb.DownloadBundleRequest(model_id=model_id, files=["weights.bin"])))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "weights.bin" in str(e.value.details())
            # an encoder that the server vouches for but the manifest does not is refused, and the
            # receiver's copy stays as it was
            other = tmp_path / "cache3"
            copy = c.bundles.fetch(model_id, other)
            enc = served / "encoder.onnx"
            bad = enc.read_bytes()[:-10] + bytes(10)
            enc.write_bytes(bad)
            for m in server.models.values():
                for i, f in enumerate(m.files):
                    if f.name == "encoder.onnx":
                        m.files[i] = type(f)(f.name, len(bad), hashlib.sha256(bad).hexdigest())
            with pytest.raises(BundleError, match="encoder.onnx"):
                c.bundles.fetch(model_id, other, encoder=True)
            assert not (copy / "encoder.onnx").exists() and [p.name for p in other.iterdir()] == [model_id]

            # tamper with the served decoder after the server loaded it: the client must refuse
            dec = served / "decoder.onnx"
            data = bytearray(dec.read_bytes())
            data[-10] ^= 0x55
            dec.write_bytes(bytes(data))
            # and make the server vouch for the altered bytes (a compromised server or a proxy in the
            # middle): the per-file check passes, the bundle's own hashes and model id must not
            for m in server.models.values():
                for i, f in enumerate(m.files):
                    if f.name == "decoder.onnx":
                        m.files[i] = type(f)(f.name, f.size, hashlib.sha256(data).hexdigest())
            fresh = tmp_path / "cache2"
            with pytest.raises(BundleError, match="decoder.onnx"):
                c.fetch_decoder(model_id, cache_dir=fresh)
            assert not (fresh / model_id).exists() and not any(fresh.iterdir()), "nothing tampered is cached"


def test_health_reflection_and_metrics_endpoint(tiny_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    with running_server(tiny_bundle, tmp_path / "data", metrics_port=port) as server:
        ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "latentwire.v1.Latentwire"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == \
                health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert {"latentwire.v1.Latentwire", "grpc.health.v1.Health"} <= names
        with Client(f"127.0.0.1:{server.port}") as c:
            c.publish("digits", digits(10))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'latentwire_frames_in_total{channel="digits",kind="raw"} 10.0' in text
        assert "latentwire_encode_seconds_bucket" in text
        ch.close()


def test_tls(tiny_bundle: Path, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with running_server(tiny_bundle, tmp_path / "data", tls_cert=str(cert), tls_key=str(key)) as server:
        with Client(f"localhost:{server.port}", tls=cert, cache_dir=tmp_path / "cache") as c:
            assert c.publish("digits", digits(5)).accepted == 5
            assert [f.seq for f in c.subscribe("digits", 0, idle_timeout=1)] == list(range(5))
        with Client(f"localhost:{server.port}", connect_timeout=2) as plain:  # plaintext against TLS fails
            with pytest.raises(ConnectError, match=f"no latentwire server at localhost:{server.port}") as err:
                plain.channels()
            assert err.value.target == f"localhost:{server.port}" and 1.5 < err.value.waited < 10


def test_message_limits_and_stalled_subscriber(tiny_bundle: Path, tmp_path: Path) -> None:
    with running_server(tiny_bundle, tmp_path / "data", limits=Limits(max_frames_per_message=100)) as server:
        target = f"127.0.0.1:{server.port}"
        stalled = pb_grpc.LatentwireStub(grpc.insecure_channel(target)).Subscribe(
            pb.SubscribeRequest(channel="digits", from_seq=0, max_packets_per_response=1))
        with Client(target) as c:
            r = c.publish("digits", digits(250), frames_per_message=150)
            assert r.accepted == 100 and r.rejected == 150  # 150 + 100: the first message is over the limit
            assert r.errors[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_frames_per_message" in r.errors[0].message
            assert server.metrics.value("latentwire_limit_hits_total", limit="frames_per_message") == 1
            # a subscriber that never reads does not hold back the others
            c.publish("digits", digits(2000), frames_per_message=100)
            got = sum(p.count for p in c.subscribe_packets("digits", 0, idle_timeout=1))
            assert got == 2100
        stalled.cancel()


def test_model_id_travels_once_per_stream(tiny_bundle: Path, tmp_path: Path) -> None:
    """The 64-character model id is sent on a stream's first packet only (each packet carries an
    8-byte prefix anyway); a client that resumes mid-stream still learns it from the new stream."""
    codec = Codec.load(tiny_bundle, provider="cpu", threads=1)
    x = digits(40)
    with running_server(tiny_bundle, tmp_path / "data") as server, Client(f"127.0.0.1:{server.port}") as c:
        for i in range(0, 40, 8):  # five commits -> five packets
            assert c.publish("digits", x[i : i + 8], frames_per_message=8).accepted == 8
        ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        call = pb_grpc.LatentwireStub(ch).Subscribe(pb.SubscribeRequest(channel="digits", from_seq=0))
        records = []
        for resp in call:
            records += list(resp.packets)
            if sum(r.count for r in records) >= 40:
                break
        call.cancel()
        ch.close()
        assert len(records) >= 2
        assert records[0].model_id == codec.model_id and all(r.model_id == "" for r in records[1:])
        resumed = list(c.subscribe_packets("digits", from_seq=17, idle_timeout=2))
        assert resumed[0].first_seq <= 17 and all(p.model_id == codec.model_id for p in resumed)
