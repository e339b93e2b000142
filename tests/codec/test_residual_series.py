"""Series-context residual coding (codec/coding/residual_series.py) of the shipped ECG bundle's
max-error levels: round trips, a plain-Python reference of every prediction, table id and coder
call, another process decoding the same packets, the fit, and older entropy files."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _no_model import NoModel
from latentwire.codec.bundle import finalize
from latentwire.codec.codec import Codec
from latentwire.codec.coding.coder import StreamDecoder, StreamEncoder
from latentwire.codec.coding.payload import CodingTables
from latentwire.codec.coding.residual import ContextSpec, ResidualModel
from latentwire.codec.coding.residual_adapt import AdaptStage
from latentwire.codec.coding.residual_coding import SERIES_CLASSIC_MAX_ERROR, residual_coding_from_json
from latentwire.codec.coding.residual_modes import classic_coding
from latentwire.codec.coding.residual_series import ResidualSeriesContext, SeriesLevel, walk
from latentwire.codec.coding.residual_series_fit import activities, fit, simulate
from latentwire.codec.errors import BundleError

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
BUNDLE = ASSETS / "ecg-conv1d"
MAX_ERRORS = (0, 1, 2, 4)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(BUNDLE, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    with np.load(ASSETS / "ecg_heldout_sample.npz") as z:
        return z["samples"][:4]


def _series(codec: Codec) -> ResidualSeriesContext:
    coding = codec.tables.residual_coding
    assert isinstance(coding, ResidualSeriesContext)
    return coding


def _synthetic(n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ECG-like (N, 2, T) counts and a prediction whose error comes in runs, as the model's does."""
    rng = np.random.default_rng(seed)
    base = 1000 + np.cumsum(rng.integers(-4, 5, (n, 2, length)), axis=-1)
    err = np.zeros(base.shape, dtype=np.int64)
    for t in range(1, length):
        err[..., t] = (3 * err[..., t - 1]) // 4 + rng.integers(-6, 7, (n, 2))
    x = np.clip(base + err, 0, 2047)
    return x, np.clip(base, 0, 2047)


def _reference(lv: SeriesLevel, p: np.ndarray, x: np.ndarray, lo: int, hi: int) -> list[tuple[list[int], list[int]]]:
    """Plain Python ints: per coder call, (table ids, q) in the documented order, with the NLMS
    cascade as residual_adapt.py's docstring writes it."""
    n, ch, length = p.shape
    pl, xl = p.tolist(), x.tolist()
    e = [[[0] * length for _ in range(ch)] for _ in range(n)]
    q = [[[0] * length for _ in range(ch)] for _ in range(n)]
    step = 2 * lv.max_error + 1
    # per stage: inputs v[i][c][t] and weights w[i][c][k]
    v = [[[[0] * length for _ in range(ch)] for _ in range(n)] for _ in lv.adapt]
    w = [[[[0] * (st.order + (2 if c else 0)) for c in range(ch)] for _ in range(n)] for st in lv.adapt]
    lim, wlim = 1 << 20, 1 << 24

    def at(a: list[int], t: int) -> int:
        return a[t] if t >= 0 else 0

    def clip(a: int, m: int) -> int:
        return min(max(a, -m), m)

    calls = []
    for t in range(length + ch - 1):
        ids, qs = [], []
        for c in range(ch):
            s = t - c
            if not 0 <= s < length:
                continue
            for i in range(n):
                acc = sum(a * at(e[i][c], s - k) for k, a in enumerate(lv.own[c], start=1))
                if c:
                    acc += lv.cross[c][0] * e[i][c - 1][s] + lv.cross[c][1] * at(e[i][c - 1], s - 1)
                fixed = guess = pl[i][c][s] + acc // (1 << lv.shift)
                phis, fs = [], []
                for j, st in enumerate(lv.adapt):
                    phi = [at(v[j][i][c], s - k) for k in range(1, st.order + 1)]
                    if c:
                        phi += [v[j][i][c - 1][s], at(v[j][i][c - 1], s - 1)]
                    f = sum(a * b for a, b in zip(w[j][i][c], phi, strict=True)) // (1 << 16)
                    phis.append(phi)
                    fs.append(f)
                    guess += f
                act = sum(w * abs(at(q[i][c], s - k)) for k, w in zip(range(1, 5), (2, 1, 1, 1), strict=True))
                if c:
                    act += 2 * abs(q[i][c - 1][s])
                left, right = pl[i][c][max(s - 1, 0)], pl[i][c][min(s + 1, length - 1)]
                act += lv.slope_weight * abs(right - left) // 16
                ids.append(lv.offsets[c] + sum(1 for edge in lv.edges[c] if edge <= act))
                r = xl[i][c][s] - guess
                qv = (abs(r) + lv.max_error) // step * (1 if r >= 0 else -1)
                qs.append(qv)
                q[i][c][s] = qv
                recon = min(max(guess + qv * step, lo), hi)
                e[i][c][s] = recon - pl[i][c][s]
                u = clip(recon - fixed, lim)
                for j, st in enumerate(lv.adapt):
                    v[j][i][c][s] = u
                    err = clip(u - fs[j], lim)
                    energy = sum(a * a for a in phis[j]) + 1
                    w[j][i][c] = [clip(a + st.mu * err * b * 64 // energy, wlim) for a, b in zip(w[j][i][c], phis[j],
                                                                                                strict=True)]
                    u = err
        calls.append((ids, qs))
    return calls


