"""Context-coded max-error residuals (codec/coding/residual_coding.py, residual_colour.py,
residual_value.py) held to an independent implementation.

The reference below recomputes every symbol, table id and coder call of both kinds in plain Python
integers, pixel by pixel, from the module docstrings' rules; the sender's payload must be byte for
byte what the reference's calls write, and the receiver must rebuild the reference's reconstruction,
on the shipped photos and digits, in this process and in another one. Old entropy files must keep
their bytes and their decoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.codec import Codec
from latentwire.codec.coding.coder import StreamDecoder, StreamEncoder
from latentwire.codec.coding.payload import ENTROPY_VERSION_SECTIONS, CodingTables, PayloadReader, encode_payload
from latentwire.codec.coding.residual import ContextSpec, ResidualModel
from latentwire.codec.coding.residual_checker import ResidualCheckerContext
from latentwire.codec.coding.residual_coding import fit_calibrated, residual_coding_from_json, residual_coding_kind
from latentwire.codec.coding.residual_colour import ColourLevel, ResidualColourContext
from latentwire.codec.coding.residual_value import ResidualValueContext
from latentwire.codec.coding.tables import TableSet, table_from_counts
from latentwire.codec.coding.transform import TransformResidual
from latentwire.codec.errors import BundleError
from latentwire.codec.sources import list_images, load_mnist, read_image, sample_data_root

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
MAX_ERRORS = (0, 1, 2, 4)


def _blurred(x: np.ndarray, seed: int) -> np.ndarray:
    """A model-like float prediction of integer images (N, C, H, W): a 3x3 box blur (detail lost at
    edges, as an autoencoder loses it) plus a little noise, clipped to the 8-bit range."""
    f = x.astype(np.float32)
    pad = np.pad(f, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = f.shape[2:]
    blur = sum(pad[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    noise = np.random.default_rng(seed).normal(0, 2, f.shape).astype(np.float32)
    return np.clip(blur + noise, 0, 255).astype(np.float32)


def _photos() -> list[np.ndarray]:
    """The shipped BSDS500 test photos (two landscape, one portrait), each (1, 3, H, W)."""
    return [read_image(p)[None] for p in list_images(sample_data_root() / "bsds")]


@pytest.fixture(scope="module")
def photo_setup() -> tuple[ResidualModel, ResidualColourContext, list[tuple[np.ndarray, np.ndarray]]]:
    """Tables fit on two photos (and a flipped copy of each, for counts), tested on all three and
    an odd-sized cut."""
    photos = _photos()
    fit_x = photos[:2] + [np.ascontiguousarray(p[:, :, ::-1]) for p in photos[:2]]
    fit_f = [_blurred(p, i) for i, p in enumerate(fit_x)]
    model = ResidualModel.fit(ContextSpec(0, 255), np.concatenate([x.reshape(1, 3, -1) for x in fit_x], axis=2),
                              np.concatenate([f.reshape(1, 3, -1) for f in fit_f], axis=2))
    ctx = ResidualColourContext.fit(model, fit_x, fit_f, MAX_ERRORS)
    tests = [(p, _blurred(p, 10 + i)) for i, p in enumerate(photos)]
    cut = np.ascontiguousarray(photos[0][:, :, :37, :53])
    tests.append((cut, _blurred(cut, 20)))
    return model, ctx, tests


# ------------------------------------------------------------------ the independent reference

def _q(e: int, d: int) -> int:
    s = 2 * d + 1
    return (abs(e) + d) // s * (1 if e > 0 else -1 if e < 0 else 0)


def _cls(edges: tuple[int, ...], v: int) -> int:
    return sum(1 for e in edges if e <= v)


def _clip(v: int, c: int) -> int:
    return max(-c, min(c, v))


def _colour_reference(ctx: ResidualColourContext, lv: ColourLevel, x: np.ndarray, f: np.ndarray
                      ) -> tuple[list[tuple[list[int], list[int]]], np.ndarray]:
    """Per coder call (symbols, table ids), and the reconstruction, in plain Python integers."""
    n_f, c, h, w = x.shape
    d, s = lv.max_error, 2 * lv.max_error + 1
    p = np.rint(np.clip(f, 0, 255)).astype(np.int64).tolist()
    xs = x.astype(np.int64).tolist()
    order = [ctx.base_channel] + [ch for ch in range(c) if ch != ctx.base_channel]
    bc, sc = ctx.base_clip, ctx.signed_clip
    nb, nc = len(lv.base_edges) + 1, len(lv.chroma_edges) + 1
    offsets = [0, nb * (2 * bc + 1)]
    for m in range(2, c + 1):
        offsets.append(offsets[-1] + (nc if m == 2 else nc * (2 * sc + 1)))
    q: dict[tuple[int, int, int, int], int] = {}
    k: dict[tuple[int, int, int, int], int] = {}

    def at(table: dict, m: int, n: int, i: int, j: int) -> int:
        return table.get((m, n, i, j), 0) if i >= 0 and j >= 0 else 0

    calls = []
    for t in range(h + w - 2 + c):
        syms: list[int] = []
        ids: list[int] = []
        for m in range(c):
            diag = t - m
            if not 0 <= diag <= h + w - 2:
                continue
            for n in range(n_f):
                for i in range(max(0, diag - w + 1), min(h - 1, diag) + 1):
                    j = diag - i
                    pb = p[n][order[0]][i][j]
                    if m == 0:
                        a, b = at(q, 0, n, i, j - 1), at(q, 0, n, i - 1, j)
                        act = 2 * (abs(a) + abs(b)) + abs(at(q, 0, n, i - 1, j - 1)) + abs(at(q, 0, n, i, j - 2)) \
                            + abs(at(q, 0, n, i - 2, j))
                        sym = _q(xs[n][order[0]][i][j] - pb, d)
                        ids.append(_cls(lv.base_edges, act) * (2 * bc + 1) + _clip(a + b, bc) + bc)
                        q[(0, n, i, j)] = sym
                    else:
                        a, b, ab = at(k, m, n, i, j - 1), at(k, m, n, i - 1, j), at(k, m, n, i - 1, j - 1)
                        if lv.predictor == "median":
                            guess = min(a, b) if ab >= max(a, b) else max(a, b) if ab <= min(a, b) else a + b - ab
                        else:
                            guess = (a + b) // 2
                        wt = lv.model_weight
                        if wt:
                            guess = ((8 - wt) * guess + wt * (p[n][order[m]][i][j] - pb)) // 8
                            act = 2 * (abs(at(q, m, n, i, j - 1)) + abs(at(q, m, n, i - 1, j)) + abs(q[(0, n, i, j)])) \
                                + abs(at(q, m, n, i - 1, j - 1)) + abs(at(q, m, n, i, j - 2)) \
                                + abs(at(q, m, n, i - 2, j))
                        else:
                            act = abs(a - ab) + abs(b - ab)
                        ub = pb + q[(0, n, i, j)] * s
                        sym = _q(xs[n][order[m]][i][j] - ub - guess, d)
                        cl = _cls(lv.chroma_edges, act)
                        if m >= 2:
                            cl = cl * (2 * sc + 1) + _clip(q[(m - 1, n, i, j)], sc) + sc
                        ids.append(offsets[m] + cl)
                        q[(m, n, i, j)] = sym
                        k[(m, n, i, j)] = guess + sym * s
                    syms.append(sym)
        calls.append((syms, ids))
    recon = np.zeros(x.shape, dtype=np.int64)
    for n in range(n_f):
        for i in range(h):
            for j in range(w):
                ub = p[n][order[0]][i][j] + q[(0, n, i, j)] * s
                for m, ch in enumerate(order):
                    recon[n, ch, i, j] = min(255, max(0, ub + (k[(m, n, i, j)] if m else 0)))
    return calls, recon


def _write_calls(calls: list[tuple[list[int], list[int]]], tables: TableSet) -> bytes:
    enc = StreamEncoder()
    for syms, ids in calls:
        enc.encode(np.asarray(syms, dtype=np.int64), np.asarray(ids, dtype=np.int64), tables)
    return enc.finish()


# ------------------------------------------------------------------ colour kind

def test_colour_levels_fit_what_pays(photo_setup) -> None:
    _, ctx, _ = photo_setup
    assert [lv.max_error for lv in ctx.levels] == list(MAX_ERRORS)
    assert ctx.order == (1, 0, 2)  # G first, then R and B as colour differences
    for lv in ctx.levels:
        assert len(lv.tables) == ctx.n_tables(lv) and lv.base_edges and lv.chroma_edges


@pytest.mark.parametrize("max_error", MAX_ERRORS)
def test_colour_payload_is_the_reference_byte_for_byte(photo_setup, max_error: int) -> None:
    model, ctx, tests = photo_setup
    lv = ctx._level(max_error)
    for x, f in tests:
        enc = StreamEncoder()
        info = ctx.write(enc, model, x, f, max_error)
        payload = enc.finish()
        calls, recon = _colour_reference(ctx, lv, x, f)
        assert payload == _write_calls(calls, lv.tables)
        assert np.array_equal(info.recon, recon)
        out = ctx.read(StreamDecoder(payload), model, f, max_error)
        assert np.array_equal(out, recon)
        err = np.abs(out - x.astype(np.int64))
        assert err.max() <= max_error
        if max_error == 0:
            assert np.array_equal(out, x)
        else:
            assert err.max() == max_error  # the bound is tight, not vacuous


def test_colour_reference_covers_both_predictors_and_the_model_weight(photo_setup) -> None:
    """Whatever calibration chose, every predictor rule round-trips against the reference (tables
    borrowed from a fitted level: any tables code any symbols, through the escape if need be)."""
    model, ctx, tests = photo_setup
    x, f = tests[2]  # the portrait
    for predictor, weight in (("median", 0), ("average", 0), ("median", 3), ("average", 8)):
        base = ctx._level(2)
        lv = dataclasses.replace(base, predictor=predictor, model_weight=weight)
        one = dataclasses.replace(ctx, levels=(lv,))
        enc = StreamEncoder()
        one.write(enc, model, x, f, 2)
        calls, recon = _colour_reference(one, lv, x, f)
        payload = enc.finish()
        assert payload == _write_calls(calls, lv.tables), (predictor, weight)
        assert np.array_equal(one.read(StreamDecoder(payload), model, f, 2), recon)


def test_colour_beats_the_plain_tables_on_photos(photo_setup) -> None:
    model, ctx, tests = photo_setup
    for d in (0, 2):
        old = new = 0
        for x, f in tests[:3]:
            enc = StreamEncoder()
            model.write(enc, x, f, d)
            old += len(enc.finish())
            enc = StreamEncoder()
            ctx.write(enc, model, x, f, d)
            new += len(enc.finish())
        assert new < 0.85 * old, (d, new, old)


def test_colour_tables_never_follow_the_prediction(photo_setup) -> None:
    """A receiver whose prediction is one unit off at many samples (float drift across .5) decodes
    the same symbols: at a level without the model's colour difference (w = 0) its reconstruction
    then differs exactly where the base prediction moved, by one, and nowhere else."""
    model, ctx, tests = photo_setup
    x, f = tests[0]
    drift = f.copy()
    near = np.abs(f - np.floor(f) - 0.5) < 0.2
    drift[near] = np.where(f[near] > np.floor(f[near]) + 0.5, np.floor(f[near]) + 0.49, np.floor(f[near]) + 0.51)
    p, pd = np.rint(f), np.rint(drift)
    assert (p != pd).sum() > 500
    lv = ctx._level(0)
    assert lv.model_weight == 0
    enc = StreamEncoder()
    info = ctx.write(enc, model, x, f, 0)
    out = ctx.read(StreamDecoder(enc.finish()), model, drift, 0)
    shift = (pd - p)[:, ctx.base_channel : ctx.base_channel + 1].astype(np.int64)  # (N, 1, H, W)
    diff = out - info.recon
    # every channel of a pixel follows its base prediction's move (unless clipping absorbs it) ...
    assert np.all((diff == 0) | (diff == shift))
    assert (diff != 0).sum() > 1000
    # ... and nothing else moves: not the pixels around it, not for the other channels' drift
    assert not np.any(diff[np.broadcast_to(shift == 0, diff.shape)])


# ------------------------------------------------------------------ prediction-value kind

@pytest.fixture(scope="module")
def digit_setup() -> tuple[ResidualModel, ResidualValueContext, np.ndarray, np.ndarray]:
    """An exact-like (integer) prediction of real digits; tables fit on the shipped train digits,
    tested on the shipped test sample."""
    train = load_mnist(sample_data_root() / "mnist", split="train").samples
    with np.load(ASSETS / "mnist_test_sample.npz") as z:
        test = z["samples"][:300]
    mean = train.astype(np.float32).mean(axis=0)

    def predict(x: np.ndarray, seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).normal(0, 6, x.shape)
        return np.rint(np.clip(0.7 * x + 0.3 * mean + noise, 0, 255)).astype(np.float32)

    f_train = predict(train, 0)
    model = ResidualModel.fit(ContextSpec(0, 255, n_shifts=1, guard=0.0), train, f_train)
    ctx = ResidualValueContext.fit(model, train, f_train, MAX_ERRORS, activity_edges=(6, 40))
    return model, ctx, test, predict(test, 1)


def _value_ids_reference(ctx: ResidualValueContext, p: np.ndarray) -> list[int]:
    """Table ids in C order over (N, C, H, W), from the rule in plain Python."""
    n_f, c, h, w = p.shape
    v = p.astype(np.int64).tolist()
    out = []
    for n in range(n_f):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    sl = abs(v[n][ch][i][min(j + 1, w - 1)] - v[n][ch][i][max(j - 1, 0)]) \
                        + abs(v[n][ch][min(i + 1, h - 1)][j] - v[n][ch][max(i - 1, 0)][j])
                    value = (v[n][ch][i][j] - ctx.raw_min) // ctx.value_width
                    out.append(value * ctx.n_activity + _cls(ctx.activity_edges, sl))
    return out


@pytest.mark.parametrize("max_error", MAX_ERRORS)
def test_value_payload_is_the_reference_byte_for_byte(digit_setup, max_error: int) -> None:
    model, ctx, x, f = digit_setup
    enc = StreamEncoder()
    info = ctx.write(enc, model, x, f, max_error)
    payload = enc.finish()
    ids = _value_ids_reference(ctx, f[:40])
    assert np.array_equal(ctx.table_ids(np.rint(f[:40]).astype(np.int32)).ravel(), ids)
    p = np.rint(f).astype(np.int64)
    q = [_q(int(e), max_error) for e in (x.astype(np.int64) - p).ravel()]
    assert payload == _write_calls([(q, _value_ids_reference(ctx, f))], ctx._tables(max_error))
    out = ctx.read(StreamDecoder(payload), model, f, max_error)
    assert np.array_equal(out, info.recon)
    assert np.abs(out - x.astype(np.int64)).max() == max_error
    if max_error == 0:
        assert np.array_equal(out, x)


def test_value_tables_beat_the_bucket_tables(digit_setup) -> None:
    model, ctx, x, f = digit_setup
    for d in (0, 2):
        enc_old, enc_new = StreamEncoder(), StreamEncoder()
        model.write(enc_old, x, f, d)
        ctx.write(enc_new, model, x, f, d)
        assert len(enc_new.finish()) < 0.8 * len(enc_old.finish())


# ------------------------------------------------------------------ payload, entropy.json, other processes

def _tables(model: ResidualModel, coding) -> CodingTables:
    return CodingTables(latent=TableSet((table_from_counts([1, 1], 0),)), residual=model, residual_coding=coding)


_CHILD = r"""
import sys, numpy as np
from latentwire.codec.coding.payload import CodingTables, PayloadReader
tables = CodingTables.loads(open(sys.argv[1], "rb").read())
z = np.load(sys.argv[2])
for name in sorted(k for k in z.files if k.startswith("payload")):
    i = name[len("payload"):]
    out = PayloadReader(z[name].tobytes(), tables).residual(z["f" + i], int(z["d" + i]))
    np.save(sys.argv[3] + "/recon" + i + ".npy", out)
