"""The checkerboard residual coding of digits (codec/coding/residual_checker.py) held to an
independent implementation.

The reference below recomputes every symbol, table id and coder call from the module docstring's
rule in plain Python integers, pixel by pixel; the sender's payload must be byte for byte what the
reference's two calls write, and the receiver must rebuild the reference's reconstruction, on the
shipped digits, here and in another process. Streams the digit bundle wrote before the
checkerboard (tests/data/mnist-v6) must keep decoding to what they decoded to then.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.coder import StreamDecoder, StreamEncoder
from latentwire.codec.coding.payload import CodingTables
from latentwire.codec.coding.residual import ContextSpec, ResidualModel
from latentwire.codec.coding.residual_checker import CheckerLevel, ResidualCheckerContext
from latentwire.codec.coding.residual_coding import residual_coding_from_json
from latentwire.codec.coding.residual_value import ResidualValueContext
from latentwire.codec.coding.tables import TableSet, table_from_counts
from latentwire.codec.errors import BundleError
from latentwire.codec.sources import load_mnist, sample_data_root

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
OLD = Path(__file__).resolve().parents[1] / "data" / "mnist-v6"  # the digit bundle's tables before, and packets
MAX_ERRORS = (0, 1, 2, 4)


@pytest.fixture(scope="module")
def setup() -> tuple[ResidualModel, ResidualCheckerContext, np.ndarray, np.ndarray]:
    """An exact-like (integer) prediction of real digits that misses strokes by a pixel now and
    then, as the autoencoder does; tables fit on the shipped train digits (low thresholds, so the
    context map holds both kinds of entry), tested on the shipped test sample."""
    train = load_mnist(sample_data_root() / "mnist", split="train").samples
    with np.load(ASSETS / "mnist_test_sample.npz") as z:
        test = z["samples"][:200]
    model = ResidualModel.fit(ContextSpec(0, 255, n_shifts=1, guard=0.0), train, _predict(train, 0))
    ctx = ResidualCheckerContext.fit(model, train, _predict(train, 0), MAX_ERRORS, min_observations=64)
    return model, ctx, test, _predict(test, 1)


def _predict(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    moved = np.where(rng.random((len(x), 1, 1, 1)) < 0.5, np.roll(x, 1, axis=-1), x).astype(np.float32)
    noise = rng.normal(0, 6, x.shape)
    return np.rint(np.clip(0.8 * moved + 0.2 * x.mean() + noise, 0, 255)).astype(np.float32)


# ------------------------------------------------------------------ the independent reference

def _q(e: int, d: int) -> int:
    return (abs(e) + d) // (2 * d + 1) * (1 if e > 0 else -1 if e < 0 else 0)


def _reference(ctx: ResidualCheckerContext, lv: CheckerLevel, x: np.ndarray,
               f: np.ndarray) -> tuple[list[tuple[list[int], list[int]]], np.ndarray]:
    """([(symbols, table ids) of each coder call], reconstruction) for frames (N, 1, H, W)."""
    d, s, lo, hi = lv.max_error, 2 * lv.max_error + 1, ctx.raw_min, ctx.raw_max
    n, _, h, w = x.shape
    xs, ps = x.astype(np.int64).tolist(), np.rint(np.clip(f, lo, hi)).astype(np.int64).tolist()
    recon = [[[0] * w for _ in range(h)] for _ in range(n)]
    cmap = lv.context_map.tolist()
    black: tuple[list[int], list[int]] = ([], [])
    white: tuple[list[int], list[int]] = ([], [])
    for k in range(n):
        xk, pk, rk = xs[k][0], ps[k][0], recon[k]
        for i in range(h):
            for j in range(w):
                if (i + j) % 2 == 0:
                    q = _q(xk[i][j] - pk[i][j], d)
                    black[0].append(q)
                    black[1].append((pk[i][j] - lo) // ctx.value_width)
                    rk[i][j] = min(max(pk[i][j] + q * s, lo), hi)
        for i in range(h):
            for j in range(w):
                if (i + j) % 2 == 1:
                    total, m, z = 0, 0, 0
                    for a, b in ((i, j - 1), (i - 1, j), (i, j + 1), (i + 1, j)):
                        if 0 <= a < h and 0 <= b < w:
                            total += rk[a][b] - pk[a][b]
                            m = max(m, rk[a][b] - lo)
                            z += rk[a][b] - lo > d
                    pw = min(max(pk[i][j] + (lv.weight * total) // 16, lo), hi)
                    cls = sum(1 for e in lv.edges if e <= m) * 5 + z
                    q = _q(xk[i][j] - pw, d)
                    white[0].append(q)
                    white[1].append(cmap[((pw - lo) // ctx.value_width) * (len(lv.edges) + 1) * 5 + cls])
                    rk[i][j] = min(max(pw + q * s, lo), hi)
    return [black, white], np.asarray(recon, dtype=np.int64)[:, None]


def _write_calls(calls: list[tuple[list[int], list[int]]], tables: TableSet) -> bytes:
    enc = StreamEncoder()
    for syms, ids in calls:
        enc.encode(np.asarray(syms, dtype=np.int64), np.asarray(ids, dtype=np.int64), tables)
    return enc.finish()


# ------------------------------------------------------------------ coding

@pytest.mark.parametrize("max_error", MAX_ERRORS)
def test_checker_payload_is_the_reference_byte_for_byte(setup, max_error: int) -> None:
    model, ctx, x, f = setup
    lv = ctx._level(max_error)
    assert lv.weight > 0 and int(lv.context_map.max()) >= ctx.n_values  # bias on, own tables in use
    assert int(lv.context_map.min()) < ctx.n_values  # and rare contexts on their value's black table
    enc = StreamEncoder()
    info = ctx.write(enc, model, x[:40], f[:40], max_error)
    payload = enc.finish()
    calls, recon = _reference(ctx, lv, x[:40], f[:40])
    assert len(calls[0][0]) == len(calls[1][0]) == 40 * 392
    assert payload == _write_calls(calls, lv.tables)
    assert np.array_equal(info.recon, recon)
    out = ctx.read(StreamDecoder(payload), model, f[:40], max_error)
    assert np.array_equal(out, recon)
    assert np.abs(out - x[:40].astype(np.int64)).max() == max_error
    if max_error == 0:
        assert np.array_equal(out, x[:40])


def test_odd_sizes_and_several_planes_follow_the_rule(setup) -> None:
    """Frames of odd height and width (borders on both parities) code as the reference says, and
    a frame's leading axes are planes of their own."""
    model, ctx, x, f = setup
    cut, fc = np.ascontiguousarray(x[:6, :, 3:20, 5:26]), np.ascontiguousarray(f[:6, :, 3:20, 5:26])
    lv = ctx._level(1)
    enc = StreamEncoder()
    ctx.write(enc, model, cut, fc, 1)
    calls, recon = _reference(ctx, lv, cut, fc)
    payload = enc.finish()
    assert payload == _write_calls(calls, lv.tables)
    assert np.array_equal(ctx.read(StreamDecoder(payload), model, fc, 1), recon)
    two = cut.reshape(3, 2, 17, 21)  # three frames of two planes each: the same planes, in the same order
    enc = StreamEncoder()
    ctx.write(enc, model, two, fc.reshape(two.shape), 1)
    assert enc.finish() == payload