def test_the_shipped_ecg_sample_round_trips_through_series_coding(codec: Codec, windows: np.ndarray) -> None:
    coding = _series(codec)
    assert all(coding.covers(d) for d in MAX_ERRORS)
    for d in MAX_ERRORS:
        packet = codec.encode(windows, max_error=d)
        out = codec.decode(packet)
        assert int(np.abs(out.astype(np.int64) - windows).max()) <= d
        if d == 0:
            assert np.array_equal(out, windows)


def _check_level(lv: SeriesLevel, p: np.ndarray, x: np.ndarray) -> None:
    got: list[tuple[list[int], list[int]]] = []

    def code(ids: np.ndarray, q: np.ndarray | None) -> np.ndarray:
        assert q is not None
        got.append((ids.tolist(), q.tolist()))
        return q

    recon, q = walk(lv, p, x, 0, 2047, code)
    assert got == _reference(lv, p, x, 0, 2047), lv.max_error
    assert int(np.abs(recon - x).max()) <= lv.max_error
    # the fit's vectorised activity is the walk's
    act = activities(q, p, lv.slope_weight)
    luts = lv.class_luts()
    ids = np.concatenate([luts[c].take(np.minimum(act[:, c, t - c], luts[c].size - 1))
                          for t in range(x.shape[2] + 1) for c in range(2) if 0 <= t - c < x.shape[2]])
    assert ids.tolist() == [i for call in got for i in call[0]]
    enc = StreamEncoder()

    def put(ids: np.ndarray, q: np.ndarray | None) -> np.ndarray:
        assert q is not None
        enc.encode(q, ids, lv.tables)
        return q

    walk(lv, p, x, 0, 2047, put)
    dec = StreamDecoder(enc.finish())
    back, _ = walk(lv, p, None, 0, 2047, lambda ids, _q: dec.decode(ids, lv.tables))
    assert np.array_equal(back, recon)


def test_every_prediction_table_id_and_call_matches_a_plain_python_reference(codec: Codec) -> None:
    """The shipped levels and one with every term switched on, on a few short synthetic windows."""
    x, p = _synthetic(3, 40, seed=1)
    levels = [_series(codec).level(d) for d in MAX_ERRORS]
    levels.append(dataclasses.replace(levels[1], own=((40, -9), (33, 5)), cross=((), (7, -3)), slope_weight=8))
    cascade = (AdaptStage(8, 70),), (AdaptStage(3, 900), AdaptStage(2, 1000))  # fast steps: weights move a lot
    levels += [dataclasses.replace(lv, adapt=st) for lv in (levels[0], levels[-1]) for st in cascade]
    for lv in levels:
        _check_level(lv, p, x)


