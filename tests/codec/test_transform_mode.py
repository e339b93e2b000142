"""Per-window modes of the ECG transform levels (issue 24 part 3; coding/transform_mode.py): each
window goes with its latent + transform residual or as the transform of the raw window alone,
the packet says which (FLAG_MODES, one mode symbol per window), and the receiver follows it.
On the shipped ECG bundle and real held-out MIT-BIH windows (records 117-124, never trained on)."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding import transform as T
from latentwire.codec.coding.compact import StreamContext, compact, expand
from latentwire.codec.coding.payload import CodingTables, PayloadReader, encode_payload, latent_frame_bits
from latentwire.codec.coding.transform_mode import LAMBDA_PER_STEP2
from latentwire.codec.errors import BitstreamError, BundleError, ChecksumMismatch, InputError

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
OLD = Path(__file__).resolve().parents[1] / "data" / "ecg-v4"  # the bundle's tables before the modes, and its packets


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(ASSETS / "ecg-conv1d", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    with np.load(ASSETS / "ecg_heldout_sample.npz") as z:
        return z["samples"]  # (7, 2, 1024) int16, one window per held-out record


def _level(codec: Codec, step: float) -> int:
    return next(q.index for q in codec.qualities if q.transform_step == step)


def _modes(codec: Codec, packet: bytes) -> np.ndarray | None:
    h, payload = bitstream.read_packet(packet)
    return PayloadReader(payload, codec.tables).modes(h.count) if h.has_modes else None


def _synthesis_matrix(m: int, taps: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(2m, m) int64: column k holds coefficient k's taps at rows (2k + offset) mod 2m."""
    s = np.zeros((2 * m, m), dtype=np.int64)
    for k in range(m):
        for offset, tap in taps:
            s[(2 * k + offset) % (2 * m), k] += tap
    return s


def _independent_wavelet_recon(codec: Codec, prediction: np.ndarray, q: np.ndarray, step: float) -> np.ndarray:
    """The receiver's samples computed here as FORMAT.md defines the exact wavelet levels (the
    shipped ECG tables are cdf97-bands-exact): q * rint(step * 2^12), each synthesis level as an
    integer matrix product (numpy's int64 matmul: no rounding), the rounding shift, then
    prediction + v * 2^-12 clipped and rounded; and within 2e-3 of PyWavelets' float inverse."""
    import pywt

    from latentwire.codec.coding import transform_basis as B

    tr = codec.tables.transform
    assert tr is not None and tr.exact
    sizes = [16, 16, 32, 64, 128, 256, 512]
    c = q.astype(np.int64) * round(step * 2**T.EXACT_FRAC_BITS)
    a = c[..., :16]
    start = 16
    for size in sizes[1:]:
        d = c[..., start : start + size]
        start += size
        v = a @ _synthesis_matrix(size, B.SYNTHESIS_LO).T + d @ _synthesis_matrix(size, B.SYNTHESIS_HI).T
        a = (v + (1 << (B.TAP_BITS - 1))) >> B.TAP_BITS
    back = a * 2.0**-T.EXACT_FRAC_BITS
    parts = np.split(q.astype(np.float64) * step, np.cumsum(sizes)[:-1], axis=-1)
    assert np.abs(back - pywt.waverec(parts, "bior4.4", mode="periodization", axis=-1)).max() < 2e-3
    n = codec.normalization
    return np.rint(np.clip(prediction + back, n.raw_min, n.raw_max))


def test_difference_coding_inverts_and_matches_plain_python() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(-5000, 5000, size=(3, 2, 40))
    d = T.difference(q, 16)
    for n in range(3):
        for c in range(2):
            row = [int(v) for v in q[n, c]]
            want = [row[0]] + [row[i] - row[i - 1] for i in range(1, 16)] + row[16:]
            assert d[n, c].tolist() == want
    assert np.array_equal(T.undifference(d, 16), q)
    assert np.array_equal(T.difference(q, 0), q) and np.array_equal(T.undifference(q, 1), q)
    assert T.smooth_span("cdf97", 1024) == 16 and T.smooth_span("dct", 1024) == 0


def test_the_shipped_bundle_has_alone_tables_from_entropy_version_5(codec: Codec) -> None:
    import json

    tr = codec.tables.transform
    assert tr is not None and tr.alone is not None and tr.basis == "cdf97"
    assert tr.alone.prediction == codec.normalization.offset == 1024.0
    obj = json.loads((codec.bundle.path / "entropy.json").read_text())
    assert obj["version"] in (5, 6) and "alone" in obj["transform"]  # 6: it also has residual_coding
    assert T.TransformResidual.from_json_obj(tr.to_json_obj()) == tr
    obj["version"] = 4  # alone tables in a file that claims an older version: refused, not half-read
    obj.pop("residual_coding", None)  # (which version 4 could not hold either)
    with pytest.raises(BundleError, match="version 5"):
        CodingTables.loads(json.dumps(obj))