"""


def test_both_kinds_decode_alike_in_another_process(photo_setup, digit_setup, tmp_path: Path) -> None:
    """encode_payload writes through the residual_coding section; a fresh interpreter with other
    thread settings reads entropy.json's bytes and rebuilds the same reconstructions."""
    cases = []
    model, ctx, tests = photo_setup
    cases.append((_tables(model, ctx), [(x, f, d) for x, f in tests[2:] for d in (0, 4)]))
    vmodel, vctx, dx, df = digit_setup
    cases.append((_tables(vmodel, vctx), [(dx[:50], df[:50], d) for d in (0, 1)]))
    for c, (tables, items) in enumerate(cases):
        loaded = CodingTables.loads(tables.dumps())
        assert loaded.dumps() == tables.dumps() and json.loads(tables.dumps())["version"] == 6
        arrays, expect = {}, []
        for i, (x, f, d) in enumerate(items):
            payload, info = encode_payload(loaded, np.zeros((len(x), 1, 1), np.int32), 0, x_raw=x, raw_float=f,
                                           max_error=d)
            reader = PayloadReader(payload, loaded)
            assert reader.latents(len(x), (1, 1), 0).shape == (len(x), 1, 1)
            assert np.array_equal(reader.residual(f, d), info.recon)
            arrays.update({f"payload{i}": np.frombuffer(payload, np.uint8), f"f{i}": f, f"d{i}": np.array(d)})
            expect.append(info.recon)
        # the latent part is read first in a real packet; here the child reads a residual-only stream
        for i, (x, f, d) in enumerate(items):
            enc = StreamEncoder()
            loaded.residual_coding.write(enc, loaded.residual, x, f, d)
            arrays[f"payload{i}"] = np.frombuffer(enc.finish(), np.uint8)
        (tmp_path / f"entropy{c}.json").write_bytes(tables.dumps())
        np.savez(tmp_path / f"case{c}.npz", **arrays)
        env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        run = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / f"entropy{c}.json"),
                              str(tmp_path / f"case{c}.npz"), str(tmp_path)], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        for i, rec in enumerate(expect):
            assert np.array_equal(np.load(tmp_path / f"recon{i}.npy"), rec)