def test_another_process_decodes_the_same(codec: Codec, windows: np.ndarray, tmp_path: Path) -> None:
    packets = {d: codec.encode(windows, max_error=d) for d in MAX_ERRORS}
    for d, pk in packets.items():
        (tmp_path / f"{d}.lw").write_bytes(pk)
    script = ("import sys, numpy as np\nfrom latentwire.codec.codec import Codec\n"
              f"c = Codec.load({str(BUNDLE)!r}, provider='cpu', threads=1)\n"
              f"np.savez(sys.argv[1], **{{str(d): c.decode(open(f'{tmp_path}/{{d}}.lw', 'rb').read()) "
              f"for d in {list(MAX_ERRORS)}}})\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.npz")], check=True, timeout=120)
    with np.load(tmp_path / "out.npz") as z:
        for d, pk in packets.items():
            assert np.array_equal(z[str(d)], codec.decode(pk)), d


def test_the_fit_carries_the_error_where_it_comes_in_runs() -> None:
    x, p = _synthetic(24, 256, seed=2)
    model = ResidualModel.fit(ContextSpec(0, 2047), x[:4], p[:4].astype(np.float32))
    ctx = fit(model, x, p.astype(np.float32), [0, 2])
    for lv in ctx.levels:
        assert lv.own[0][0] > 0 and len(lv.tables) == lv.offsets[-1]
        zero = dataclasses.replace(lv, own=((0,), (0,)), cross=((), (0, 0)))
        assert np.abs(simulate(lv, p, x, 0, 2047)).sum() < np.abs(simulate(zero, p, x, 0, 2047)).sum()
    assert ResidualSeriesContext.from_json_obj(json.loads(json.dumps(ctx.to_json_obj()))) == ctx
    bad = ctx.to_json_obj()
    bad["levels"][0]["edges"] = [[3, 2], []]
    with pytest.raises(BundleError, match="rise"):
        residual_coding_from_json(bad)
    bad = ctx.to_json_obj()
    bad["version"] = 9
    with pytest.raises(BundleError, match="version"):
        residual_coding_from_json(bad)


def test_the_fit_adapts_where_each_window_needs_its_own_predictor() -> None:
    """Windows whose error alternates in some and persists in others: no fixed predictor suits
    both, the NLMS cascade learns each; the fit keeps it at D = 0 (it costs >= 10 % fewer bits), the
    level round-trips, and entropy.json says version 3 (a version-2 reader would drop the stages)."""
    rng = np.random.default_rng(5)
    n, length = 24, 384
    sign = np.where(np.arange(n) % 2, 0.9, -0.9)[:, None]
    err = np.zeros((n, 2, length))
    for t in range(1, length):
        err[..., t] = sign * err[..., t - 1] + rng.normal(0, 6, (n, 2))
    x = np.clip(1023 + np.rint(err), 0, 2047).astype(np.int64)
    p = np.full(x.shape, 1023.0, dtype=np.float32)
    model = ResidualModel.fit(ContextSpec(0, 2047), x[:4], p[:4])
    ctx = fit(model, x, p, [0, 8])
    lossless = ctx.level(0)
    assert lossless.adapt
    fixed = dataclasses.replace(ctx, levels=tuple(dataclasses.replace(lv, adapt=()) for lv in ctx.levels))
    assert ctx.frame_costs(model, x, p, 0)[0].sum() < 0.9 * fixed.frame_costs(model, x, p, 0)[0].sum()
    _check_level(lossless, np.full(x.shape, 1023, dtype=np.int64)[:3, :, :60], x[:3, :, :60])
    # each window's filters are its own: a window walks alike alone and in any batch
    pi = np.full(x.shape, 1023, dtype=np.int64)
    together = simulate(lossless, pi, x, 0, 2047)
    for i in (0, 7, n - 1):
        assert np.array_equal(simulate(lossless, pi[i : i + 1], x[i : i + 1], 0, 2047)[0], together[i])
    assert np.array_equal(simulate(lossless, pi[5:9], x[5:9], 0, 2047), together[5:9])
    obj = json.loads(json.dumps(ctx.to_json_obj()))
    assert obj["version"] == 3 and ResidualSeriesContext.from_json_obj(obj) == ctx
    assert fixed.to_json_obj()["version"] == 1
    obj["version"] = 2
    with pytest.raises(BundleError, match="version"):
        residual_coding_from_json(obj)
    obj["version"] = 3
    obj["levels"][0]["adapt"] = [[0, 70]]
    with pytest.raises(BundleError, match="order"):
        residual_coding_from_json(obj)


