"""Entropy tables and range coding: determinism, floors, escapes, rate vs ideal on real digits, speed."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentwire.codec.coding import coder as C
from latentwire.codec.coding import tables as T
from latentwire.codec.coding.payload import ENTROPY_VERSION_PACKED, CodingTables
from latentwire.codec.coding.residual import ContextSpec, ResidualModel
from latentwire.codec.errors import BitstreamError, BundleError, InputError
from latentwire.codec.sources import load_mnist, sample_data_root

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    folder = sample_data_root() / "mnist"
    return load_mnist(folder, split="train").samples, load_mnist(folder, split="test").samples


def test_table_from_pmf_is_floored_exact_and_deterministic() -> None:
    probs = np.array([0.5, 0.25, 0.125, 1e-12, 0.0, 0.125 - 1e-9])
    t = T.table_from_pmf(probs, offset=-3)
    assert t.freqs.dtype == np.uint32 and int(t.freqs.sum()) == 1 << 16
    assert t.freqs.min() >= 1 and t.n_symbols == 6 and (t.lo, t.hi) == (-3, 2)
    # integer largest-remainder result, fixed forever (a change here breaks every calibrated bundle)
    assert t.freqs.tolist() == [32766, 16383, 8192, 1, 1, 8192, 1]
    assert T.table_from_pmf(list(probs), offset=-3) == t
    c = T.table_from_counts([10, 0, 5], offset=7, escape_count=0)
    assert c.freqs.tolist() == [43689, 1, 21845, 1] and c.escape_index == 3
    with pytest.raises(InputError):
        T.table_from_pmf([0.5, np.nan], 0)
    with pytest.raises(InputError):
        T.FreqTable(0, np.array([0, 65536]))
    with pytest.raises(InputError):
        T.FreqTable(0, np.array([1, 65534]))


def test_table_set_canonical_json_round_trip() -> None:
    ts = T.TableSet((T.table_from_counts([3, 2, 1], -1), T.table_from_pmf([0.9, 0.1], 4)))
    text = ts.dumps()
    assert " " not in text and text == T.TableSet.loads(text).dumps()
    assert T.TableSet.loads(text) == ts
    with pytest.raises(BundleError):
        T.TableSet.loads('{"precision": 16, "tables": [{"offset": 0, "freqs": [1, 2]}]}')
    with pytest.raises(BundleError):
        T.TableSet.loads("not json")


def test_table_sets_are_written_packed_and_the_list_form_of_older_bundles_still_reads() -> None:
    ts = T.TableSet(
        (T.table_from_counts([3, 2, 1], -1), T.table_from_pmf([0.9, 0.1], 4), T.table_from_counts([5] * 40, -20))
    )
    obj = json.loads(ts.dumps())
    assert set(obj) == {"precision", "packed"} and set(obj["packed"]) == {"offsets", "sizes", "freqs"}
    assert T.TableSet.loads(ts.dumps()) == ts
    listed = {"precision": 16, "tables": [{"offset": t.offset, "freqs": t.freqs.tolist()} for t in ts]}
    assert T.TableSet.from_json_obj(listed) == ts  # entropy.json versions 1-3
    wide = T.TableSet((T.table_from_counts([1, 2, 3], 7, precision=20),), precision=20)
    assert T.TableSet.loads(wide.dumps()) == wide  # 32-bit frequency words above precision 16


def test_a_corrupt_packed_table_set_is_a_bundle_error() -> None:
    good = json.loads(T.TableSet((T.table_from_counts([3, 2, 1], -1), T.table_from_counts([1, 1], 0))).dumps())
    other = json.loads(T.TableSet((T.table_from_counts([3, 2, 1, 4], -1),)).dumps())
    bad = [
        {**good, "packed": {**good["packed"], "freqs": "@@not base64@@"}},
        {**good, "packed": {**good["packed"], "freqs": base64.b64encode(b"not zlib").decode()}},
        {**good, "packed": {**good["packed"], "sizes": other["packed"]["sizes"]}},  # sizes disagree with the counts
        {**good, "packed": {**good["packed"], "freqs": other["packed"]["freqs"]}},  # other counts than the sizes say
        {**good, "packed": {k: v for k, v in good["packed"].items() if k != "offsets"}},
    ]
    for obj in bad:
        with pytest.raises(BundleError, match="malformed entropy table set"):
            T.TableSet.from_json_obj(obj)


def test_packed_photo_tables_are_a_fraction_of_the_list_form_and_code_identically() -> None:
    listed = (ASSETS / "bsds-gdn2d" / "entropy.json").read_bytes()
    tables = CodingTables.loads(listed)
    packed = tables.dumps()
    again = CodingTables.loads(packed)
    # packed from version 4 on (a bundle with context-coded residuals is version 6)
    assert json.loads(packed)["version"] == max(json.loads(listed)["version"], ENTROPY_VERSION_PACKED)
    assert again.dumps() == packed
    if json.loads(listed)["version"] < ENTROPY_VERSION_PACKED:  # the shipped list form, until re-shipped
        assert len(packed) < len(listed) / 4
    level = tables.latent_levels[2].context
    s = np.random.default_rng(0).integers(-3, 4, size=(2, level.channels, 5, 7)).astype(np.int32)
    enc_a, enc_b = C.StreamEncoder(), C.StreamEncoder()
    level.write(enc_a, s)
    again.latent_levels[2].context.write(enc_b, s)
    assert enc_a.finish() == enc_b.finish()


def _residual_stream(digits, max_error: int):
    """Real data: residuals of real digits against the per-pixel mean image, context-coded."""
    train, test = digits
    mean = train.astype(np.float32).mean(axis=0, keepdims=True)
    model = ResidualModel.fit(ContextSpec(0, 255), train, np.broadcast_to(mean, train.shape))
    x = test[:12]
    symbols, ids, _ = model.encode_residual(x, np.broadcast_to(mean, x.shape), max_error)
    return symbols, ids, model.tables(max_error)


@pytest.mark.parametrize("max_error", [0, 3])
def test_coded_size_within_one_percent_of_ideal_on_real_residuals(digits, max_error: int) -> None:
    symbols, ids, tables = _residual_stream(digits, max_error)
    assert symbols.size >= 9000
    data = C.encode(symbols, ids, tables)
    assert np.array_equal(C.decode(data, ids, tables), symbols)
    ideal = C.ideal_bits(symbols, ids, tables)
    assert ideal > 0
    assert len(data) * 8 <= ideal * 1.01, (len(data) * 8, ideal)
    # and the context tables actually earn their keep: better than a zeroth-order bound of the
    # same symbols under one table fitted to them (a real entropy, no cheating possible)
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    assert len(data) * 8 < -(counts * np.log2(p)).sum()


def test_every_int32_round_trips_through_the_escape() -> None:
    t = T.TableSet((T.table_from_pmf([0.2, 0.6, 0.2], offset=-1), T.table_from_counts([1], offset=INT32_MAX)))
    edge = [INT32_MIN, INT32_MIN + 1, -(2**16), -2, -1, 0, 1, 2, 3, 2**15, 2**16 + 1, INT32_MAX - 1, INT32_MAX]
    rng = np.random.default_rng(1)
    values = np.concatenate([edge, rng.integers(INT32_MIN, INT32_MAX, 2000, endpoint=True)]).astype(np.int32)
    for table in (0, 1):
        ids = np.full(values.size, table)
        data = C.encode(values, ids, t)
        assert np.array_equal(C.decode(data, ids, t), values)
        assert abs(len(data) * 8 - C.ideal_bits(values, ids, t)) < 0.01 * len(data) * 8 + 64


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tables=st.lists(
        st.tuples(st.integers(-1000, 1000), st.lists(st.integers(0, 1000), min_size=1, max_size=40)),
        min_size=1,
        max_size=5,
    ),
    data=st.data(),
)
def test_random_tables_and_symbols_round_trip(tables, data) -> None:
    ts = T.TableSet(tuple(T.table_from_counts(c, off) for off, c in tables))
    n = data.draw(st.integers(0, 300))
    ids = np.array(data.draw(st.lists(st.integers(0, len(ts) - 1), min_size=n, max_size=n)), dtype=np.int64)
    syms = np.array(
        data.draw(st.lists(st.integers(-1100, 1100) | st.integers(INT32_MIN, INT32_MAX), min_size=n, max_size=n)),
        dtype=np.int32,
    )
    payload = C.encode(syms, ids, ts)
    assert np.array_equal(C.decode(payload, ids, ts), syms)


def test_multi_call_stream_and_tiny_overhead() -> None:
    rng = np.random.default_rng(0)
    t = T.TableSet((T.table_from_pmf([0.1, 0.2, 0.4, 0.3], offset=-2),))
    over = []
    for n in (1, 5, 32, 200, 3000):
        for _ in range(20):
            a = (rng.choice(4, size=n, p=[0.1, 0.2, 0.4, 0.3]) - 2).astype(np.int32)
            b = (rng.choice(4, size=n, p=[0.1, 0.2, 0.4, 0.3]) - 2).astype(np.int32)
            enc = C.StreamEncoder()
            enc.encode(a, np.zeros(n, int), t)
            enc.encode(b, np.zeros(n, int), t)
            data = enc.finish()
            dec = C.StreamDecoder(data)
            assert np.array_equal(dec.decode(np.zeros(n, int), t), a)
            assert np.array_equal(dec.decode(np.zeros(n, int), t), b)
            ideal = (C.ideal_bits(a, np.zeros(n, int), t) + C.ideal_bits(b, np.zeros(n, int), t)) / 8
            over.append(len(data) - ideal)
    # the range coder's flush + byte rounding costs about one byte per stream, never more than 2
    assert np.mean(over) < 1.0 and max(over) < 2.0, (np.mean(over), max(over))
    assert C.encode(np.zeros(0, np.int32), np.zeros(0, int), t) == b""


def test_bad_inputs_and_corrupt_payloads() -> None:
    t = T.TableSet((T.table_from_pmf([0.5, 0.5], 0),))
    with pytest.raises(InputError):
        C.encode(np.array([1, 2]), np.array([0, 1]), t)
    with pytest.raises(InputError):
        C.encode(np.array([1.5]), np.array([0]), t)
    rng = np.random.default_rng(3)
    wide = T.TableSet((T.table_from_counts([1] * 3, 0),))
    for _ in range(200):  # garbage decodes to some symbols or a BitstreamError, never anything else
        junk = rng.bytes(int(rng.integers(0, 40)))
        try:
            out = C.decode(junk, np.zeros(50, int), wide)
            assert out.shape == (50,)
        except BitstreamError:
            pass


def test_throughput_report() -> None:
    """Symbols/s for a batch-1024 MNIST-like payload (32 latent tables + 16 residual contexts)."""
    rng = np.random.default_rng(0)
    lat = T.TableSet(tuple(T.table_from_pmf(np.exp(-np.abs(np.arange(-20, 21)) / 2.0) / 4.3, -20) for _ in range(32)))
    res = T.TableSet(
        tuple(T.table_from_pmf(np.exp(-np.abs(np.arange(-8, 9)) * (1 + c / 4)) / 3, -8) for c in range(16))
    )
    n = 1024
    ls = np.clip(np.rint(rng.laplace(0, 2, (n, 32))), -25, 25).astype(np.int32).ravel()
    lid = np.tile(np.arange(32), n)
    rs = np.clip(np.rint(rng.laplace(0, 0.7, n * 784)), -12, 12).astype(np.int32)
    rid = rng.integers(0, 16, n * 784)
    t0 = time.perf_counter()
    enc = C.StreamEncoder()
    enc.encode(ls, lid, lat)
    enc.encode(rs, rid, res)
    data = enc.finish()
    t1 = time.perf_counter()
    dec = C.StreamDecoder(data)
    assert np.array_equal(dec.decode(lid, lat), ls)
    assert np.array_equal(dec.decode(rid, res), rs)
    t2 = time.perf_counter()
    total = ls.size + rs.size
    enc_rate, dec_rate = total / (t1 - t0), total / (t2 - t1)
    print(f"\nentropy coder: encode {enc_rate / 1e6:.1f} M symbols/s, decode {dec_rate / 1e6:.1f} M symbols/s")
    assert enc_rate > 2e6 and dec_rate > 2e6  # loose floor: 2 shared CPU cores


def test_tiny_calls_write_and_read_the_same_stream_as_the_vectorised_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Context coding makes one call per position with a few symbols each; those take a plain-Python
    path. It must produce byte-identical streams (escapes included) and decode either way."""
    rng = np.random.default_rng(3)
    tables = T.TableSet(tuple(T.table_from_counts(rng.integers(0, 50, size=9), offset=o, escape_count=1)
                              for o in (-4, 0, 3, -1)))
    calls = []
    for _ in range(300):
        n = int(rng.integers(1, C.TINY_CALL_SYMBOLS + 1))
        sym = rng.integers(-6, 14, size=n).astype(np.int32)
        sym[rng.random(n) < 0.03] = rng.integers(-(2**31), 2**31 - 1, dtype=np.int64)  # escapes, extreme ones too
        calls.append((sym, rng.integers(0, len(tables), size=n).astype(np.int32)))

    def stream() -> bytes:
        enc = C.StreamEncoder()
        for sym, ids in calls:
            enc.encode(sym, ids, tables)
        return enc.finish()

    def read(data: bytes) -> list[np.ndarray]:
        dec = C.StreamDecoder(data)
        return [dec.decode(ids, tables) for _, ids in calls]

    tiny = stream()
    monkeypatch.setattr(C, "TINY_CALL_SYMBOLS", 0)  # every call through the vectorised path
    vectorised = stream()
    assert tiny == vectorised
    assert all(np.array_equal(a, s) for a, (s, _) in zip(read(tiny), calls, strict=True))
    monkeypatch.undo()
    assert all(np.array_equal(a, s) for a, (s, _) in zip(read(tiny), calls, strict=True))