def test_a_packet_reconstructs_each_digit_as_coding_it_alone_does(setup) -> None:
    """No context crosses a frame, so a packet's digits decode to what each decodes to alone (the
    bytes differ: a coder call groups all the packet's symbols by table)."""
    model, ctx, x, f = setup
    for d in (0, 2):
        enc = StreamEncoder()
        ctx.write(enc, model, x[:12], f[:12], d)
        packet = ctx.read(StreamDecoder(enc.finish()), model, f[:12], d)
        for k in range(12):
            one = StreamEncoder()
            ctx.write(one, model, x[k : k + 1], f[k : k + 1], d)
            assert np.array_equal(ctx.read(StreamDecoder(one.finish()), model, f[k : k + 1], d), packet[k : k + 1])


def test_checker_tables_beat_the_prediction_value_tables(setup) -> None:
    model, ctx, x, f = setup
    train = load_mnist(sample_data_root() / "mnist", split="train").samples
    value = ResidualValueContext.fit(model, train, _predict(train, 0), MAX_ERRORS)
    for d in MAX_ERRORS:
        old, new = StreamEncoder(), StreamEncoder()
        value.write(old, model, x, f, d)
        ctx.write(new, model, x, f, d)
        assert len(new.finish()) < 0.98 * len(old.finish()), d


_CHILD = r"""
import sys, numpy as np
from latentwire.codec.coding.coder import StreamDecoder
from latentwire.codec.coding.payload import CodingTables
tables = CodingTables.loads(open(sys.argv[1], "rb").read())
z = np.load(sys.argv[2])
out = {f"r{d}": tables.residual_coding.read(StreamDecoder(z[f"p{d}"].tobytes()), tables.residual, z["f"], d)
       for d in (0, 1, 2, 4)}
np.savez(sys.argv[3], **out)
"""