def test_an_entropy_file_without_series_coding_still_codes_with_its_tables(codec: Codec, windows: np.ndarray,
                                                                          tmp_path: Path) -> None:
    """The bundle's previous-sample tables stay in entropy.json: without the section (an older
    file) the same bundle codes its max errors with them, and the packets differ."""
    old_dir = tmp_path / "ecg-old"
    shutil.copytree(BUNDLE, old_dir)
    tables = CodingTables.load(BUNDLE / "entropy.json")
    assert tables.residual_context is not None
    (old_dir / "entropy.json").write_bytes(dataclasses.replace(tables, residual_coding=None).dumps())
    finalize(old_dir)
    old = Codec.load(old_dir, provider="cpu", threads=1)
    assert old.tables.residual_coding is None and old.model_id != codec.model_id
    for d in (0, 2):
        packet = old.encode(windows, max_error=d)
        assert int(np.abs(old.decode(packet).astype(np.int64) - windows).max()) <= d
        assert len(packet) > len(codec.encode(windows, max_error=d))


# ------------------------------------------------------------------ classical windows (no model)

def _classic(codec: Codec) -> ResidualSeriesContext:
    classic = _series(codec).classic
    assert classic is not None and classic.model_free, "re-run python -m benchmarks.train_bundles classic ecg"
    return classic


def test_classical_levels_walk_the_raw_signal_as_the_plain_python_reference(codec: Codec) -> None:
    """The classical levels are the same walk with p the raw range's midpoint: every prediction,
    table id and call as the reference computes them, on the shipped levels."""
    classic = _classic(codec)
    x, _ = _synthetic(3, 40, seed=3)
    assert classic.midpoint == 1023
    for d in MAX_ERRORS:
        _check_level(classic.level(d), np.full(x.shape, classic.midpoint, dtype=np.int64), x)


def test_classical_windows_round_trip_without_the_model(codec: Codec, windows: np.ndarray) -> None:
    """Forced classical: lossless bit-exact and every max error kept, decoded by a codec whose
    decoder and exact network refuse to run; FLAG_MODES with FLAG_RESIDUAL is set."""
    blind = Codec.load(BUNDLE, provider="cpu", threads=1)
    blind.decoder = NoModel("a classical window")  # type: ignore[assignment]
    blind.exact = NoModel("a classical window")  # type: ignore[assignment]
    for d in MAX_ERRORS:
        packet = codec.encode(windows, max_error=d, residual_mode="classic")
        h = codec.header(packet)
        assert h.has_modes and h.has_residual
        out = blind.decode(packet)
        assert int(np.abs(out.astype(np.int64) - windows).max()) <= d
        if d == 0:
            assert np.array_equal(out, windows)