def _trim_by_decoding(data: bytes, calls: list[tuple[np.ndarray, np.ndarray]], tables: T.TableSet) -> bytes:
    """The old tail trim, kept as the oracle: each candidate checked by decoding the stream again."""
    full = int.from_bytes(data, "big")
    for drop in (3, 2, 1):
        keep = len(data) - drop
        if keep < 1:
            continue
        prefix = (full >> (8 * drop)) + 1  # round the stream's value up to `keep` bytes
        if prefix >> (8 * keep):
            continue
        cand = prefix.to_bytes(keep, "big").rstrip(b"\x00")
        try:
            dec = C.StreamDecoder(cand)
            if all(np.array_equal(dec.decode(ids, tables), s) for s, ids in calls):
                return cand
        except BitstreamError:
            pass
    return data


def test_the_arithmetic_tail_trim_chooses_the_bytes_trial_decoding_chose() -> None:
    """trim_tail checks each candidate against the coder's final interval instead of decoding the
    stream again: on thousands of random multi-call streams it must pick the very same bytes."""
    rng = np.random.default_rng(7)
    checked = trimmed = 0
    for _ in range(1500):
        k = int(rng.integers(2, 60))
        tables = T.TableSet(tuple(T.table_from_counts(rng.integers(1, 1000, size=k), -(k // 2)) for _ in range(3)))
        enc = C.StreamEncoder()
        calls = []
        for _call in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 300))
            calls.append((rng.integers(-(k // 2) - 3, k // 2 + 3, size=n).astype(np.int32), rng.integers(0, 3, size=n)))
            enc.encode(*calls[-1], tables)
        pos, (lower, width) = enc._enc.pos()
        words = enc._enc.get_compressed()
        data = C._words_to_bytes(words)
        if len(data) <= 1:
            continue
        fast = C.trim_tail(words, data, pos, lower, width)
        assert fast == _trim_by_decoding(data, calls, tables)
        checked += 1
        trimmed += len(fast) < len(data)
    assert checked > 1400 and trimmed > checked // 2  # it does trim, and identically