def test_another_process_decodes_the_same(setup, tmp_path: Path) -> None:
    model, ctx, x, f = setup
    tables = CodingTables(latent=TableSet((table_from_counts([1, 1], 0),)), residual=model, residual_coding=ctx)
    text = tables.dumps()
    loaded = CodingTables.loads(text)
    assert loaded.dumps() == text and json.loads(text)["residual_coding"]["kind"] == "value-checkerboard"
    arrays, expect = {"f": f[:30]}, {}
    for d in MAX_ERRORS:
        enc = StreamEncoder()
        expect[f"r{d}"] = loaded.residual_coding.write(enc, loaded.residual, x[:30], f[:30], d).recon
        arrays[f"p{d}"] = np.frombuffer(enc.finish(), np.uint8)
    (tmp_path / "entropy.json").write_bytes(text)
    np.savez(tmp_path / "in.npz", **arrays)
    run = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "entropy.json"), str(tmp_path / "in.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "out.npz") as got:
        for key, rec in expect.items():
            assert np.array_equal(got[key], rec), key


# ------------------------------------------------------------------ format

def test_readers_refuse_what_they_cannot_read(setup) -> None:
    """An older reader (prediction-value only) refuses the kind; this one refuses another version
    and tables that do not fit the context map."""
    _, ctx, _, _ = setup
    obj = ctx.to_json_obj()
    with pytest.raises(BundleError, match="prediction-value"):
        ResidualValueContext.from_json_obj(obj)
    for change, match in (
        (lambda o: o.update(version=2), "version"),
        (lambda o: o["levels"][0].update(weight=17), "weight"),
        (lambda o: o["levels"][0].update(edges=[4, 4]), "rise"),
        (lambda o: o["levels"][0].update(context_map=o["levels"][1]["context_map"], edges=[1]), "context map"),
        (lambda o: o["levels"][0].update(context_map="%%"), "malformed"),
    ):
        bad = json.loads(json.dumps(obj))
        change(bad)
        with pytest.raises(BundleError, match=match):
            residual_coding_from_json(bad)
    assert residual_coding_from_json(json.loads(json.dumps(obj))).to_json_obj() == obj


def test_the_digit_bundle_streams_from_before_the_checkerboard_decode_as_they_did(tmp_path: Path) -> None:
    """tests/data/mnist-v6: the digit bundle's tables when it coded residuals by prediction value
    (model a47c9e20849d) and six packets it wrote then, with what they decoded to."""
    old_dir = tmp_path / "mnist-v6"
    shutil.copytree(ASSETS / "mnist-dense", old_dir)
    for name in ("entropy.json", "manifest.json"):
        shutil.copy(OLD / name, old_dir / name)
    old = Codec.load(old_dir, provider="cpu", threads=1)
    assert old.model_id.startswith("a47c9e20849d")
    assert isinstance(old.tables.residual_coding, ResidualValueContext)
    assert old.tables.dumps() == (OLD / "entropy.json").read_bytes()
    packets = [bytes(p) for _, p in bitstream.iter_packets((OLD / "packets.lw").read_bytes())]
    names = ("q10", "q9", "d1", "d2", "d4", "one")
    with np.load(OLD / "decoded.npz") as z, np.load(ASSETS / "mnist_test_sample.npz") as s:
        for packet, name in zip(packets, names, strict=True):
            assert np.array_equal(old.decode(packet), z[name]), name
        assert np.array_equal(z["q10"], s["samples"][:16])


def test_the_shipped_digit_bundle_codes_its_residuals_on_the_checkerboard() -> None:
    """The shipped sample round-trips at max errors 0, 1, 2, 4 (lossless bit-exactly) through the
    checkerboard tables, in a packet of 64 digits and one digit alone."""
    codec = Codec.load(ASSETS / "mnist-dense", provider="cpu", threads=1)
    coding = codec.tables.residual_coding
    assert isinstance(coding, ResidualCheckerContext) and all(coding.covers(d) for d in MAX_ERRORS)
    with np.load(ASSETS / "mnist_test_sample.npz") as z:
        samples = [z["samples"][100:164], z["samples"][7:8]]
    for d in MAX_ERRORS:
        for raw in samples:
            out = codec.decode(codec.encode(raw, max_error=d))
            err = np.abs(out.astype(np.int64) - raw.astype(np.int64)).max()
            assert err <= d and (d > 0 or np.array_equal(out, raw))
