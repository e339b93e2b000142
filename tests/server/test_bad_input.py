"""The bad-input table (server/README.md "Bad input"): one test per row, each against a real
server on 127.0.0.1 while a healthy client keeps publishing and receiving through the whole module.

After every row an autouse fixture checks the two things a bad request must never do: change a
frame already stored in the retention log (every row's payload is compared byte for byte) and stop
the server from serving others (the healthy client publishes one frame and its subscriber, which
has been streaming since the module started, must receive it, in order, byte-identical to the log).
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from _transport import digits, running_server, wait_until
from latentwire.client import Client
from latentwire.codec.bundle import Bundle, read_manifest, write_manifest
from latentwire.codec.codec import Codec, default_bundle_path
from latentwire.codec.coding import bitstream as B
from latentwire.codec.errors import BitstreamError, BundleError
from latentwire.server.config import ChannelSpec, Limits
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

GOOD = "healthy-token-0001"  # publish + subscribe everywhere: the healthy client
VIEWER = "viewer-token-0001"  # subscribe digits only
OTHER = "other-token-00001"  # publish/subscribe channel "other" only
TOKENS = (GOOD, VIEWER, OTHER)
MAX_MESSAGE = 1 << 20
MAX_FRAMES = 64
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Env:
    server: object
    target: str
    bundle: Path
    codec: Codec
    healthy: Client
    received: list = field(default_factory=list)  # packets the healthy subscriber got
    errors: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    tmp: Path = Path(".")
    allowed_new: int = 0  # frames a row stores on purpose (good frames next to bad ones)

    @property
    def log(self):
        return self.server.channels["digits"].store  # type: ignore[attr-defined]

    def stub(self) -> pb_grpc.LatentwireStub:
        return pb_grpc.LatentwireStub(grpc.insecure_channel(self.target))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The whole table runs against each store: the embedded SQLite one and Redis Streams."""
    tmp = tmp_path_factory.mktemp("bad-input")
    store = ""
    if request.param == "redis":
        redis = request.getfixturevalue("redis_module_server")
        store = redis.url
    bundle = tmp / "bundle"
    shutil.copytree(default_bundle_path(), bundle)  # a copy: one row alters the served files
    tokens = tmp / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {
        GOOD: {"name": "healthy", "publish": ["*"], "subscribe": ["*"]},
        VIEWER: {"name": "viewer", "subscribe": ["digits"]},
        OTHER: {"name": "other", "publish": ["other"], "subscribe": ["other"]},
    }}))
    capture = _Capture()
    logging.getLogger("latentwire").addHandler(capture)
    logging.getLogger("latentwire").setLevel(logging.DEBUG)
    channels = (ChannelSpec("digits", str(bundle)), ChannelSpec("other", str(bundle)))
    limits = Limits(max_message_bytes=MAX_MESSAGE, max_frames_per_message=MAX_FRAMES)
    with running_server(bundle, tmp / "data", channels=channels, tokens_file=str(tokens), limits=limits,
                        store=store) as server:
        target = f"127.0.0.1:{server.port}"
        healthy = Client(target, token=GOOD, cache_dir=tmp / "cache", max_message_bytes=MAX_MESSAGE)
        assert healthy.publish("digits", digits(200), frames_per_message=50).accepted == 200
        e = Env(server, target, bundle, Codec.load(bundle, provider="cpu", threads=1), healthy, tmp=tmp)

        def receive() -> None:
            try:
                for p in healthy.subscribe_packets("digits", 0, stop=e.stop):
                    e.received.append(p)
            except Exception as exc:  # noqa: BLE001 - surfaced by every row's check
                e.errors.append(exc)

        t = threading.Thread(target=receive, daemon=True)
        t.start()
        wait_until(lambda: sum(p.count for p in e.received) >= 200, "the healthy subscriber got the seed frames")
        yield e
        e.stop.set()
        t.join(10)
        healthy.close()
    logging.getLogger("latentwire").removeHandler(capture)
    text = "\n".join(capture.lines)
    assert "refused" in text
    for tok in TOKENS + ("not-a-known-token-123",):
        assert tok not in text, "tokens are never logged"


def _stored(env: Env) -> list[tuple[int, int, bytes]]:
    return [(p.first_seq, p.count, p.payload) for p in env.log.read_from(0, 1 << 30)]


