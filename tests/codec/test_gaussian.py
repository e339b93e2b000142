"""Hyperprior latent coding (codec/coding/gaussian.py, hyperprior.py): the integer table choice
against an independent rule, the Gaussian tables against the normal distribution, exact round
trips with escapes (also in another process), rate against the entropy, storage and refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.coding.coder import StreamDecoder, StreamEncoder
from latentwire.codec.coding.gaussian import TableChooser, gaussian_table, scale_table
from latentwire.codec.coding.hyperprior import (
    HyperLatentCoding,
    build_hyper_latent_coding,
    latent_values,
    symbols_for,
)
from latentwire.codec.coding.tables import TableSet, pack_array, table_from_pmf
from latentwire.codec.errors import BitstreamError, BundleError, InputError

FRAC = 8
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _z_pmfs(n: int, rng: np.random.Generator) -> tuple[list[int], list[np.ndarray]]:
    """Laplacian-ish pmfs of varied widths and offsets, like FactorizedDensity.pmf_tables returns."""
    offsets, probs = [], []
    for _ in range(n):
        half = int(rng.integers(1, 12))
        k = np.arange(-half, half + 1)
        p = np.exp(-np.abs(k - rng.uniform(-0.5, 0.5)) / rng.uniform(0.3, 3.0))
        offsets.append(-half)
        probs.append(p / p.sum())
    return offsets, probs


def _coding(levels: int = 3, m: int = 6, n: int = 4, seed: int = 0) -> tuple[HyperLatentCoding, np.ndarray]:
    rng = np.random.default_rng(seed)
    gains = np.exp(rng.uniform(-2.0, 3.0, size=(levels, m)))
    gains[0, 0] = 1.0
    return build_hyper_latent_coding(_z_pmfs(n, rng), gains), gains


def _independent_thresholds(scales: tuple[float, ...], gains: np.ndarray) -> list[list[list[int]]]:
    """floor(2**F * (log s_k - log g)) with math.log, one Python int at a time."""
    return [[[math.floor((1 << FRAC) * (math.log(s) - math.log(float(g)))) for s in scales[:-1]] for g in row]
            for row in gains]


def _random_codes(thr: list[list[list[int]]], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Codes across both clamps, with every threshold and threshold + 1 of each channel among them."""
    lo = min(min(min(r) for r in lv) for lv in thr) - 300
    hi = max(max(max(r) for r in lv) for lv in thr) + 300
    codes = rng.integers(lo, hi + 1, size=shape, dtype=np.int64)
    flat = codes.reshape(shape[0], shape[1], -1)
    for c in range(shape[1]):
        edges = [t + d for lv in thr for t in lv[c] for d in (0, 1)]
        flat[0, c, : min(len(edges), flat.shape[2])] = edges[: flat.shape[2]]
    return codes


def test_table_ids_equal_an_independent_integer_rule_across_the_clamps() -> None:
    coding, gains = _coding(levels=3, m=6)
    k = len(coding.scales)
    independent_scales = [math.exp(math.log(0.11) + i * (math.log(256.0) - math.log(0.11)) / 63) for i in range(64)]
    assert k == 64 and np.allclose(coding.scales, independent_scales, rtol=1e-12, atol=0)
    thr = _independent_thresholds(coding.scales, gains)
    assert coding.thresholds.tolist() == thr
    rng = np.random.default_rng(1)
    codes = _random_codes(thr, (2, 6, 15, 9), rng)
    seen = set()
    for level in range(3):
        ids = coding.table_ids(codes, level)
        assert ids.dtype == np.uint8 and ids.shape == codes.shape
        expect = np.empty_like(ids)
        for idx in np.ndindex(*codes.shape):
            v = int(codes[idx])
            expect[idx] = sum(1 for t in thr[level][idx[1]] if v > t)
        assert np.array_equal(ids, expect)
        seen.update(np.unique(ids).tolist())
        # the binary-search path (a span too wide for a lookup) picks the same tables
        assert np.array_equal(TableChooser(coding.thresholds, lookup_max_entries=0)(codes, level), ids)
        # the rule's meaning: the first table whose scale is >= sigma * g, clamped at both ends
        sigma_g = np.exp(codes / float(1 << FRAC)) * gains[level][None, :, None, None]
        s = np.asarray(coding.scales)
        clear = np.all(np.abs(np.log(sigma_g[..., None] / s)) > 1e-9, axis=-1)  # away from a float tie
        assert np.all((ids == k - 1) | (s[ids] >= sigma_g) | ~clear)
        assert np.all((ids == 0) | (s[np.maximum(ids.astype(np.int64) - 1, 0)] < sigma_g) | ~clear)
    assert {0, k - 1} <= seen and len(seen) == k  # both clamps and every table in between were hit


