"""Fixed integer frequency tables: the entropy models of every symbol latentwire sends.

Why integer tables: sender and receiver must build bit-identical coding models on any machine.
The tables are computed once (at calibration) with integer arithmetic, stored as integers, and
handed to constriction as ``freqs / 2**precision`` in float64. Those floats are dyadic, so every
step of constriction's model construction (``perfect=False``: cumsum, multiply by
``2**24 - n``, truncate, add the symbol index) is exact in IEEE double arithmetic: the 24-bit
fixed-point model is a pure function of the integers, never of the CPU, BLAS or numpy build.

Why ``perfect=False``: ``perfect=True`` runs an iterative, float-comparison-driven optimisation
(~40 us for a 600-symbol table against ~1.5 us) whose result depends on a sort of float "wins";
``perfect=False`` is a closed-form, exact map from our 16-bit table to constriction's 24-bit one,
costing at most ``n / 2**24`` relative probability per symbol - far below 0.1 % of the rate.

Escapes: every table's last entry is ESCAPE (coder.py codes what follows it). Tables never touch
the coder's state; coder.py never builds a table.

Why table sets are stored packed (entropy.json version 4): a photo bundle holds ~125,000 context
tables, 15 MB as JSON lists of numbers, which every subscriber downloads with the decoder. The same
integers as zlib-compressed little-endian arrays in base64 take ~2.7 MB; the list form of older
bundles still reads.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import constriction
import numpy as np

from ..errors import BundleError, InputError

DEFAULT_PRECISION = 16
MAX_PRECISION = 24  # constriction's default range coder models probabilities with 24 bits
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

_Categorical = constriction.stream.model.Categorical
# The packed form of a table set: each array little-endian, zlib-compressed, then base64. Frequencies
# are below 2**precision: 16-bit words up to precision 16, else 32-bit.
PACKED_DTYPES = {"offsets": "<i4", "sizes": "<u4"}
_ZLIB_LEVEL = 9

@dataclass(frozen=True, eq=False)
class FreqTable:
    """Integer frequencies for symbols offset .. offset+len(freqs)-2, then ESCAPE (last entry).

    Invariants (checked): every entry >= 1 (no symbol ever costs infinity), the sum is exactly
    2**precision, at least one in-range symbol.
    """

    offset: int
    freqs: np.ndarray
    precision: int = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        f = np.asarray(self.freqs)
        if f.ndim != 1 or f.size < 2:
            raise InputError(f"a FreqTable needs >= 2 entries (symbols + ESCAPE), got shape {f.shape}")
        if f.dtype.kind not in "iu":
            raise InputError(f"FreqTable freqs must be integers, got dtype {f.dtype}")
        if not 1 <= self.precision <= MAX_PRECISION:
            raise InputError(f"precision must be in 1..{MAX_PRECISION}, got {self.precision}")
        f64 = f.astype(np.int64)
        if f64.min() < 1:
            raise InputError("FreqTable entries must all be >= 1 (floored): an unseen symbol must stay codable")
        if int(f64.sum()) != 1 << self.precision:
            raise InputError(f"FreqTable freqs sum to {int(f64.sum())}, expected 2**{self.precision}")
        off = int(self.offset)
        if off < INT32_MIN or off + f.size - 2 > INT32_MAX:
            raise InputError(f"FreqTable range [{off}, {off + f.size - 2}] leaves int32")
        frozen = f64.astype(np.uint32)
        frozen.setflags(write=False)
        object.__setattr__(self, "offset", off)
        object.__setattr__(self, "freqs", frozen)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FreqTable):
            return NotImplemented
        return (
            self.offset == other.offset
            and self.precision == other.precision
            and np.array_equal(self.freqs, other.freqs)
        )

    def __hash__(self) -> int:
        return hash((self.offset, self.precision, self.freqs.tobytes()))

    @property
    def n_symbols(self) -> int:
        """In-range symbols (without ESCAPE)."""
        return int(self.freqs.size - 1)

    @property
    def lo(self) -> int:
        return self.offset

    @property
    def hi(self) -> int:
        return self.offset + self.n_symbols - 1

    @property
    def escape_index(self) -> int:
        return self.n_symbols

    @cached_property
    def probabilities(self) -> np.ndarray:
        """freqs / 2**precision in float64: exactly representable, so machine independent."""
        return self.freqs.astype(np.float64) / float(1 << self.precision)

    @cached_property
    def model(self) -> Any:
        """The constriction model (built once per table; construction is ~1 us)."""
        return _Categorical(self.probabilities, perfect=False)

    @cached_property
    def cost_bits(self) -> np.ndarray:
        """-log2 p per table index (the ideal cost under this table)."""
        return self.precision - np.log2(self.freqs.astype(np.float64))


def _distribute(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer-only: 1 per entry plus ``total - n`` shared proportionally to weights, remainder by
    largest fractional part (ties -> lower index). Deterministic on every machine."""
    w = np.asarray(weights, dtype=np.int64)
    n = w.size
    free = total - n
    c = int(w.sum())
    if c == 0:
        out = np.full(n, total // n, dtype=np.int64)
        out[: total - int(out.sum())] += 1
        return out
    # keep c * free inside int64: shift counts down (integer) if they are astronomically large
    shift = 0
    while (c >> shift) * max(free, 1) >= 1 << 62:
        shift += 1
    if shift:
        w = w >> shift
        c = int(w.sum())
        if c == 0:
            return _distribute(w, total)
    prod = w * free
    base = prod // c
    frac = prod % c
    out = 1 + base
    rem = total - int(out.sum())
    if rem:
        order = np.lexsort((np.arange(n), -frac))
        out[order[:rem]] += 1
    return out


def table_from_counts(
    counts: Sequence[int] | np.ndarray,
    offset: int,
    precision: int = DEFAULT_PRECISION,
    escape_count: int = 0,
) -> FreqTable:
    """Histogram of symbols offset.. -> a floored table (every symbol and ESCAPE >= 1/2**precision).

    Pure integer arithmetic, so the same counts give the same table everywhere.
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.size < 1:
        raise InputError(f"counts must be a non-empty 1-D array, got shape {c.shape}")
    if c.dtype.kind not in "iu":
        if c.dtype.kind == "f" and np.all(np.isfinite(c)) and np.all(c == np.rint(c)):
            c = c.astype(np.int64)
        else:
            raise InputError(f"counts must be integers, got dtype {c.dtype}")
    if c.size and int(c.min()) < 0 or escape_count < 0:
        raise InputError("counts must be >= 0")
    if not 1 <= precision <= MAX_PRECISION:
        raise InputError(f"precision must be in 1..{MAX_PRECISION}, got {precision}")
    w = np.concatenate([c.astype(np.int64), np.array([int(escape_count)], dtype=np.int64)])
    total = 1 << precision
    if w.size > total:
        raise InputError(f"{w.size} entries cannot all get >= 1 of 2**{precision}; raise the precision")
    return FreqTable(offset=int(offset), freqs=_distribute(w, total).astype(np.uint32), precision=precision)


_PMF_UNIT_BITS = 40


def table_from_pmf(
    probs: Sequence[float] | np.ndarray, offset: int, precision: int = DEFAULT_PRECISION
) -> FreqTable:
    """Probabilities of symbols offset.. (tail mass 1 - sum goes to ESCAPE) -> floored table.

    The only float step is the elementwise conversion to integer units of 2**-40 (exact scaling
    by a power of two, then round-half-even); everything after is integer arithmetic.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size < 1:
        raise InputError(f"probs must be a non-empty 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1.0:
        raise InputError("probs must be finite and within [0, 1]")
    units = np.rint(p * float(1 << _PMF_UNIT_BITS)).astype(np.int64)
    escape = max(0, (1 << _PMF_UNIT_BITS) - int(units.sum()))
    return table_from_counts(units, offset, precision, escape_count=escape)


@dataclass(frozen=True, eq=False)
class _CodingMeta:
    lo: np.ndarray
    hi: np.ndarray
    escape: np.ndarray
    models: tuple[Any, ...]


@dataclass(frozen=True)
class TableSet:
    """An ordered list of tables sharing one precision; ``table_ids`` index into it."""

    tables: tuple[FreqTable, ...]
    precision: int = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        tabs = tuple(self.tables)
        for i, t in enumerate(tabs):
            if not isinstance(t, FreqTable):
                raise InputError(f"TableSet entry {i} is not a FreqTable")
            if t.precision != self.precision:
                raise InputError(f"table {i} has precision {t.precision}, the set {self.precision}")
        object.__setattr__(self, "tables", tabs)

    def __len__(self) -> int:
        return len(self.tables)

    @cached_property
    def coding_meta(self) -> _CodingMeta:
        """Per-table lo / hi / escape index as arrays and the constriction models, built once:
        the coder touches them per group, and attribute lookups per group add up at batch 1."""
        return _CodingMeta(
            lo=np.array([t.lo for t in self.tables], dtype=np.int64),
            hi=np.array([t.hi for t in self.tables], dtype=np.int64),
            escape=np.array([t.escape_index for t in self.tables], dtype=np.int64),
            models=tuple(t.model for t in self.tables),
        )

    def __getitem__(self, i: int) -> FreqTable:
        return self.tables[i]

    def __iter__(self):
        return iter(self.tables)

    def to_json_obj(self) -> dict[str, Any]:
        """The packed form: every table's offset, size (entries incl. ESCAPE) and the frequencies of
        all tables concatenated in order (PACKED_DTYPES, freq_dtype)."""
        arrays = {
            "offsets": np.array([t.offset for t in self.tables], dtype=np.int64),
            "sizes": np.array([t.freqs.size for t in self.tables], dtype=np.int64),
            "freqs": np.concatenate([t.freqs for t in self.tables]) if self.tables else np.zeros(0, np.int64),
        }
        dtypes = {**PACKED_DTYPES, "freqs": freq_dtype(self.precision)}
        return {"precision": self.precision, "packed": {k: pack_array(v, dtypes[k]) for k, v in arrays.items()}}

    def dumps(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal sets give equal bytes (and hashes)."""
        return json.dumps(self.to_json_obj(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json_obj(cls, obj: Any) -> TableSet:
        """The packed form, or the list form ({"offset", "freqs"} per table) of entropy versions 1-3."""
        try:
            precision = int(obj["precision"])
            if "packed" in obj:
                return cls(tables=_unpack_tables(obj["packed"], precision), precision=precision)
            tables = tuple(
                FreqTable(offset=int(t["offset"]), freqs=np.asarray(t["freqs"], dtype=np.int64), precision=precision)
                for t in obj["tables"]
            )
            return cls(tables=tables, precision=precision)
        except (KeyError, TypeError, ValueError, OverflowError, InputError, binascii.Error, zlib.error) as exc:
            raise BundleError(f"malformed entropy table set ({exc}); re-run calibration for this bundle") from exc

    @classmethod
    def loads(cls, text: str | bytes) -> TableSet:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"entropy table set is not valid JSON ({exc})") from exc
        return cls.from_json_obj(obj)


def freq_dtype(precision: int) -> str:
    return "<u2" if precision <= 16 else "<u4"


def pack_array(values: np.ndarray, dtype: str) -> str:
    """One integer array in the packed form of entropy.json (little-endian ``dtype``, zlib, base64):
    shared by every packed section, so all of them read and validate the same way."""
    return base64.b64encode(zlib.compress(values.astype(dtype).tobytes(), _ZLIB_LEVEL)).decode("ascii")


def unpack_array(text: str, dtype: str) -> np.ndarray:
    """The inverse of ``pack_array``, as int64 (raises ValueError, binascii.Error or zlib.error)."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text, validate=True)), dtype=dtype).astype(np.int64)


def _unpack_tables(packed: Any, precision: int) -> tuple[FreqTable, ...]:
    dtypes = {**PACKED_DTYPES, "freqs": freq_dtype(precision)}
    offsets, sizes, freqs = (unpack_array(packed[k], dtypes[k]) for k in ("offsets", "sizes", "freqs"))
    if offsets.size != sizes.size or int(sizes.sum()) != freqs.size:
        raise ValueError(
            f"{offsets.size} offsets, {sizes.size} sizes summing to {int(sizes.sum())}, {freqs.size} frequencies"
        )
    ends = np.cumsum(sizes)
    return tuple(FreqTable(offset=int(o), freqs=freqs[e - n : e], precision=precision)
                 for o, n, e in zip(offsets.tolist(), sizes.tolist(), ends.tolist(), strict=True))


def as_table_set(tables: TableSet | Iterable[FreqTable]) -> TableSet:
    if isinstance(tables, TableSet):
        return tables
    tabs = tuple(tables)
    if not tabs:
        raise InputError("empty table list")
    return TableSet(tabs, precision=tabs[0].precision)


def latent_tables(pmf_offsets: Sequence[int], pmf_probs: Sequence[Sequence[float]], precision: int) -> TableSet:
    """Manifest latent.pmf -> one floored integer table per channel (tail mass -> ESCAPE)."""
    if len(pmf_offsets) != len(pmf_probs) or not pmf_offsets:
        raise InputError("manifest latent.pmf needs one offset and one probability list per channel")
    return TableSet(
        tuple(
            table_from_pmf(np.asarray(p, dtype=np.float64), int(o), precision)
            for o, p in zip(pmf_offsets, pmf_probs, strict=True)
        ),
        precision=precision,
    )


def step_tables(
    pmf_offsets: Sequence[int], pmf_probs: Sequence[Sequence[float]], step: float, precision: int
) -> TableSet:
    """Tables for symbols round(y / step), integrated from the learned density.

    The manifest holds p_c(j) = P(y in [j-0.5, j+0.5)); within a unit bin the density is taken as
    flat, so P(round(y/step) = k) is the piecewise-linear CDF's mass over [(k-0.5)step, (k+0.5)step).
    Computed once here and stored as integers, so receivers never redo this float arithmetic.
    """
    tables = []
    for o, probs in zip(pmf_offsets, pmf_probs, strict=True):
        p = np.asarray(probs, dtype=np.float64)
        edges = int(o) - 0.5 + np.arange(p.size + 1)
        cdf = np.concatenate([[0.0], np.cumsum(p)])
        k_lo = int(np.floor(edges[0] / step + 0.5))
        k_hi = int(np.ceil(edges[-1] / step - 0.5))
        ks = np.arange(k_lo, k_hi + 1)
        mass = np.interp((ks + 0.5) * step, edges, cdf) - np.interp((ks - 0.5) * step, edges, cdf)
        tables.append(table_from_pmf(np.maximum(mass, 0.0) / max(mass.sum(), 1e-300), k_lo, precision))
    return TableSet(tuple(tables), precision=precision)