@pytest.fixture(autouse=True)
def nothing_lost_and_others_served(env: Env):
    """Around every row: the stored frames are unchanged, nothing was added, and the healthy
    client's next frame reaches its long-running subscriber intact."""
    before = _stored(env)
    env.allowed_new = 0
    yield
    after = _stored(env)
    assert after[: len(before)] == before, "a bad request altered or removed stored frames"
    assert sum(n for _, n, _ in after[len(before):]) == env.allowed_new, "a bad request added frames"
    seq = env.log.next_seq
    r = env.healthy.publish("digits", digits(1))
    assert (r.accepted, r.first_seq) == (1, seq), "the server still takes good frames"
    wait_until(lambda: env.received and env.received[-1].first_seq + env.received[-1].count > seq,
               "the healthy subscriber kept receiving")
    assert not env.errors, env.errors
    got = [(p.first_seq, p.count, p.payload) for p in env.received]
    seqs = [s for first, n, _ in got for s in range(first, first + n)]
    assert seqs == list(range(seq + 1)), "the healthy subscriber saw every frame once, in order"
    assert got == _stored(env), "and byte-identical to the log"


# ---------------------------------------------------------------------------------- helpers

def _md(token: str | None) -> tuple:
    return () if token is None else (("authorization", f"Bearer {token}"),)


def _publish(env: Env, *msgs: pb.PublishRequest, channel: str = "digits", token: str | None = GOOD,
             open_: pb.PublishOpen | None = None) -> list[pb.PublishResponse]:
    reqs = [pb.PublishRequest(open=open_ or pb.PublishOpen(channel=channel))]
    for i, m in enumerate(msgs, start=1):
        m.message_index = i
        reqs.append(m)
    return list(env.stub().Publish(iter(reqs), metadata=_md(token), timeout=30))


