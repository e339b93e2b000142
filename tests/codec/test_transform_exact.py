"""The exact wavelet levels (issue 24): a bundle with an exact network reconstructs its CDF 9/7
transform levels from that network's integer prediction and an integer inverse wavelet, so a
transform packet decodes to the same samples on every machine. Checked against the library's
filters and float inverse, an independent plain-Python synthesis, a receiver that cannot run the
float decoder, and packets that ask for more than the integers can hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from _no_model import NoModel
from latentwire.codec.calibrate import calibrate
from latentwire.codec.codec import Codec
from latentwire.codec.coding import transform as T
from latentwire.codec.coding import transform_basis as B
from latentwire.codec.errors import BitstreamError
from latentwire.codec.sources import load_ecg_windows, sample_data_root

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
MITDB = sample_data_root() / "mitdb"


def test_the_integer_taps_are_the_librarys_synthesis_filters() -> None:
    import pywt

    w = pywt.Wavelet(B.WAVELET)
    for taps, rec in ((B.SYNTHESIS_LO, w.rec_lo), (B.SYNTHESIS_HI, w.rec_hi)):
        want = tuple((j - 4, round(t * 2**B.TAP_BITS)) for j, t in enumerate(rec) if t)
        assert taps == want
    # and their placement is PyWavelets' periodized inverse: an impulse at coefficient 3 of 16
    for taps, lo in ((B.SYNTHESIS_LO, True), (B.SYNTHESIS_HI, False)):
        e, z = np.zeros(16), np.zeros(16)
        e[3] = 1.0
        got = pywt.idwt(e, z, B.WAVELET, mode=B.WAVELET_MODE) if lo else pywt.idwt(z, e, B.WAVELET, mode=B.WAVELET_MODE)
        want_f = np.zeros(32)
        for offset, tap in taps:
            want_f[(6 + offset) % 32] += tap / 2**B.TAP_BITS
        assert np.abs(got - want_f).max() < 2**-B.TAP_BITS


def _python_inverse(c: list[int]) -> list[int]:
    """wavelet_inverse_fixed written out in Python integers: each level
    out[n] = sum_k a[k] lo[n - 2k] + d[k] hi[n - 2k] (indices mod the level's length), then
    floor(out / 2**TAP_BITS + 1/2)."""
    sizes = B.wavelet_sizes(len(c))
    lo, hi = dict(B.SYNTHESIS_LO), dict(B.SYNTHESIS_HI)
    a, start = c[: sizes[0]], sizes[0]
    for size in sizes[1:]:
        d, start, m = c[start : start + size], start + size, 2 * size
        out = []
        for n in range(m):
            acc = 0
            for k in range(size):
                for taps, part in ((lo, a), (hi, d)):
                    for offset, tap in taps.items():
                        if (2 * k + offset) % m == n:
                            acc += part[k] * tap
            out.append((acc + (1 << (B.TAP_BITS - 1))) // (1 << B.TAP_BITS))
        a = out
    return a


def test_the_integer_inverse_equals_python_integers_and_follows_the_float_one() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 40, size=(2, 2, 64))
    x[0, 1, 20] += 900  # a QRS-like spike
    c = np.rint(B.wavelet_forward(x) * 2**T.EXACT_FRAC_BITS).astype(np.int64)
    got = B.wavelet_inverse_fixed(c)
    assert got.dtype == np.int64 and got.shape == c.shape
    for i in range(2):
        for ch in range(2):
            assert got[i, ch].tolist() == _python_inverse(c[i, ch].tolist())
    assert np.array_equal(got[1:], B.wavelet_inverse_fixed(c[1:]))  # frames are independent
    flt = B.wavelet_inverse(c / 2**T.EXACT_FRAC_BITS)
    assert np.abs(got / 2**T.EXACT_FRAC_BITS - flt).max() < 1e-3  # raw units
    assert np.abs(got / 2**T.EXACT_FRAC_BITS - x).max() < 1e-3


@pytest.fixture(scope="module")
def exact_ecg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Codec, np.ndarray]:
    """The shipped ECG model (exact network) with wavelet levels calibrated on records 100-101."""
    d = tmp_path_factory.mktemp("ecg-exact-transform") / "bundle"
    shutil.copytree(ASSETS / "ecg-conv1d", d)
    cal = load_ecg_windows(MITDB, records=["100", "101"], window=1024).samples
    calibrate(d, cal, ["none", "t32", "t8"], threads=1, transform_basis="cdf97")
    return Codec.load(d, provider="cpu", threads=1), load_ecg_windows(MITDB, records=["102"], window=1024).samples


def test_exact_wavelet_packets_decode_from_the_exact_prediction_alone(exact_ecg: tuple[Codec, np.ndarray]) -> None:
    codec, windows = exact_ecg
    tr = codec.tables.transform
    assert tr is not None and tr.exact and codec.exact is not None
    blind = Codec.load(codec.bundle.path, provider="cpu", threads=2)
    blind.decoder = NoModel("an exact transform level")  # type: ignore[assignment]
    x = windows[:6]
    grid = codec.reference_grid
    symbols = codec.quantize_latents(codec.encoder.encode(codec.normalization.to_model(x)), grid)
    p = codec._residual_prediction(symbols, grid, x.shape[1:]).astype(np.float64)
    for q in (1, 2):
        for mode in ("latent", "auto"):
            packet = codec.encode(x, quality=q, transform_mode=mode)
            out = blind.decode(packet)
            assert np.array_equal(out, codec.decode(packet))
            if mode == "latent":  # the receiver's samples, recomputed from the packet's integers
                step = codec.qualities[q].transform_step
                assert step is not None
                idx = np.full(len(x), tr.step_index(step))
                coef = tr.quantize(tr.forward(x.astype(np.float64) - p), idx)
                back = B.wavelet_inverse_fixed(coef * round(step * 2**T.EXACT_FRAC_BITS)) / 2**T.EXACT_FRAC_BITS
                want = np.rint(np.clip(p + back, codec.normalization.raw_min, codec.normalization.raw_max))
                assert np.array_equal(out, want.astype(out.dtype))


def test_coefficients_beyond_the_integers_are_refused(exact_ecg: tuple[Codec, np.ndarray]) -> None:
    codec, _ = exact_ecg
    tr = codec.tables.transform
    assert tr is not None
    q = np.zeros((1, 2, 1024), dtype=np.int64)
    q[0, 0, 5] = 1 << 25
    with pytest.raises(BitstreamError, match="corrupt"):
        tr.reconstruct(np.zeros((1, 2, 1024)), q, np.zeros(1, dtype=np.int64), 0, 2047, True)
    with pytest.raises(Exception, match="only the cdf97 basis"):
        T.TransformResidual(tr.bands, tr.steps, tr.step_tables, tr.class_tables, tr.coef_tables, "dct", None, True)