ECG_V6 = Path(__file__).resolve().parents[1] / "data" / "ecg-v6"
ECG_V5_SHA256 = "acfeb688bb96c0d05663726ad8871640c9f58e5791032cff4bdb3e5206770961"


def test_old_entropy_files_keep_their_bytes_and_their_decoding() -> None:
    """A bundle calibrated before residual_coding (version 5: the ECG bundle's until it got its
    series-context section, the rest of the file unchanged) loads, writes back the same bytes, and its
    residual levels code exactly as residual_context.py / residual.py do."""
    shipped = CodingTables.load(ASSETS / "ecg-conv1d" / "entropy.json")
    # and before its wavelet levels became exact (tests/data/ecg-v6: the float levels' transform section)
    float_transform = TransformResidual.from_json_obj(json.loads((ECG_V6 / "transform.json").read_text()))
    assert not float_transform.exact and shipped.transform is not None and shipped.transform.exact
    data = dataclasses.replace(shipped, residual_coding=None, transform=float_transform).dumps()
    assert hashlib.sha256(data).hexdigest() == ECG_V5_SHA256  # the file the bundle shipped before
    tables = CodingTables.loads(data)
    assert tables.residual_coding is None and json.loads(data)["version"] == ENTROPY_VERSION_SECTIONS
    assert tables.dumps() == data
    assert tables.residual is not None and tables.residual_context is not None
    with np.load(ASSETS / "ecg_heldout_sample.npz") as z:
        x = z["samples"][:4]
    f = np.clip(x.astype(np.float32) + np.random.default_rng(0).normal(0, 3, x.shape), 0, 2047).astype(np.float32)
    d = tables.residual_context.tables[0][0]
    enc = StreamEncoder()
    direct = tables.residual_context.write(enc, tables.residual, x, f, d)
    latent_shape = (tables.latent_context.channels, 3)
    symbols = np.random.default_rng(1).integers(-2, 3, (4, *latent_shape)).astype(np.int32)
    payload, info = encode_payload(tables, symbols, 0, x_raw=x, raw_float=f, max_error=d)
    assert info is not None and np.array_equal(info.recon, direct.recon)
    reader = PayloadReader(payload, tables)
    assert np.array_equal(reader.latents(4, latent_shape, 0), symbols)
    assert np.array_equal(reader.residual(f, d), direct.recon)
    # and the residual part is what residual_context.py writes on its own, after the same latents
    enc = StreamEncoder()
    tables.latent_context.write(enc, symbols)
    tables.residual_context.write(enc, tables.residual, x, f, d)
    assert enc.finish() == payload


