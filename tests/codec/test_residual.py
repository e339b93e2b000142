"""Residual layer on real digits: the max-error bound, lossless D=0, integer tables for any D, and the
cross-provider hazard (float drift at the receiver) staying detectable and desync-free."""

from __future__ import annotations

import numpy as np
import pytest

from latentwire.codec.coding import coder as C
from latentwire.codec.coding.residual import (
    ContextSpec,
    ResidualModel,
    choose_shifts,
    prediction,
    quantize_residual,
    reconstruct,
    reconstruction_crc,
)
from latentwire.codec.errors import BundleError, InputError
from latentwire.codec.sources import load_mnist, sample_data_root


@pytest.fixture(scope="module")
def setup():
    folder = sample_data_root() / "mnist"
    train = load_mnist(folder, split="train").samples
    test = load_mnist(folder, split="test").samples[:64]
    rng = np.random.default_rng(0)

    def predictor(x: np.ndarray) -> np.ndarray:
        """A continuous, imperfect 'decoder output' in raw units: real digit blurred toward the
        mean, plus noise (what an autoencoder's x_hat looks like after to_raw_float)."""
        mean = train.astype(np.float32).mean(axis=0)
        f = 0.6 * x.astype(np.float32) + 0.4 * mean + rng.normal(0, 8, x.shape).astype(np.float32)
        return np.clip(f, 0, 255).astype(np.float32)

    model = ResidualModel.fit(ContextSpec(0, 255), train, predictor(train))
    return model, test, predictor(test)


@pytest.mark.parametrize("max_error", [0, 1, 3, 10])
def test_max_error_bound_on_real_digits(setup, max_error: int) -> None:
    model, x, f = setup
    enc = C.StreamEncoder()
    info = model.write(enc, x, f, max_error)
    payload = enc.finish()
    recon = model.read(C.StreamDecoder(payload), f, max_error)
    assert np.array_equal(recon, info.recon)
    err = np.abs(recon.astype(np.int64) - x.astype(np.int64))
    assert err.max() <= max_error
    if max_error == 0:
        assert np.array_equal(recon, x)
    else:
        assert err.max() == max_error  # the bound is tight on real data, not vacuous
    assert reconstruction_crc(recon) == info.crc


def test_bigger_max_error_costs_fewer_bytes(setup) -> None:
    model, x, f = setup
    sizes = []
    for d in (0, 1, 3, 10, 32):
        enc = C.StreamEncoder()
        model.write(enc, x, f, d)
        sizes.append(len(enc.finish()))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[-1]


def test_quantizer_arithmetic_exhaustive() -> None:
    x = np.arange(0, 256)
    for d in (0, 1, 2, 5, 12, 40):
        for p in (0, 1, 100, 254, 255):
            pred = np.full_like(x, p)
            q = quantize_residual(x, pred, d)
            rec = reconstruct(pred, q, d, 0, 255)
            assert np.abs(rec - x).max() <= d
            assert rec.min() >= 0 and rec.max() <= 255
    with pytest.raises(InputError):
        quantize_residual(x, x, -1)


def test_tables_derive_for_any_d_with_integers_and_are_cached(setup) -> None:
    model, _, _ = setup
    for d in (0, 2, 7, 100, 1000):
        ts = model.tables(d)
        assert len(ts) == model.spec.n_contexts + 1
        for t in ts:
            assert int(t.freqs.sum()) == 1 << 16 and t.freqs.min() >= 1
        assert model.tables(d) is ts
    kmax, counts = model.bin_counts(5)
    assert counts.sum() == model.histograms.sum()  # binning partitions the histogram exactly
    clone = ResidualModel.from_json_obj(model.to_json_obj())
    assert all(a == b for a, b in zip(clone.tables(5), model.tables(5), strict=True))
    with pytest.raises(BundleError):
        ResidualModel.from_json_obj({"context": {}, "radius": 1})


def test_guard_bands_keep_contexts_stable_under_float_drift(setup) -> None:
    """The receiver's decoder output drifts by less than the guard (another batch size or provider):
    no desync, error <= D+1 where rounding flipped, and the reconstruction CRC tells which frames."""
    model, x, f = setup
    spec = model.spec
    # force trouble: put many samples right next to a bucket edge's rounding boundary (k*16 - 0.5)
    f = f.copy()
    edge = (np.round(f / 16) * 16 - 0.5 + 0.005).astype(np.float32)
    sel = np.random.default_rng(1).random(f.shape) < 0.003
    f[sel] = np.clip(edge[sel], 0, 255)
    shifts, at_risk = choose_shifts(spec, f)
    assert (shifts > 0).sum() >= 5, "edge samples must push frames onto other bucket grids"
    # frames where no grid is safe are flagged (a sender can report them or send them at q0)
    ok = ~at_risk
    assert ok.sum() >= 0.8 * len(ok)
    x, f = x[ok], f[ok]
    d = 3
    enc = C.StreamEncoder()
    info = model.write(enc, x, f, d)
    payload = enc.finish()
    drift = np.random.default_rng(2).uniform(-0.008, 0.008, f.shape).astype(np.float32)
    recon = model.read(C.StreamDecoder(payload), np.clip(f + drift, 0, 255), d)
    err = np.abs(recon.astype(np.int64) - x.astype(np.int64))
    assert err.max() <= d + 1  # no desync: every sample within D+1
    flipped = prediction(f + drift, 0, 255) != prediction(f, 0, 255)
    assert flipped.any()
    assert not np.array_equal(recon, info.recon) and reconstruction_crc(recon) != info.crc  # detectable
    # without guard bands (one bucket grid) the same drift lands samples in other contexts
    lone = ContextSpec(0, 255, n_shifts=1)
    p0, p1 = prediction(f, 0, 255), prediction(f + drift, 0, 255)
    assert (lone.context(p0) != lone.context(p1)).any()


def test_input_validation(setup) -> None:
    model, x, f = setup
    with pytest.raises(InputError):
        model.encode_residual(x, f[:, :, :10], 1)
    with pytest.raises(InputError):
        model.encode_residual(x.astype(np.float32) + 0.5, f, 1)
    with pytest.raises(InputError):
        model.encode_residual(x.astype(np.int64) + 300, f, 1)
