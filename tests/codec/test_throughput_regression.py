"""The coding hot path must stay bit-exact while it gets faster.

tests/data/throughput/regression.npz pins payload bytes written by the coder as it was before
the throughput work (see make_fixture.py there): real latents and decoder outputs of a tiny
trained MNIST bundle, plus synthetic inputs that exercise every in-range value and the escape
path (int32 extremes). Every optimisation of coding/coder.py / residual.py / payload.py /
quantize.py must reproduce these bytes and decode them to the same samples, or packets already
on the wire would stop decoding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.codec import Codec
from latentwire.codec.coding import coder as C
from latentwire.codec.coding import tables as T
from latentwire.codec.coding.payload import CodingTables, PayloadReader, encode_payload
from latentwire.codec.coding.quantize import channel_index, quantize
from latentwire.codec.coding.residual import choose_shifts
from latentwire.codec.errors import InputError

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "data" / "throughput"


def _load_fixture():
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE_DIR / "make_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    with np.load(FIXTURE_DIR / "regression.npz") as z:
        data = {k: z[k] for k in z.files}
    return mod, data


MAKE, DATA = _load_fixture()
TABLES = CodingTables.loads(bytes(DATA["entropy_json"]))
AXIS = int(DATA["channel_axis"])
CASES = MAKE.cases()


def test_fixture_covers_the_paths_it_claims() -> None:
    """Escapes really occur, the tiled case passes the tail-trimming limit, levels differ."""
    tabs = TABLES.latent
    esc = DATA["esc_symbols"].astype(np.int64)
    ids = channel_index(esc.shape[1:], AXIS, 1)
    lo = np.array([tabs[i].lo for i in ids])
    hi = np.array([tabs[i].hi for i in ids])
    assert ((esc < lo) | (esc > hi)).sum() > 100
    assert esc.min() == -(2**31) and esc.max() == 2**31 - 1
    assert 96 * DATA["x_raw"][0].size > C.TRIM_MAX_SYMBOLS
    # frames on the default bucket grid only (n <= 3) and frames on several grids (n = 24)
    shifts = choose_shifts(TABLES.residual.spec, DATA["raw_float"])[0]
    assert not shifts[:3].any() and len(set(shifts.tolist())) > 2
    sizes = {name: DATA[f"{name}/payload"].size for name, *_ in CASES}
    assert sizes["digits-n24-d0"] > sizes["digits-n24-d3"] > sizes["digits-n24-d16"] > sizes["digits-n24-dNone"]


# the coder has a vectorised path for many small groups and a per-group path for big ones; force
# each in turn so both must reproduce every pinned payload (escapes included)
PATHS = {"auto": None, "per-group": 0, "vectorised": 1 << 40}


@pytest.fixture(params=list(PATHS), ids=list(PATHS))
def coder_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if PATHS[request.param] is not None:
        monkeypatch.setattr(C, "SMALL_GROUP_SYMBOLS", PATHS[request.param])
    return request.param


@pytest.mark.parametrize("name,which,n,d", CASES, ids=[c[0] for c in CASES])
def test_payload_bytes_are_pinned(name: str, which: str, n: int, d: int | None, coder_path: str) -> None:
    s, x, f = MAKE.inputs(DATA, which, n)
    payload, info = encode_payload(
        TABLES, s, AXIS, x_raw=x if d is not None else None, raw_float=f if d is not None else None, max_error=d
    )
    assert payload == DATA[f"{name}/payload"].tobytes()
    if d is not None:
        assert np.array_equal(info.recon, DATA[f"{name}/recon"])


@pytest.mark.parametrize("name,which,n,d", CASES, ids=[c[0] for c in CASES])
def test_pinned_payloads_decode_identically(name: str, which: str, n: int, d: int | None, coder_path: str) -> None:
    s, x, f = MAKE.inputs(DATA, which, n)
    reader = PayloadReader(DATA[f"{name}/payload"].tobytes(), TABLES)
    got = reader.latents(n, s.shape[1:], AXIS)
    assert got.dtype == np.int32 and np.array_equal(got, s)
    if d is not None:
        rec = reader.residual(f, d)
        assert rec.shape == x.shape
        assert np.array_equal(rec, DATA[f"{name}/recon"])
        assert int(np.abs(rec.astype(np.int64) - x.astype(np.int64)).max()) <= d


def _scattered(tables: T.TableSet, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Table ids scattered over every table (not the latent/residual layouts) and symbols spanning
    each table's range plus a few escapes, from integer arithmetic only (no RNG stream to drift)."""
    i = np.arange(n, dtype=np.int64)
    ids = (i * 7919 + (i * i) % 13) % len(tables)
    lo = np.array([t.lo for t in tables], dtype=np.int64)[ids]
    span = np.array([t.n_symbols for t in tables], dtype=np.int64)[ids] + 4
    syms = lo - 2 + (i * 2654435761) % span
    syms[::997] = (i[::997] - 500) * 4_000_000  # far escapes, both signs
    return syms.astype(np.int32), ids