def test_entropy_json_refuses_what_it_cannot_read(photo_setup) -> None:
    model, ctx, _ = photo_setup
    obj = json.loads(_tables(model, ctx).dumps())
    for change, match in (
        (lambda o: o.update(version=5), "residual_coding"),
        (lambda o: o["residual_coding"].update(kind="next-year"), "unknown residual coding kind"),
        (lambda o: o["residual_coding"].update(version=2), "version"),
        (lambda o: o["residual_coding"]["levels"][0].update(predictor="oracle"), "predictor"),
        (lambda o: o["residual_coding"]["levels"][0].update(base_edges=[3, 2]), "rise"),
        (lambda o: o.update(residual=None), "residual"),
    ):
        bad = json.loads(json.dumps(obj))
        change(bad)
        with pytest.raises(BundleError, match=match):
            CodingTables.loads(json.dumps(bad))
    with pytest.raises(BundleError, match="unknown residual coding kind"):
        residual_coding_from_json({"kind": None})


def test_calibration_picks_the_kind_by_the_data(photo_setup, digit_setup) -> None:
    model, _, tests = photo_setup
    vmodel, _, dx, df = digit_setup
    assert residual_coding_kind((3, None, None), False, model) == "colour-wavefront"
    assert residual_coding_kind((3, 64, 64), True, model) == "colour-wavefront"
    assert residual_coding_kind((1, 28, 28), True, vmodel) == "value-checkerboard"
    assert residual_coding_kind((1, 28, 28), False, vmodel) == "colour-wavefront"
    wide = ResidualModel.fit(ContextSpec(0, 2047), dx[:1], df[:1])
    assert residual_coding_kind((2, 1024), True, wide) == "series-context"
    assert residual_coding_kind((2, 1024), False, wide) is None
    assert residual_coding_kind((2, 1024), True, vmodel) == "prediction-value"
    assert fit_calibrated(vmodel, dx, df, [None, 4], exact=True, enabled=False) is None
    assert fit_calibrated(vmodel, dx, df, [None], exact=True) is None
    got = fit_calibrated(vmodel, dx, df, [None, 4], exact=True, extra_max_errors=(1,))
    assert isinstance(got, ResidualCheckerContext) and [lv.max_error for lv in got.levels] == [1, 4]
    got = fit_calibrated(vmodel, dx.reshape(len(dx), 1, -1), df.reshape(len(df), 1, -1), [4], exact=True)
    assert isinstance(got, ResidualValueContext) and [d for d, _ in got.tables] == [4]