def test_gaussian_tables_follow_the_discretized_normal() -> None:
    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    for scale in (0.11, 0.4, 1.0, 3.7, 25.0, 256.0):
        t = gaussian_table(scale)
        n = t.hi
        assert t.lo == -n and n == max(1, math.ceil(scale * 6.1094102))
        assert int(t.freqs.sum()) == 1 << 16 and t.freqs.min() >= 1
        # the two tails beyond the range hold about 1e-9 (the escape's share before flooring)
        assert 2.0 * (1.0 - cdf((n + 0.5) / scale)) < 1.2e-9
        p = np.array([cdf((v + 0.5) / scale) - cdf((v - 0.5) / scale) for v in range(-n, n + 1)])
        got = t.probabilities[:-1]
        # each entry is 1 plus its share of the other 2**16 - (2n + 2) units, rounded: off by under
        # (2 + p * (2n + 2)) / 2**16, i.e. within ~1 % for entries above 1e-3 even at n = 1565
        assert np.all(np.abs(got - p) <= (2.0 + p * (2 * n + 2)) / 2.0**16), scale
        # symmetric up to the largest-remainder rounding of mirrored entries (one unit)
        assert np.abs(t.freqs[:-1].astype(np.int64) - t.freqs[:-1][::-1]).max() <= 1