def test_each_window_takes_the_mode_of_lower_rate_distortion_cost(codec: Codec, windows: np.ndarray) -> None:
    """series_modes compares, per window, latent bits + the latent mode's residual bits + weighted
    squared error with the classical residual's (frame_costs: bits the coder then spends, to within
    its flush, and the reconstruction's error), at every packet size; at D = 0 that is bytes alone
    and the auto packet is no larger than either forced one; windows decode as each mode codes
    them alone."""
    from latentwire.codec.coding.payload import latent_frame_bits
    from latentwire.codec.coding.residual_classic import MODE_CLASSIC, MODE_LATENT
    from latentwire.codec.residual_levels import rd_weight, series_modes

    noise = np.clip(windows[:1] + np.random.default_rng(4).integers(-300, 301, windows[:1].shape), 0, 2047)
    frames = np.concatenate([windows, noise]).astype(windows.dtype)
    coding, classic, model = _series(codec), _classic(codec), codec.tables.residual
    assert model is not None
    for d in (0, 2):
        q, bound, grid = codec._level(None, d)
        symbols = codec.quantize_latents(codec._encode_model(codec.normalization.to_model(frames)), grid)
        assert isinstance(symbols, np.ndarray)
        pred = codec._residual_prediction(symbols, grid, frames.shape[1:])
        bits, sse = coding.frame_costs(model, frames, pred, d)
        lat = (latent_frame_bits(codec.tables, symbols, codec.manifest.channel_axis, grid.step, grid.level)
               + bits + rd_weight(d) * sse)
        alone, alone_sse = classic.frame_costs(model, frames, np.zeros(frames.shape, np.float32), d)
        modes = series_modes(codec, frames, symbols, pred, d, grid)
        assert modes.tolist() == np.where(alone + rd_weight(d) * alone_sse <= lat, MODE_CLASSIC, MODE_LATENT).tolist()
        enc = StreamEncoder()
        info = classic.write(enc, model, frames, np.zeros(frames.shape, np.float32), d)
        assert abs(8 * len(enc.finish()) - alone.sum()) <= 64
        err = (info.recon.astype(np.int64) - frames).reshape(len(frames), -1)
        assert alone_sse.tolist() == (err * err).sum(axis=1).tolist()
        auto = codec.encode(frames, max_error=d)
        forced = {m: codec.encode(frames, max_error=d, residual_mode=m) for m in ("latent", "classic")}
        if d == 0:
            assert rd_weight(0) * alone_sse.sum() == 0 and len(auto) <= min(len(p) for p in forced.values())
        out = codec.decode(auto)
        assert int(np.abs(out.astype(np.int64) - frames).max()) <= d
        for i, m in enumerate(modes):
            one = codec.encode(frames[i : i + 1], max_error=d, residual_mode="classic" if m else "latent")
            assert np.array_equal(out[i : i + 1], codec.decode(one))
    assert len(set(modes.tolist())) == 2, "both modes exercised (the noisy window goes classical)"


def test_classical_and_adaptive_levels_are_versioned_in_entropy_json(codec: Codec) -> None:
    """Version 2 of series-context holds ``classic``, version 3 adaptive stages (the shipped file);
    a version that disagrees with the content is refused (so an older latentwire refuses the new
    bundle), classical levels must use no model, and the shipped file writes back to its own bytes."""
    data = (BUNDLE / "entropy.json").read_bytes()
    assert codec.tables.dumps() == data
    obj = json.loads(data)["residual_coding"]
    # classical levels up to SERIES_CLASSIC_MAX_ERROR only (beyond it a classical window buys bytes with PRD)
    assert obj["version"] == 3 and [lv["max_error"] for lv in obj["classic"]["levels"]] == [
        lv["max_error"] for lv in obj["levels"] if lv["max_error"] <= SERIES_CLASSIC_MAX_ERROR]
    assert "adapt" in obj["levels"][0] and "adapt" in obj["classic"]["levels"][0]  # lossless adapts, both modes
    assert not _series(codec).classic.covers(12) and classic_coding(_series(codec), 12) is None  # type: ignore[union-attr]
    for version in (1, 2):
        bad = json.loads(json.dumps(obj))
        bad["version"] = version
        with pytest.raises(BundleError, match="version"):
            residual_coding_from_json(bad)
    coding = _series(codec)
    with pytest.raises(BundleError, match="no model"):
        dataclasses.replace(coding, classic=dataclasses.replace(_classic(codec), model_free=False))
    fixed = tuple(dataclasses.replace(lv, adapt=()) for lv in coding.levels)
    plain = dataclasses.replace(coding, levels=fixed, classic=None).to_json_obj()
    assert plain["version"] == 1 and "classic" not in plain
    classic = _classic(codec)
    two = dataclasses.replace(coding, levels=fixed, classic=dataclasses.replace(
        classic, levels=tuple(dataclasses.replace(lv, adapt=()) for lv in classic.levels))).to_json_obj()
    assert two["version"] == 2