PINNED_SCATTERED = "7a817236397fa05ff0ad7d01f0d095a87d343c8cbdaf6677ab4c8549e956f2c3"


def test_scattered_table_ids_are_pinned(coder_path: str) -> None:
    import hashlib

    tables = TABLES.residual.tables(2)
    syms, ids = _scattered(tables, 50_000)
    enc = C.StreamEncoder()
    enc.encode(syms[:20_000], ids[:20_000], tables)  # two calls into one stream
    enc.encode(syms[20_000:], ids[20_000:], tables)
    payload = enc.finish()
    assert hashlib.sha256(payload).hexdigest() == PINNED_SCATTERED
    dec = C.StreamDecoder(payload)
    assert np.array_equal(dec.decode(ids[:20_000], tables), syms[:20_000])
    assert np.array_equal(dec.decode(ids[20_000:], tables), syms[20_000:])


def test_quantize_rounding_is_pinned() -> None:
    y = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, -3.7, 1e6]], dtype=np.float32)
    assert quantize(y).tolist() == [[-2, -2, 0, 0, 2, 2, 0, -4, 1000000]]
    assert quantize(y).dtype == np.int32


def test_sessions_do_not_spin(tiny_bundle: Path) -> None:
    """Spinning intra-op threads burn the cores a busy sender shares (measured in BENCHMARKS.md)."""
    codec = Codec.load(tiny_bundle, provider="cpu")
    for session in (codec.encoder.session, codec.decoder.session):
        opts = session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("quality", [0, 1, 5])
def test_codec_round_trip_on_tiny_bundle(tiny_bundle: Path, quality: int) -> None:
    """End to end through the real graphs: decode_many of mixed packets equals decoding each alone,
    and residual levels keep their bound."""
    from latentwire.codec.sources import load_mnist, sample_data_root

    codec = Codec.load(tiny_bundle, provider="cpu", threads=1)
    raw = load_mnist(sample_data_root() / "mnist", split="test").samples[:40]
    q = min(quality, len(codec.qualities) - 1)
    packets = [codec.encode(raw[:1], q), codec.encode(raw[1:33], q), codec.encode(raw[33:], q)]
    many = codec.decode_many(packets)
    for p, m in zip(packets, many, strict=True):
        assert np.array_equal(codec.decode(p), m)
    out = np.concatenate(many)
    assert out.shape == raw.shape and out.dtype == raw.dtype
    bound = codec.qualities[q].max_error
    if bound is not None:
        assert int(np.abs(out.astype(np.int64) - raw).max()) <= bound


@pytest.mark.parametrize("latent_shape,axis", [((16,), 0), ((4, 3, 5), 0), ((3, 7), -1), ((2, 3, 4), 1)])
def test_grouped_latent_path_equals_generic_coding(latent_shape: tuple[int, ...], axis: int) -> None:
    """encode_payload / PayloadReader.latents group by channel with a transpose; that must be the
    very stream the generic per-symbol-id coder writes for FORMAT.md's channel layout."""
    n_ch = latent_shape[axis % len(latent_shape)]
    tables = T.TableSet(tuple(TABLES.latent[i] for i in range(n_ch)), precision=TABLES.latent.precision)
    coding = CodingTables(latent=tables)
    n = 5
    i = np.arange(n * int(np.prod(latent_shape)), dtype=np.int64)
    syms = ((i * 2654435761) % 9 - 4).reshape((n, *latent_shape))
    syms.flat[::17] = 1000 + i[::17]  # escapes
    payload, _ = encode_payload(coding, syms, axis)
    generic = C.encode(syms.reshape(-1), channel_index(latent_shape, axis, n), tables)
    assert payload == generic
    got = PayloadReader(payload, coding).latents(n, latent_shape, axis)
    assert got.dtype == np.int32 and np.array_equal(got, syms)


def test_grouped_coding_refuses_what_generic_refuses() -> None:
    with pytest.raises(InputError):
        encode_payload(TABLES, np.full((1, 16), 2**31, dtype=np.int64), AXIS)
    with pytest.raises(InputError):
        encode_payload(TABLES, np.zeros((1, 16), dtype=np.float32), AXIS)
    enc = C.StreamEncoder()
    with pytest.raises(InputError):
        enc.encode_grouped([(2, np.zeros(3, np.int32)), (1, np.zeros(3, np.int32))], TABLES.latent)