# ------------------------------------------------------------------ the shipped bundles

_DECODE_ELSEWHERE = r"""
import sys, numpy as np
from latentwire.codec.codec import Codec
codec = Codec.load(sys.argv[1], provider="cpu", threads=int(sys.argv[2]))
z = np.load(sys.argv[3])
np.savez(sys.argv[4], **{k: codec.decode(z[k].tobytes()) for k in z.files})
"""


def _shipped_samples(name: str) -> list[np.ndarray]:
    if name == "bsds-gdn2d":
        photos = _photos()
        return photos + [np.ascontiguousarray(photos[2][:, :, :45, :31])]
    with np.load(ASSETS / "mnist_test_sample.npz") as z:
        return [z["samples"][:64], z["samples"][64:65]]


@pytest.mark.parametrize("name", ["bsds-gdn2d", "mnist-dense"])
def test_shipped_bundles_code_every_residual_level_with_context_and_decode_alike_elsewhere(
    name: str, tmp_path: Path
) -> None:
    """Every max error the shipped bundle calibrated (ladder and custom) takes the context-coded
    path; on the shipped samples it round-trips within its bound (lossless bit-exactly), and a
    fresh process with another thread count decodes the same samples from the same packets."""
    codec = Codec.load(ASSETS / name, provider="cpu", threads=1)
    coding = codec.tables.residual_coding
    assert coding is not None, f"{name}: re-run its calibration (entropy.json has no residual_coding)"
    levels = [{"quality": q.index} for q in codec.qualities if q.max_error is not None]
    bounds = [q.max_error for q in codec.qualities if q.max_error is not None]
    covered = coding.levels if isinstance(coding, ResidualColourContext | ResidualCheckerContext) else coding.tables
    custom = sorted({lv[0] if isinstance(lv, tuple) else lv.max_error for lv in covered} - set(bounds))
    assert all(coding.covers(d) for d in bounds) and custom  # the ladder, and custom max errors too
    levels += [{"max_error": d} for d in custom]
    bounds += custom
    packets, here = {}, {}
    for li, (kw, bound) in enumerate(zip(levels, bounds, strict=True)):
        for si, raw in enumerate(_shipped_samples(name)):
            packet = codec.encode(raw, **kw)
            out = codec.decode(packet)
            err = np.abs(out.astype(np.int64) - raw.astype(np.int64))
            assert err.max() <= bound, (name, kw)
            if bound == 0:
                assert np.array_equal(out, raw)
            key = f"l{li}s{si}"
            packets[key], here[key] = np.frombuffer(packet, np.uint8), out
    np.savez(tmp_path / "packets.npz", **packets)
    run = subprocess.run([sys.executable, "-c", _DECODE_ELSEWHERE, str(ASSETS / name), "2",
                          str(tmp_path / "packets.npz"), str(tmp_path / "out.npz")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "out.npz") as got:
        for key, out in here.items():
            assert np.array_equal(got[key], out), key