def test_a_window_forced_to_each_mode_round_trips_with_the_expected_error(codec: Codec, windows: np.ndarray) -> None:
    tr = codec.tables.transform
    assert tr is not None and tr.alone is not None
    step = 16.0
    q = _level(codec, step)
    x = windows.astype(np.float64)
    lat = codec.encode(windows, quality=q, transform_mode="latent")
    alone = codec.encode(windows, quality=q, transform_mode="alone")
    assert not codec.header(lat).has_modes and codec.header(alone).has_modes
    assert _modes(codec, alone).tolist() == [T.MODE_ALONE] * len(windows)
    out_alone = codec.decode(alone)
    # alone: the raw window's wavelet coefficients at the step, against the fixed prediction
    coef = T.wavelet_forward(x - 1024.0)
    expected = _independent_wavelet_recon(codec, np.full(x.shape, 1024.0), np.rint(coef / step), step)
    assert np.array_equal(out_alone, expected.astype(np.int16))
    out_lat = codec.decode(lat)
    for out in (out_alone, out_lat):  # |coefficient error| <= step / 2; CDF 9/7 carries it within ~10 %
        rms = np.sqrt(np.mean((out - x) ** 2))
        assert rms <= 1.1 * step / 2 + 0.5, rms
    # one packet with both modes, window by window as forced
    modes = np.array([0, 1, 1, 0, 1, 0, 0])
    y = codec.encoder.encode(codec.normalization.to_model(windows), validate=False)
    symbols = codec.quantize_latents(y, codec.reference_grid)
    # the latent windows' prediction: the exact network's, as the bundle's exact wavelet levels take it
    raw_float = codec._residual_prediction(symbols, codec.reference_grid, windows.shape[1:])
    prediction = np.where(modes[:, None, None] == 1, 1024.0, raw_float.astype(np.float64))
    qc = np.rint(tr.forward(x - prediction) / step).astype(np.int64)
    idx = np.full(len(x), tr.step_index(step))
    payload, _ = encode_payload(codec.tables, symbols, codec.manifest.channel_axis, transform=(qc, idx), modes=modes)
    mixed = bitstream.write_packet(model_id=codec.model_id, quality=q, sample_shape=windows.shape[1:],
                                   count=len(windows), payload=payload, transform=True, modes=True)
    out = codec.decode(mixed)
    assert _modes(codec, mixed).tolist() == modes.tolist()
    assert np.array_equal(out[modes == 1], expected[modes == 1])
    assert np.array_equal(out[modes == 0], out_lat[modes == 0])  # the latent windows exactly as in the latent packet
    for quality, mode in ((0, "alone"), (q, "wavelet")):  # a mode only where there is one to force, and a known one
        with pytest.raises(InputError, match="transform_mode"):
            codec.encode(windows, quality=quality, transform_mode=mode)


def test_a_damaged_mode_flag_is_caught(codec: Codec, windows: np.ndarray) -> None:
    q = _level(codec, 32.0)
    packet = codec.encode(windows, quality=q, transform_mode="alone")
    plain = codec.encode(windows, quality=q, transform_mode="latent")
    for p in (packet, plain):  # the flags byte flipped either way: the packet's CRC32 fails
        bad = bytearray(p)
        bad[3] ^= bitstream.FLAG_MODES
        with pytest.raises(ChecksumMismatch):
            codec.decode(bytes(bad))
    # forged with a fresh CRC32: the payload no longer parses the way it was written, and the
    # reconstruction CRC (or the payload checks) refuse it instead of returning garbage
    h, payload = bitstream.read_packet(packet)
    for modes, body in ((False, payload), (True, bitstream.read_packet(plain)[1])):
        forged = bitstream.write_packet(model_id=codec.model_id, quality=q, sample_shape=h.sample_shape,
                                        count=h.count, payload=bytes(body), recon_crc=h.recon_crc, transform=True,
                                        modes=modes)
        with pytest.raises(BitstreamError):
            codec.decode(forged)
    # a damaged mode symbol (the payload's first bits), CRC recomputed: caught the same way
    bad = bytearray(packet)
    bad[h.header_length] ^= 0x80
    body = bytes(bad[:-4])
    with pytest.raises(BitstreamError):
        codec.decode(body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF))
    with pytest.raises(BitstreamError, match="modes without a transform"):  # the flag without its level
        bad = bytearray(bitstream.write_packet(model_id=codec.model_id, quality=0, sample_shape=h.sample_shape,
                                               count=1, payload=b"\x00"))
        bad[3] |= bitstream.FLAG_MODES
        body = bytes(bad[:-4])
        bitstream.read_packet(body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF))
    # in a stream of compact frames the flag rides in the marker; a flip fails the frame's check
    ctx = StreamContext.of(codec.header(plain))
    one = codec.encode(windows[:1], quality=q, transform_mode="alone")
    frame = compact(one, ctx)
    assert frame is not None and expand(frame, ctx) == one and codec.header(one).has_modes
    with pytest.raises(ChecksumMismatch):
        expand(bytes([frame[0] ^ 0x04]) + frame[1:], ctx)