def _status(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def _one_packet_error(env: Env, packet: bytes) -> pb.FrameError:
    resps = _publish(env, pb.PublishRequest(packets=pb.Packets(packets=[packet])))
    (r,) = [r for r in resps if r.message_index == 1]
    assert r.accepted == 0 and r.rejected >= 1 and len(r.errors) == 1
    assert r.errors[0].code == INVALID.value[0]
    return r.errors[0]


def _raw(arr: np.ndarray | None = None, *, data: bytes | None = None, dtype: str | None = None,
         shape: list[int] | None = None) -> pb.PublishRequest:
    if arr is not None:
        data, dtype, shape = arr.tobytes(), arr.dtype.str, list(arr.shape)
    return pb.PublishRequest(raw=pb.RawFrames(data=data or b"", dtype=dtype or "", shape=shape or []))


def _one_raw_error(env: Env, req: pb.PublishRequest, code: grpc.StatusCode = INVALID) -> pb.PublishResponse:
    resps = _publish(env, req)
    (r,) = [r for r in resps if r.message_index == 1]
    assert r.accepted == 0 and r.errors and all(e.code == code.value[0] for e in r.errors)
    return r


def _good_packet(env: Env, n: int = 4) -> bytes:
    return env.codec.encode(digits(n))


def _forge(env: Env, *, model_id: str | None = None, quality: int = 5, shape=(1, 28, 28), count: int = 4,
           payload: bytes = b"", residual: bool = True, raw_count: int | None = None,
           raw_plen: int | None = None) -> bytes:
    """A packet whose fields are whatever the row needs, with a CORRECT CRC (only the field and
    payload checks can stop it)."""
    body = bytearray(B.MAGIC + bytes([B.VERSION, B.FLAG_RESIDUAL if residual else 0]))
    body += bytes.fromhex(model_id or env.codec.model_id)[:8] + bytes([quality])
    body += B.write_uvarint(len(shape)) + b"".join(B.write_uvarint(d) for d in shape)
    body += B.write_uvarint(count if raw_count is None else raw_count)
    body += B.write_uvarint(len(payload) if raw_plen is None else raw_plen) + payload
    return bytes(body + struct.pack("<I", zlib.crc32(body)))


def _bundle_copy(env: Env, name: str) -> Path:
    d = env.tmp / f"manifest-{name}"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(env.bundle, d)
    return d


# ---------------------------------------------------------------------------------- rows: frame parser
# Edge-coded packets go through bitstream.read_packet on the server; refusals come back in-band as
# FrameError(INVALID_ARGUMENT, "<ExceptionName>: ...") and the stream goes on.

def row_packet_truncated(env: Env) -> None:
    assert "TruncatedFrame" in _one_packet_error(env, _good_packet(env)[:-7]).message


def row_packet_empty(env: Env) -> None:
    assert "TruncatedFrame" in _one_packet_error(env, b"").message


def row_packet_bit_flipped(env: Env) -> None:
    p = bytearray(_good_packet(env))
    p[len(p) // 2] ^= 0x10
    assert "ChecksumMismatch" in _one_packet_error(env, bytes(p)).message


def row_packet_wrong_magic(env: Env) -> None:
    assert "BadMagic" in _one_packet_error(env, b"PK" + _good_packet(env)[2:]).message


def row_packet_wrong_version(env: Env) -> None:
    p = _good_packet(env)
    assert "UnsupportedVersion" in _one_packet_error(env, p[:2] + b"\x02" + p[3:]).message


def row_packet_unknown_flags(env: Env) -> None:
    p = _good_packet(env)
    assert "UnsupportedVersion" in _one_packet_error(env, p[:3] + bytes([p[3] | 0x80]) + p[4:]).message


def row_packet_absurd_count(env: Env) -> None:
    err = _one_packet_error(env, _forge(env, raw_count=10**9))
    assert "BitstreamError" in err.message and "frames" in err.message


def row_packet_absurd_payload_length(env: Env) -> None:
    err = _one_packet_error(env, _forge(env, raw_plen=2**40))
    assert "exceeds" in err.message


def row_packet_other_model(env: Env) -> None:
    assert "ModelMismatch" in _one_packet_error(env, _forge(env, model_id="ab" * 32)).message


def row_packet_wrong_sample_shape(env: Env) -> None:
    assert "sample shape" in _one_packet_error(env, _forge(env, shape=(1, 27, 27))).message


def row_packet_unknown_quality(env: Env) -> None:
    assert "quality 200" in _one_packet_error(env, _forge(env, quality=200)).message


def row_packet_garbage_payload(env: Env) -> None:
    """Well-framed (valid CRC) but undecodable: stored, it would crash every subscriber that
    decodes it (a poison packet). The server decodes edge packets before committing them."""
    good = _good_packet(env)
    h, payload = B.read_packet(good)
    junk = np.random.default_rng(7).integers(0, 256, len(payload), dtype=np.uint8).tobytes()
    forged = B.write_packet(model_id=env.codec.model_id, quality=h.quality, sample_shape=h.sample_shape,
                            count=h.count, payload=junk, residual=h.has_residual, recon_crc=h.recon_crc)
    with pytest.raises(BitstreamError):
        env.codec.decode(forged)  # what a subscriber would have hit
    err = _one_packet_error(env, forged)
    assert "does not decode" in err.message


def row_packet_mixed_good_and_bad(env: Env) -> None:
    """A bad packet next to good ones: the good ones are committed, the bad one is named by index."""
    good = _good_packet(env, 3)
    seq = env.log.next_seq
    resps = _publish(env, pb.PublishRequest(packets=pb.Packets(packets=[good, b"LW\x01", good])))
    (r,) = [r for r in resps if r.message_index == 1]
    assert (r.accepted, r.rejected, r.first_seq) == (6, 1, seq) and r.errors[0].index == 1
    env.allowed_new = 6  # these good frames are stored on purpose


# ---------------------------------------------------------------------------------- rows: RAW frames

def row_raw_wrong_shape(env: Env) -> None:
    r = _one_raw_error(env, _raw(np.zeros((3, 1, 27, 27), np.uint8)))
    assert r.rejected == 3 and "28" in r.errors[0].message


def row_raw_missing_batch_axis(env: Env) -> None:
    r = _one_raw_error(env, _raw(np.zeros((28, 28), np.uint8)))
    assert "(N, *sample_shape)" in r.errors[0].message or "sample" in r.errors[0].message


def row_raw_wrong_dtype(env: Env) -> None:
    r = _one_raw_error(env, _raw(np.zeros((2, 1, 28, 28), np.float32)))
    assert "integer" in r.errors[0].message


def row_raw_nan_inf(env: Env) -> None:
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[0, 0, 1, 1], x[1, 0, 2, 2] = np.nan, np.inf
    assert _one_raw_error(env, _raw(x)).rejected == 2


def row_raw_out_of_range(env: Env) -> None:
    """Integer frames of another dtype are taken when their values fit the model's range; the
    frames that do not are refused one by one (FrameError.index), the others are stored."""
    x = np.full((2, 1, 28, 28), 300, np.int16)  # 300 is outside 0..255
    x[1] = 7
    resps = _publish(env, _raw(x))
    (r,) = [r for r in resps if r.message_index == 1]
    assert (r.accepted, r.rejected) == (1, 1) and r.errors[0].index == 0 and "outside" in r.errors[0].message
    env.allowed_new = 1


def row_raw_unknown_dtype(env: Env) -> None:
    r = _one_raw_error(env, _raw(data=b"\0" * 784, dtype="bogus", shape=[1, 1, 28, 28]))
    assert "unknown dtype" in r.errors[0].message


def row_raw_object_dtype(env: Env) -> None:
    r = _one_raw_error(env, _raw(data=b"\0" * 8 * 784, dtype="O", shape=[1, 1, 28, 28]))
    assert "dtype" in r.errors[0].message


def row_raw_length_mismatch(env: Env) -> None:
    r = _one_raw_error(env, _raw(data=b"\0" * 7, dtype="uint8", shape=[1, 1, 28, 28]))
    assert "needs" in r.errors[0].message


def row_raw_absurd_shape(env: Env) -> None:
    """N = 2^33 frames announced: counted without overflowing the uint32 reply fields."""
    r = _one_raw_error(env, _raw(data=b"\0" * 784, dtype="uint8", shape=[2**33, 1, 28, 28]), EXHAUSTED)
    assert "max_frames_per_message" in r.errors[0].message


def row_raw_shape_product_overflow(env: Env) -> None:
    """Dims whose product wraps a 64-bit integer to 0 must not pass the length check with no data."""
    r = _one_raw_error(env, _raw(data=b"", dtype="uint8", shape=[1, 2**32, 2**32, 1]))
    assert r.errors[0].message


def row_raw_too_many_frames(env: Env) -> None:
    r = _one_raw_error(env, _raw(np.zeros((MAX_FRAMES + 1, 1, 28, 28), np.uint8)), EXHAUSTED)
    assert r.rejected == MAX_FRAMES + 1 and "max_frames_per_message" in r.errors[0].message


def row_message_without_kind(env: Env) -> None:
    resps = _publish(env, pb.PublishRequest())
    (r,) = [r for r in resps if r.message_index == 1]
    assert r.errors[0].code == INVALID.value[0] and "expected `raw`, `packets` or `frame`" in r.errors[0].message


def row_message_oversized(env: Env) -> None:
    big = np.zeros((MAX_FRAMES, 1, 28, 28), np.uint8).tobytes() * 30  # ~1.5 MiB > 1 MiB limit
    e = _status(lambda: _publish(env, _raw(data=big, dtype="uint8", shape=[MAX_FRAMES * 30, 1, 28, 28])))
    assert e.code() == EXHAUSTED


def row_message_second_open(env: Env) -> None:
    resps = _publish(env, pb.PublishRequest(open=pb.PublishOpen(channel="digits")))
    (r,) = [r for r in resps if r.message_index == 1]
    assert r.errors[0].code == INVALID.value[0]


# ---------------------------------------------------------------------------------- rows: compact frames

def _frames(env: Env, *wire: bytes, lead: bytes | None = None,
            index: int | None = None) -> list[pb.PublishResponse]:
    """A Publish stream of compact frames (implicit numbers), after one full packet when lead."""
    reqs = [pb.PublishRequest(open=pb.PublishOpen(channel="digits"))]
    if lead is not None:
        reqs.append(pb.PublishRequest(packets=pb.Packets(packets=[lead])))
    reqs += [pb.PublishRequest(frame=w) for w in wire]
    if index is not None:
        reqs[-1].message_index = index
    resps = list(env.stub().Publish(iter(reqs), metadata=_md(GOOD), timeout=30))
    assert resps[0].compact_frames
    return resps[1:]


def _compact_pair(env: Env) -> tuple[bytes, bytes]:
    from latentwire.codec.coding.compact import CompactWriter

    two = digits(2)
    lead, second = (env.codec.encode(two[i : i + 1]) for i in range(2))
    writer = CompactWriter()
    writer.pack(lead)
    return lead, writer.pack(second)


def row_frame_without_context(env: Env) -> None:
    _, frame = _compact_pair(env)
    (r,) = _frames(env, frame)
    assert r.rejected == 1 and r.errors[0].code == INVALID.value[0]
    assert "MissingStreamContext" in r.errors[0].message and "full packet first" in r.errors[0].message


def row_frame_altered(env: Env) -> None:
    lead, frame = _compact_pair(env)
    bad = bytearray(frame)
    bad[-3] ^= 0x04
    first, r = _frames(env, bytes(bad), lead=lead)
    env.allowed_new = first.accepted
    assert r.rejected == 1 and "ChecksumMismatch" in r.errors[0].message


def row_frame_wrong_numbers(env: Env) -> None:
    lead, frame = _compact_pair(env)
    first, r = _frames(env, frame, lead=lead, index=9)
    env.allowed_new = first.accepted
    assert r.message_index == 1 and r.rejected == 1 and "implicit message_index 1" in r.errors[0].message


# ---------------------------------------------------------------------------------- rows: Publish stream

def row_publish_first_not_open(env: Env) -> None:
    e = _status(lambda: list(env.stub().Publish(iter([_raw(np.zeros((1, 1, 28, 28), np.uint8))]),
                                                metadata=_md(GOOD))))
    assert e.code() == INVALID and "open" in e.details()


def row_publish_unknown_channel(env: Env) -> None:
    e = _status(lambda: _publish(env, channel="nope"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "digits" in e.details()


def row_publish_empty_channel(env: Env) -> None:
    assert _status(lambda: _publish(env, channel="")).code() == INVALID


def row_publish_bad_quality(env: Env) -> None:
    e = _status(lambda: _publish(env, open_=pb.PublishOpen(channel="digits", quality=99)))
    assert e.code() == INVALID and "quality" in e.details()


def row_publish_no_token(env: Env) -> None:
    assert _status(lambda: _publish(env, token=None)).code() == grpc.StatusCode.UNAUTHENTICATED


def row_publish_unknown_token(env: Env) -> None:
    e = _status(lambda: _publish(env, token="not-a-known-token-123"))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "not-a-known" not in e.details()


def row_publish_malformed_authorization(env: Env) -> None:
    e = _status(lambda: list(env.stub().Publish(iter([pb.PublishRequest(open=pb.PublishOpen(channel="digits"))]),
                                                metadata=(("authorization", f"Basic {GOOD}"),))))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


def row_publish_without_permission(env: Env) -> None:
    e = _status(lambda: _publish(env, token=VIEWER))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "viewer" in e.details()


def row_publish_other_channels_token(env: Env) -> None:
    assert _status(lambda: _publish(env, token=OTHER)).code() == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------------------------- rows: Subscribe

def _sub(env: Env, req: pb.SubscribeRequest, token: str | None = GOOD) -> grpc.RpcError:
    return _status(lambda: next(env.stub().Subscribe(req, metadata=_md(token), timeout=10)))


def row_subscribe_unknown_channel(env: Env) -> None:
    assert _sub(env, pb.SubscribeRequest(channel="nope")).code() == grpc.StatusCode.NOT_FOUND


def row_subscribe_empty_channel(env: Env) -> None:
    assert _sub(env, pb.SubscribeRequest(channel="")).code() == INVALID


def row_subscribe_from_seq_beyond_end(env: Env) -> None:
    e = _sub(env, pb.SubscribeRequest(channel="digits", from_seq=2**63))
    assert e.code() == grpc.StatusCode.OUT_OF_RANGE


def row_subscribe_from_seq_and_latest(env: Env) -> None:
    assert _sub(env, pb.SubscribeRequest(channel="digits", from_seq=0, latest=True)).code() == INVALID


def row_subscribe_no_token(env: Env) -> None:
    assert _sub(env, pb.SubscribeRequest(channel="digits"), None).code() == grpc.StatusCode.UNAUTHENTICATED


def row_subscribe_without_permission(env: Env) -> None:
    e = _sub(env, pb.SubscribeRequest(channel="digits"), OTHER)
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED


def row_subscribe_huge_max_packets(env: Env) -> None:
    """max_packets_per_response = 2^32-1 must not make the server read the whole log at once:
    it is capped by the server's subscribe_packets_per_response."""
    call = env.stub().Subscribe(pb.SubscribeRequest(channel="digits", from_seq=0,
                                                    max_packets_per_response=2**32 - 1), metadata=_md(GOOD))
    first = next(call)
    call.cancel()
    cap = env.server.config.subscribe_packets_per_response  # type: ignore[attr-defined]
    assert 0 < len(first.packets) <= cap and first.ByteSize() <= MAX_MESSAGE


# ---------------------------------------------------------------------------------- rows: models and raw bytes

def row_get_model_short_id(env: Env) -> None:
    e = _status(lambda: env.stub().GetModel(pb.GetModelRequest(model_id="abc"), metadata=_md(GOOD)))
    assert e.code() == INVALID


def row_get_model_unknown_id(env: Env) -> None:
    e = _status(lambda: env.stub().GetModel(pb.GetModelRequest(model_id="00" * 32), metadata=_md(GOOD)))
    assert e.code() == grpc.StatusCode.NOT_FOUND


def row_get_model_no_token(env: Env) -> None:
    e = _status(lambda: env.stub().GetModel(pb.GetModelRequest(model_id=env.codec.model_id)))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


def row_list_models_unknown_token(env: Env) -> None:
    e = _status(lambda: env.stub().ListModels(pb.ListModelsRequest(), metadata=_md("not-a-known-token-123")))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


def row_list_channels_no_token(env: Env) -> None:
    e = _status(lambda: env.stub().ListChannels(pb.ListChannelsRequest()))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


def row_download_unknown_model(env: Env) -> None:
    e = _status(lambda: list(env.stub().DownloadBundle(pb.DownloadBundleRequest(model_id="ff" * 32),
                                                       metadata=_md(GOOD))))
    assert e.code() == grpc.StatusCode.NOT_FOUND


def row_download_no_token(env: Env) -> None:
    e = _status(lambda: list(env.stub().DownloadBundle(pb.DownloadBundleRequest(model_id=env.codec.model_id))))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED


def row_garbage_protobuf(env: Env) -> None:
    """Bytes that are not a protobuf message at all (a hand-rolled client)."""
    ch = grpc.insecure_channel(env.target)
    call = ch.unary_unary("/latentwire.v1.Latentwire/GetModel", request_serializer=None,
                          response_deserializer=None)
    e = _status(lambda: call(b"\xff\xff\xff\xff\x0f", metadata=_md(GOOD), timeout=10))
    assert e.code() in (grpc.StatusCode.INTERNAL, INVALID)
    ch.close()


def row_decoder_altered_in_transit(env: Env) -> None:
    """The served decoder.onnx changes after the server announced its sha256: the client refuses
    the download and caches nothing."""
    dec = env.bundle / "decoder.onnx"
    original = dec.read_bytes()
    try:
        dec.write_bytes(original[:-10] + bytes(b ^ 0x5A for b in original[-10:]))
        cache = env.tmp / "fresh-cache"
        with pytest.raises(BundleError, match="decoder.onnx"):
            env.healthy.fetch_decoder(env.codec.model_id, cache_dir=cache)
        assert not any(cache.iterdir()), "nothing unverified is cached"
    finally:
        dec.write_bytes(original)


# ---------------------------------------------------------------------------------- rows: manifest parser

def row_manifest_not_json(env: Env) -> None:
    d = _bundle_copy(env, "notjson")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        Bundle.load(d)


def row_manifest_not_an_object(env: Env) -> None:
    d = _bundle_copy(env, "list")
    (d / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(BundleError, match="JSON object"):
        Bundle.load(d)


def row_manifest_missing_field(env: Env) -> None:
    d = _bundle_copy(env, "missing")
    raw = read_manifest(d)
    del raw["latent"]
    write_manifest(d, raw)
    with pytest.raises(BundleError, match="required field"):
        Bundle.load(d)


def row_manifest_wrong_types(env: Env) -> None:
    d = _bundle_copy(env, "types")
    raw = read_manifest(d)
    raw["input"]["sample_shape"] = "1x28x28"
    write_manifest(d, raw)
    # caught by the manifest's type checks before anything is hashed
    with pytest.raises(BundleError, match="sample_shape must be a list of non-negative integers"):
        Bundle.load(d)


def row_manifest_wrong_format_version(env: Env) -> None:
    d = _bundle_copy(env, "version")
    raw = read_manifest(d)
    raw["format_version"] = 99
    write_manifest(d, raw)
    with pytest.raises(BundleError, match="format_version 99"):
        Bundle.load(d)


def row_manifest_model_id_mismatch(env: Env) -> None:
    d = _bundle_copy(env, "id")
    raw = read_manifest(d)
    raw["model_id"] = "00" * 32
    write_manifest(d, raw)
    with pytest.raises(BundleError, match="does not match the bundle's content"):
        Bundle.load(d)


def row_manifest_decoder_hash_mismatch(env: Env) -> None:
    """A decoder whose hash does not match its id: refused before onnxruntime sees it."""
    d = _bundle_copy(env, "decoder")
    with open(d / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="decoder.onnx does not match its hash"):
        Codec.load(d)


ROWS = {name[4:]: fn for name, fn in sorted(globals().items()) if name.startswith("row_")}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_input(env: Env, row: str) -> None:
    ROWS[row](env)