def _packet(coding: HyperLatentCoding, rng: np.random.Generator, b: int = 2, h: int = 7, w: int = 5
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z_hat, y symbols drawn from the Gaussian of each element's table, scale codes over all tables."""
    z = rng.integers(-4, 5, size=(b, coding.z_channels, (h + 3) // 4, (w + 3) // 4))
    codes = rng.integers(-900, 1700, size=(b, coding.channels, h, w), dtype=np.int64)
    ids = coding.table_ids(codes, 0)
    y = np.rint(rng.normal(size=codes.shape) * np.asarray(coding.scales)[ids]).astype(np.int64)
    return z, y, codes


def test_round_trip_decodes_identically_including_escapes() -> None:
    coding, _ = _coding(levels=2, m=6, n=4)
    rng = np.random.default_rng(2)
    for level in (0, 1):
        z, y, codes = _packet(coding, rng)
        # far-out symbols of both parts go through the escapes, up to the int32 limits
        z[0, 1, 0, 0], z[1, 3, 1, 1] = 10**6, -77
        y[0, 0, 0, :3] = (INT32_MAX, INT32_MIN, 5000)
        y[1, 5, 6, 4] = -123456
        enc = StreamEncoder()
        coding.write(enc, z, y, codes, level)
        payload = enc.finish()
        dec = StreamDecoder(payload)
        z_back = coding.read_z(dec, z.shape)
        assert z_back.dtype == np.int32 and np.array_equal(z_back, z)
        y_back = coding.read_y(dec, codes, level)
        assert y_back.dtype == np.int32 and np.array_equal(y_back, y)
        bits = coding.ideal_bits(z, y, codes, level)
        assert bits.z_bits > 0 and bits.y_bits > 0
        assert bits.total / 8 - 2 <= len(payload) <= bits.total / 8 * 1.01 + 8
        # the wrong scale codes make the receiver pick other tables: other symbols, or a refusal
        dec = StreamDecoder(payload)
        coding.read_z(dec, z.shape)
        try:
            wrong = coding.read_y(dec, codes + 200, level)
        except BitstreamError:
            continue
        assert not np.array_equal(wrong, y)


def test_ideal_bits_of_gaussian_symbols_are_within_a_few_percent_of_the_entropy() -> None:
    coding = build_hyper_latent_coding(([0], [np.ones(1)]), np.ones((1, 1)))
    s = np.asarray(coding.scales)
    rng = np.random.default_rng(3)
    n = 100_000
    for target in (0.5, 1.0, 2.3, 7.0, 40.0, 200.0):
        code = math.floor(math.log(target) * (1 << FRAC))
        sigma = math.exp(code / (1 << FRAC))  # the scale this code stands for
        k = int(np.searchsorted(s, sigma))
        codes = np.full((1, 1, 1, n), code, dtype=np.int64)
        # exact symbols of the discretized N(0, sigma^2): rounding a normal sample
        y = np.rint(rng.normal(scale=sigma, size=codes.shape)).astype(np.int64)
        v = np.arange(-int(12 * sigma) - 2, int(12 * sigma) + 3)
        d = sigma * math.sqrt(2.0)
        p = np.array([0.5 * (math.erf((x + 0.5) / d) - math.erf((x - 0.5) / d)) for x in v])
        p = p[p > 0]
        entropy = -float((p * np.log2(p)).sum()) * n
        ids = coding.table_ids(codes, 0)
        assert int(ids.max()) == int(ids.min()) == k  # the first table at least as wide
        bits = coding.ideal_bits(np.zeros((1, 1, 1, 1), np.int64), y, codes, 0).y_bits
        # mismatch of up to one grid step (x1.131) in scale plus the 16-bit floors; sampling noise ~0.5 %
        assert entropy * 0.99 < bits < entropy * 1.04, (sigma, bits / entropy)


def test_json_round_trip_is_exact_and_canonical() -> None:
    coding, _ = _coding()
    obj = json.loads(json.dumps(coding.to_json_obj()))
    back = HyperLatentCoding.from_json_obj(obj)
    assert back == coding and back.dumps() == coding.dumps()
    assert back.scales == coding.scales and np.array_equal(back.thresholds, coding.thresholds)
    assert back.z_tables == coding.z_tables and back.gaussian == coding.gaussian
    assert (back.levels, back.channels, back.z_channels) == (3, 6, 4)
    rng = np.random.default_rng(4)
    z, y, codes = _packet(coding, rng)
    enc = StreamEncoder()
    coding.write(enc, z, y, codes, 2)
    dec = StreamDecoder(enc.finish())
    assert np.array_equal(back.read_z(dec, z.shape), z) and np.array_equal(back.read_y(dec, codes, 2), y)


def _corruptions() -> list[tuple[str, object]]:
    coding, _ = _coding()
    good = coding.to_json_obj()

    def edit(path: tuple[str, ...], value: object) -> dict:
        obj = json.loads(json.dumps(good))
        node = obj
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return obj

    flipped = coding.thresholds.copy()
    flipped[1, 2] = flipped[1, 2][::-1]
    return [
        ("kind", edit(("kind",), "factorized")),
        ("version", edit(("version",), 2)),
        ("missing z", edit(("z_tables",), KeyError)),
        ("base64", edit(("thresholds", "packed"), "not base64!")),
        ("zlib", edit(("thresholds", "packed"), "aGVsbG8=")),
        ("shape", edit(("thresholds", "shape"), [3, 6, 62])),
        ("decreasing", edit(("thresholds", "packed"), pack_array(flipped, "<i4"))),
        ("one scale short", edit(("scales",), good["scales"][:-1])),
        ("falling scales", edit(("scales",), good["scales"][::-1])),
        ("frac bits", edit(("scale_frac_bits",), 99)),
        ("gaussian tables", edit(("gaussian_tables",), good["z_tables"])),
        ("not an object", [1, 2]),
    ]


@pytest.mark.parametrize(("name", "obj"), _corruptions(), ids=[n for n, _ in _corruptions()])
def test_a_corrupted_section_is_refused_with_a_one_line_error(name: str, obj: object) -> None:
    with pytest.raises(BundleError) as info:
        HyperLatentCoding.from_json_obj(obj, "bundle/entropy.json")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("bundle/entropy.json"), msg


def test_symbols_and_latent_values_follow_the_gains_and_means() -> None:
    rng = np.random.default_rng(5)
    shape = (2, 3, 4, 5)
    y = rng.normal(scale=4.0, size=shape).astype(np.float32)
    mean_code = rng.integers(-3000, 3000, size=shape)
    gain = np.array([0.5, 1.0, 7.25])
    inverse = 1.0 / gain
    s = symbols_for(y, mean_code, gain, FRAC)
    assert s.dtype == np.int32
    for idx in np.ndindex(*shape):
        g = float(gain[idx[1]])
        mu = int(mean_code[idx]) / 256
        assert int(s[idx]) == round(float(y[idx]) * g - mu * g)  # Python's round: half to even too
    y_hat = latent_values(s, mean_code, gain, inverse, FRAC)
    assert y_hat.dtype == np.float32
    tol = 0.5 / gain[None, :, None, None] + 1e-5 * (1 + np.abs(y))
    assert np.all(np.abs(y_hat - y) <= tol)
    with pytest.raises(InputError):
        symbols_for(y, mean_code.astype(np.float64), gain, FRAC)
    with pytest.raises(InputError):
        latent_values(s, mean_code, gain[:2], inverse, FRAC)
    with pytest.raises(InputError):
        symbols_for(np.full(shape, np.nan), mean_code, gain, FRAC)


def test_bad_arguments_are_refused() -> None:
    coding, _ = _coding()
    rng = np.random.default_rng(6)
    z, y, codes = _packet(coding, rng)
    enc = StreamEncoder()
    with pytest.raises(InputError):
        coding.write(enc, z, y, codes.astype(np.float64), 0)
    with pytest.raises(InputError):
        coding.write(enc, z, y, codes, 3)  # three levels
    with pytest.raises(InputError):
        coding.write(enc, z, y, codes[:, :, :-1], 0)
    with pytest.raises(InputError):
        coding.write(enc, z[:, :2], y, codes, 0)
    with pytest.raises(InputError):
        coding.write(enc, z[:1], y, codes, 0)  # batch of 1 against 2
    with pytest.raises(InputError):
        coding.write(enc, z, y.astype(np.float32), codes, 0)
    assert enc.finish() == StreamEncoder().finish()  # nothing was coded by the refused calls
    with pytest.raises(InputError):
        coding.read_z(StreamDecoder(b"\x01"), (1, 4, 0, 2))
    with pytest.raises(InputError):
        build_hyper_latent_coding(_z_pmfs(2, rng), np.array([[1.0, -1.0]]))


def test_decoding_in_another_process_gives_the_same_symbols(tmp_path: Path) -> None:
    coding, _ = _coding(levels=2, m=8, n=5, seed=7)
    rng = np.random.default_rng(8)
    z, y, codes = _packet(coding, rng, b=1, h=11, w=9)
    y[0, 3, 2, 2] = 99999
    enc = StreamEncoder()
    coding.write(enc, z, y, codes, 1)
    (tmp_path / "coding.json").write_text(coding.dumps())
    (tmp_path / "payload.bin").write_bytes(enc.finish())
    np.save(tmp_path / "codes.npy", codes)
    script = f"""
import json, numpy as np
from pathlib import Path
from latentwire.codec.coding.coder import StreamDecoder
from latentwire.codec.coding.hyperprior import HyperLatentCoding
d = Path({str(tmp_path)!r})
coding = HyperLatentCoding.from_json_obj(json.loads((d / "coding.json").read_text()))
dec = StreamDecoder((d / "payload.bin").read_bytes())
np.save(d / "z.npy", coding.read_z(dec, {tuple(z.shape)!r}))
np.save(d / "y.npy", coding.read_y(dec, np.load(d / "codes.npy"), 1))
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert np.array_equal(np.load(tmp_path / "z.npy"), z)
    assert np.array_equal(np.load(tmp_path / "y.npy"), y)


def test_ready_z_tables_are_taken_as_they_are() -> None:
    tables = TableSet(tuple(table_from_pmf([0.25, 0.5, 0.25], -1) for _ in range(3)))
    coding = build_hyper_latent_coding(tables, np.ones((1, 2)), scales=scale_table(0.5, 8.0, 5))
    assert coding.z_tables is tables and len(coding.gaussian) == 5 and coding.thresholds.shape == (1, 2, 4)