def test_old_streams_still_decode_exactly_as_before(codec: Codec, windows: np.ndarray, tmp_path: Path) -> None:
    """tests/data/ecg-v4: the shipped bundle's tables before it had modes (entropy version 4) and
    three packets its transform levels wrote then, with what that latentwire decoded them to."""
    old_dir = tmp_path / "ecg-v4"
    shutil.copytree(ASSETS / "ecg-conv1d", old_dir)
    for name in ("entropy.json", "manifest.json"):
        shutil.copy(OLD / name, old_dir / name)
    old = Codec.load(old_dir, provider="cpu", threads=1)
    assert old.tables.transform is not None and old.tables.transform.alone is None
    assert old.model_id.startswith("3080e867ac7a") and old.model_id != codec.model_id
    packets = [bytes(p) for _, p in bitstream.iter_packets((OLD / "packets.lw").read_bytes())]
    with np.load(OLD / "decoded.npz") as z:
        for packet, name in zip(packets, ("q22", "q18", "prdn5"), strict=True):
            assert not old.header(packet).has_modes
            assert np.array_equal(old.decode(packet), z[name]), name
    # a bundle without alone tables still writes that layout, and cannot be asked for the other
    assert not old.header(old.encode(windows, quality=22)).has_modes
    with pytest.raises(InputError, match="without the latent"):
        old.encode(windows, quality=22, transform_mode="alone")
    # since its wavelet levels became exact (cdf97-bands-exact) the shipped bundle codes the latent mode
    # against the exact network's prediction: another payload, the same fidelity
    tr = codec.tables.transform
    assert tr is not None and tr.exact and not old.tables.transform.exact
    x = windows.astype(np.float64)
    err_new = codec.decode(codec.encode(windows, quality=22, transform_mode="latent")) - x
    err_old = old.decode(old.encode(windows, quality=22)) - x
    rms_new, rms_old = np.sqrt(np.mean(err_new**2)), np.sqrt(np.mean(err_old**2))
    assert abs(rms_new - rms_old) < 0.05 * rms_old, (rms_new, rms_old)


def test_the_decision_picks_the_smaller_mode_on_held_out_windows(codec: Codec, windows: np.ndarray) -> None:
    """Each held-out window coded alone in each mode (whole packets, bytes as sent): the mode the
    sender picks has the lower J = bits + SSE / lambda wherever the two differ by more than the
    coder's rounding; with a PRDN target, the fewer bytes."""
    x = windows.astype(np.float64)
    checked = set()
    for step in (64.0, 16.0, 8.0):
        q = _level(codec, step)
        lam = LAMBDA_PER_STEP2 * step**2
        for i in range(len(windows)):
            one = windows[i : i + 1]
            cost = {}
            for mode in ("latent", "alone"):
                p = codec.encode(one, quality=q, transform_mode=mode)
                cost[mode] = 8 * len(p) + float(((codec.decode(p) - x[i]) ** 2).sum()) / lam
            modes = _modes(codec, codec.encode(one, quality=q))
            picked = "latent" if modes is None else "alone"
            if abs(cost["latent"] - cost["alone"]) > 24:  # 3 bytes: coder tail, the mode bit
                assert picked == min(cost, key=cost.__getitem__), (step, i, cost, picked)
                checked.add(picked)
    assert checked == {"latent", "alone"}  # both ways occurred on these windows
    sizes = {m: len(codec.encode(windows, target_prdn=5.0, transform_mode=m)) for m in ("latent", "alone", "auto")}
    assert sizes["auto"] <= min(sizes["latent"], sizes["alone"]) + 2, sizes
    assert T.prdn_per_frame(windows, codec.decode(codec.encode(windows, target_prdn=5.0))).max() <= 5.0


def test_ideal_bits_track_the_bytes_sent(codec: Codec, windows: np.ndarray) -> None:
    tr = codec.tables.transform
    assert tr is not None
    y = codec.encoder.encode(codec.normalization.to_model(windows), validate=False)
    symbols = codec.quantize_latents(y, codec.reference_grid)
    axis = codec.manifest.channel_axis
    latent = latent_frame_bits(codec.tables, symbols, axis)
    payload, _ = encode_payload(codec.tables, symbols, axis)
    assert abs(latent.sum() - 8 * len(payload)) <= 0.01 * 8 * len(payload) + 32
    coef = tr.forward(windows.astype(np.float64) - 1024.0)
    idx = np.full(len(windows), tr.step_index(16.0))
    qc = tr.quantize(coef, idx)
    modes = np.full(len(windows), T.MODE_ALONE)
    bits = tr.frame_bits(qc, modes)
    payload, _ = encode_payload(codec.tables, symbols, axis, transform=(qc, idx), modes=modes)
    steps_and_modes = len(windows) * (1 + 8)  # one mode bit and a few step-index bits per window, at most
    assert bits.sum() <= 8 * len(payload) + 32 <= bits.sum() + steps_and_modes + 64 + 0.01 * bits.sum()
