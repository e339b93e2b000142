"""Property-based fuzzing (hypothesis) of the frame and manifest parsers and of encode -> decode.

tests/test_bitstream.py already fuzzes read_packet on arbitrary and mutated bytes; this file adds
what reaches further: packets whose CRC is recomputed after the mutation (so the payload decoder,
not the checksum, meets the damage), streams of packets back to back, the manifest parser on
arbitrary JSON, and round trips on real and random frames at every quality level. The contract in
every case: a result or one of the documented exceptions (codec/errors.py), nothing else, and no
hang (each example has a deadline). benchmarks/fuzz.py runs the same targets for >= 100,000 inputs.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentwire.codec.bundle import Bundle, Manifest, QualityLevel, read_manifest
from latentwire.codec.codec import Codec, default_bundle_path
from latentwire.codec.coding import bitstream as B
from latentwire.codec.errors import BitstreamError, BundleError, InputError


def fast(n: int) -> settings:
    """n examples, each with a 2 s deadline (a hang fails the test), no slowness health checks."""
    return settings(max_examples=n, deadline=2000,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load("default", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    from latentwire.codec.sources import load_source, sample_data_root

    return load_source(sample_data_root() / "mnist").samples[:64]


def _recrc(pkt: bytes | bytearray) -> bytes:
    body = bytes(pkt[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


# ------------------------------------------------------------------------------ frame parser

header_fields = st.fixed_dictionaries({
    "quality": st.integers(0, 254),
    "sample_shape": st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=3).filter(
        lambda s: int(np.prod(s, dtype=object)) <= 2**31 - 1),
    "count": st.integers(1, B.DEFAULT_MAX_COUNT),
    "payload": st.binary(max_size=64),
    "residual": st.booleans(),
    "recon_crc": st.none() | st.integers(0, 2**32 - 1),
})


@fast(300)
@given(header_fields)
def test_write_read_round_trip_any_valid_header(fields: dict) -> None:
    pkt = B.write_packet(model_id="ab" * 32, **fields)
    h, payload = B.read_packet(pkt, "ab" * 32)
    assert (h.quality, h.sample_shape, h.count, bytes(payload), h.has_residual, h.recon_crc) == (
        fields["quality"], tuple(fields["sample_shape"]), fields["count"], fields["payload"], fields["residual"],
        fields["recon_crc"])
    assert h.packet_length == len(pkt)


@fast(300)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4), st.binary(max_size=12))
def test_iter_packets_on_streams(payloads: list[bytes], tail: bytes) -> None:
    """A .lw stream: whole packets come out in order with their exact bytes; a damaged tail
    raises a BitstreamError at its position and never yields a wrong packet."""
    pkts = [B.write_packet(model_id="cd" * 32, quality=1, sample_shape=(3,), count=1, payload=p) for p in payloads]
    stream = b"".join(pkts) + tail
    got = []
    try:
        for _, raw in B.iter_packets(stream):
            got.append(bytes(raw))
    except BitstreamError:
        assert tail, "only the damaged tail may fail"
    assert got[: len(pkts)] == pkts
    assert all(g in pkts or tail.startswith(g[:2]) for g in got)


# ------------------------------------------------------------------------------ payload decoder

def _mutated(codec: Codec, samples: np.ndarray, data: st.DataObject) -> bytes:
    n = data.draw(st.integers(1, 8), label="frames")
    q = data.draw(st.sampled_from([0, 2, 5, 10]), label="quality")
    pkt = bytearray(codec.encode(samples[:n], quality=q))
    header_len = B.peek_header(bytes(pkt)).header_length
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        where = data.draw(st.sampled_from(["payload", "header", "any"]))
        lo, hi = {"payload": (header_len, len(pkt) - 5), "header": (4, header_len - 1),
                  "any": (0, len(pkt) - 5)}[where]
        if hi < lo:
            continue
        pos = data.draw(st.integers(lo, hi))
        pkt[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans(), label="truncate payload"):
        cut = data.draw(st.integers(0, 8))
        del pkt[max(header_len, len(pkt) - 4 - cut) : len(pkt) - 4]
    return _recrc(pkt)  # a correct CRC: the decoder itself must cope with the damage


@fast(150)
@given(st.data())
def test_decode_of_damaged_packets_with_valid_crc(codec: Codec, samples: np.ndarray, data: st.DataObject) -> None:
    pkt = _mutated(codec, samples, data)
    try:
        out = codec.decode(pkt)
    except BitstreamError:
        return
    h = B.peek_header(pkt)
    assert out.shape == (h.count, *codec.sample_shape) and out.dtype == codec.raw_dtype


@fast(150)
@given(st.binary(max_size=200), st.integers(1, 16), st.sampled_from([0, 2, 5, 10]))
def test_decode_of_random_payloads(codec: Codec, payload: bytes, count: int, quality: int) -> None:
    """A forged, well-framed packet of this model with arbitrary payload bytes."""
    residual = codec.qualities[quality].max_error is not None
    pkt = B.write_packet(model_id=codec.model_id, quality=quality, sample_shape=(1, 28, 28), count=count,
                         payload=payload, residual=residual)
    try:
        out = codec.decode(pkt)
    except BitstreamError:
        return
    assert out.shape == (count, 1, 28, 28) and out.dtype == np.uint8


# ------------------------------------------------------------------------------ round trips

@fast(40)
@given(st.data())
def test_round_trip_bounds(codec: Codec, samples: np.ndarray, data: st.DataObject) -> None:
    """Real digits, random noise or a mix: every residual level keeps |x - decoded| <= max_error,
    lossless is exact, the latent-only levels keep shape and dtype; the header says what was sent."""
    n = data.draw(st.integers(1, 12), label="frames")
    kind = data.draw(st.sampled_from(["digits", "noise", "mixed", "constant"]), label="kind")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = samples[rng.integers(0, len(samples), n)].copy()
    if kind == "noise":
        x = rng.integers(0, 256, x.shape, dtype=np.uint8)
    elif kind == "mixed":
        mask = rng.random(x.shape) < 0.2
        x[mask] = rng.integers(0, 256, int(mask.sum()), dtype=np.uint8)
    elif kind == "constant":
        x[:] = rng.integers(0, 256)
    custom = data.draw(st.none() | st.integers(0, 60), label="custom max_error")
    quality = None if custom is not None else data.draw(st.integers(0, len(codec.qualities) - 1), label="quality")
    pkt = codec.encode(x, quality=quality, max_error=custom)
    y = codec.decode(pkt)
    assert y.shape == x.shape and y.dtype == x.dtype
    bound = custom if custom is not None else codec.qualities[quality].max_error
    h = B.peek_header(pkt, codec.model_id)
    assert h.count == n and h.has_residual == (bound is not None)
    if bound is not None:
        assert int(np.abs(x.astype(np.int32) - y.astype(np.int32)).max()) <= bound
    # and the same packet decodes to the same frames in a batch with others
    assert np.array_equal(codec.decode_many([pkt, pkt])[1], y)


@fast(40)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_lossless_fallback_round_trip(codec: Codec, n: int, seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    assert np.array_equal(codec.decode(codec.encode_lossless(x)), x)


@fast(60)
@given(st.sampled_from([np.float32, np.int64, np.uint16, np.int8]), st.integers(0, 3),
       st.sampled_from([(1, 28, 28), (28, 28), (1, 1, 28, 28), (2, 1, 28, 27), (0, 1, 28, 28)]))
def test_encode_refuses_bad_input_cleanly(codec: Codec, dtype, fill: int, shape) -> None:
    x = np.full(shape, [0, 255, 300, -1][fill]).astype(dtype)
    if dtype == np.float32 and fill == 1 and x.size:
        x.flat[0] = np.nan
    try:
        pkt = codec.encode(x)
    except InputError:
        return
    assert codec.decode(pkt).shape == x.shape


# ------------------------------------------------------------------------------ manifest parser

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def real_manifest() -> dict:
    return read_manifest(default_bundle_path())


def _set_path(obj: dict, path: list[str], value: object) -> None:
    for k in path[:-1]:
        nxt = obj.get(k)
        if not isinstance(nxt, dict):
            return
        obj = nxt
    obj[path[-1]] = value


MANIFEST_PATHS = [["format_version"], ["family"], ["config"], ["input"], ["input", "sample_shape"],
                  ["input", "normalization"], ["input", "normalization", "scale"],
                  ["input", "normalization", "raw_dtype"], ["latent"], ["latent", "shape"], ["latent", "stride"],
                  ["latent", "channels"], ["latent", "channel_axis"], ["quality_levels"], ["model_id"]]


@fast(150)
@given(st.data())
def test_manifest_parser_on_mutated_manifests(real_manifest: dict, data: st.DataObject) -> None:
    """The real manifest with fields replaced by arbitrary JSON values (or removed): a Manifest or
    BundleError, never another exception."""
    m = json.loads(json.dumps(real_manifest))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(MANIFEST_PATHS))
        if data.draw(st.booleans()):
            _set_path(m, path, data.draw(json_values))
        else:
            parent = m
            for k in path[:-1]:
                parent = parent.get(k) if isinstance(parent.get(k), dict) else {}
            parent.pop(path[-1], None)
    try:
        man = Manifest.from_dict(m)
    except BundleError:
        return  # refused with the one error type the loaders catch
    # accepted: every field the runtime reads came out typed
    assert all(d is None or (type(d) is int and d >= 0) for d in man.sample_shape + man.latent_shape)
    assert all(isinstance(q, QualityLevel) for q in man.quality_levels)
    assert isinstance(man.latent_stride, int) and isinstance(man.channel_axis, int)


@fast(200)
@given(st.binary(max_size=120) | json_values.map(lambda v: json.dumps(v).encode()))
def test_manifest_file_of_any_bytes(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    d = tmp_path_factory.mktemp("m", numbered=True)
    (d / "manifest.json").write_bytes(content)
    try:
        Bundle.load(d, verify=True)
    except BundleError:
        pass
    else:
        raise AssertionError("a bundle without its files cannot load")


def test_tables_of_the_shipped_bundle_are_parsed(codec: Codec) -> None:
    """Sanity for the fuzz targets above: the unmutated inputs are accepted."""
    assert Manifest.from_dict(read_manifest(default_bundle_path())).model_id == codec.model_id
    assert Path(codec.bundle.path).is_dir()


def test_manifest_infinity_in_an_integer_field(real_manifest: dict, tmp_path: Path) -> None:
    m = json.loads(json.dumps(real_manifest))
    m["latent"]["stride"] = float("inf")  # json.loads accepts `Infinity`
    with pytest.raises(BundleError):
        Manifest.from_dict(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))  # writes the non-standard token Infinity
    with pytest.raises(BundleError, match="non-finite"):
        read_manifest(tmp_path)


def test_manifest_shape_of_the_wrong_type(real_manifest: dict) -> None:
    m = json.loads(json.dumps(real_manifest))
    m["input"]["sample_shape"] = ["28", 28]
    with pytest.raises(BundleError, match="sample_shape"):
        Manifest.from_dict(m)


@pytest.mark.parametrize("quality", [0, 5, 10])
def test_a_packet_whose_sample_shape_the_bundle_cannot_take_is_refused(codec: Codec, samples: np.ndarray,
                                                                       quality: int) -> None:
    """Found by the fuzz test above: a header rewritten to two channels (valid CRC) reached the exact
    prediction's reshape. The shape is checked against the bundle before any stage runs, on every path."""
    pkt = codec.encode(samples[:2], quality=quality)
    h, payload = B.read_packet(pkt)
    c, *rest = h.sample_shape
    forged = B.write_packet(model_id=codec.model_id, quality=h.quality, sample_shape=(c + 1, *rest), count=h.count,
                            payload=bytes(payload), residual=h.has_residual, recon_crc=h.recon_crc,
                            exact=h.has_exact)
    with pytest.raises(BitstreamError, match="sample shape"):
        codec.decode(forged)
    assert np.array_equal(codec.decode(pkt).shape, (2, *codec.sample_shape))
