"""Fixed integer frequency tables and range coding (constriction) for every symbol latentwire sends.

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

Escapes: every table's last entry is ESCAPE. A symbol outside the table's range is coded as
ESCAPE followed by its distance beyond the range (folded to one unsigned number u, then the bit
length of u with a uniform model over 0..34 and the bits below u's leading one in uniform 16-bit
chunks). Any int32 round-trips; an out-of-range symbol costs ``-log2 p(ESC) + log2 35 + len(u)-1``.

Coding is vectorised: one ``encode`` call groups its symbols by table (stable order) and hands
each group to constriction as one array, so Python never loops per symbol. The payload is the
coder's 32-bit words as a big-endian byte string, trailing zero bytes removed (the decoder pads
zeros back, which is exactly what constriction's decoder assumes past the end). Small streams are
additionally shortened by up to 3 bytes: the final word is rounded up to fewer significant bytes
when a trial decode proves the shorter stream decodes identically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Sequence

import constriction
import numpy as np

from .errors import BitstreamError, BundleError, InputError

DEFAULT_PRECISION = 16
MAX_PRECISION = 24  # constriction's default range coder models probabilities with 24 bits
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

_ESC_NBITS_SIZE = 35  # folded escape distance u < 2**34 -> bit length 0..34
_ESC_CHUNK = 16
# Streams up to this many symbols get the trial-decode tail trimming (1-3 bytes saved, costs up to
# three extra decodes, which only matters for big packets where 3 bytes do not).
TRIM_TRIAL_MAX_SYMBOLS = 1 << 16

_RangeEncoder = constriction.stream.queue.RangeEncoder
_RangeDecoder = constriction.stream.queue.RangeDecoder
_Categorical = constriction.stream.model.Categorical
_Uniform = constriction.stream.model.Uniform
_ESC_NBITS_MODEL = _Uniform(_ESC_NBITS_SIZE)
_UNIFORM_FAMILY = _Uniform()


# --------------------------------------------------------------------------------------------
# tables


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

    def to_json_obj(self) -> dict[str, Any]:
        return {"offset": self.offset, "freqs": [int(v) for v in self.freqs]}


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

    def __getitem__(self, i: int) -> FreqTable:
        return self.tables[i]

    def __iter__(self):
        return iter(self.tables)

    def to_json_obj(self) -> dict[str, Any]:
        return {"precision": self.precision, "tables": [t.to_json_obj() for t in self.tables]}

    def dumps(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal sets give equal bytes (and hashes)."""
        return json.dumps(self.to_json_obj(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json_obj(cls, obj: Any) -> "TableSet":
        try:
            precision = int(obj["precision"])
            tables = tuple(
                FreqTable(offset=int(t["offset"]), freqs=np.asarray(t["freqs"], dtype=np.int64), precision=precision)
                for t in obj["tables"]
            )
            return cls(tables=tables, precision=precision)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise BundleError(f"malformed entropy table set ({exc}); re-run calibration for this bundle") from exc

    @classmethod
    def loads(cls, text: str | bytes) -> "TableSet":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise BundleError(f"entropy table set is not valid JSON ({exc})") from exc
        return cls.from_json_obj(obj)


def as_table_set(tables: TableSet | Iterable[FreqTable]) -> TableSet:
    if isinstance(tables, TableSet):
        return tables
    tabs = tuple(tables)
    if not tabs:
        raise InputError("empty table list")
    return TableSet(tabs, precision=tabs[0].precision)


# --------------------------------------------------------------------------------------------
# grouping helpers


def _check_ids(table_ids: np.ndarray, n: int, n_tables: int) -> np.ndarray:
    tid = np.asarray(table_ids)
    if tid.ndim != 1 or tid.size != n:
        raise InputError(f"table_ids must be 1-D with one id per symbol ({n}), got shape {tid.shape}")
    if n == 0:
        return tid.astype(np.intp)
    if tid.dtype.kind not in "iu":
        raise InputError(f"table_ids must be integers, got dtype {tid.dtype}")
    lo, hi = int(tid.min()), int(tid.max())
    if lo < 0 or hi >= n_tables:
        raise InputError(f"table_ids span [{lo}, {hi}] but only {n_tables} tables exist")
    # small dtypes make numpy's stable argsort a radix sort (linear time)
    if n_tables <= 256:
        return tid.astype(np.uint8, copy=False)
    if n_tables <= 65536:
        return tid.astype(np.uint16, copy=False)
    return tid.astype(np.intp, copy=False)


def _groups(tid: np.ndarray, n_tables: int) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
    """(order or None if one table, [(table, start, stop) in sorted order])."""
    first = int(tid[0])
    if tid.size and (tid == first).all():
        return None, [(first, 0, int(tid.size))]
    counts = np.bincount(tid, minlength=n_tables)
    order = np.argsort(tid, kind="stable")
    stops = np.cumsum(counts)
    out = []
    for t in np.flatnonzero(counts):
        out.append((int(t), int(stops[t] - counts[t]), int(stops[t])))
    return order, out


def _fold_escape(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance beyond the table range, folded to u >= 0: above -> even, below -> odd."""
    return np.where(v > hi, 2 * (v - hi - 1), 2 * (lo - 1 - v) + 1)


def _bit_length(u: np.ndarray) -> np.ndarray:
    return np.where(u > 0, np.frexp(u.astype(np.float64))[1], 0).astype(np.int64)


def _chunk_layout(nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For mantissas of nb-1 bits: (mask (n, k) of present chunks, bits per chunk (n, k))."""
    mbits = np.maximum(nb - 1, 0)
    k = max(1, -(-int(mbits.max(initial=0)) // _ESC_CHUNK))
    starts = np.arange(k, dtype=np.int64) * _ESC_CHUNK
    bits = np.clip(mbits[:, None] - starts[None, :], 0, _ESC_CHUNK)
    return bits > 0, bits


# --------------------------------------------------------------------------------------------
# coder


class StreamEncoder:
    """One range-coded stream, filled by one or more ``encode`` calls (e.g. latents, then residual
    contexts, then residuals); the decoder repeats the same calls with the same table_ids."""

    def __init__(self) -> None:
        self._enc = _RangeEncoder()
        self._calls: list[tuple[np.ndarray, np.ndarray, TableSet]] = []
        self._n = 0

    @property
    def n_symbols(self) -> int:
        return self._n

    def encode(self, symbols: np.ndarray, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> None:
        tables = as_table_set(tables)
        s = np.asarray(symbols)
        if s.ndim != 1:
            raise InputError(f"symbols must be 1-D, got shape {s.shape}")
        if s.size and s.dtype.kind not in "iu":
            raise InputError(f"symbols must be integers, got dtype {s.dtype}")
        tid = _check_ids(table_ids, s.size, len(tables))
        if s.size == 0:
            return
        s64 = s.astype(np.int64, copy=False)
        if int(s64.min()) < INT32_MIN or int(s64.max()) > INT32_MAX:
            raise InputError("symbols must fit in int32")
        order, groups = _groups(tid, len(tables))
        ss = s64 if order is None else s64[order]
        esc_v, esc_lo, esc_hi = [], [], []
        for t, a, b in groups:
            tab = tables[t]
            idx = ss[a:b] - tab.offset
            out = (idx < 0) | (idx >= tab.n_symbols)
            if out.any():
                v = ss[a:b][out]
                esc_v.append(v)
                esc_lo.append(np.full(v.size, tab.lo, dtype=np.int64))
                esc_hi.append(np.full(v.size, tab.hi, dtype=np.int64))
                idx = np.where(out, tab.escape_index, idx)
            self._enc.encode(idx.astype(np.int32), tab.model)
        if esc_v:
            u = _fold_escape(np.concatenate(esc_v), np.concatenate(esc_lo), np.concatenate(esc_hi))
            nb = _bit_length(u)
            self._enc.encode(nb.astype(np.int32), _ESC_NBITS_MODEL)
            mask, bits = _chunk_layout(nb)
            if mask.any():
                mant = u - np.where(nb > 0, np.left_shift(1, np.maximum(nb - 1, 0)), 0)
                shifts = np.arange(mask.shape[1], dtype=np.int64) * _ESC_CHUNK
                chunks = (mant[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
                self._enc.encode(
                    chunks[mask].astype(np.int32), _UNIFORM_FAMILY, (1 << bits[mask]).astype(np.int32)
                )
        self._n += s.size
        if self._n <= TRIM_TRIAL_MAX_SYMBOLS:  # kept only for the small-stream tail trimming
            self._calls.append((s.astype(np.int32), np.asarray(table_ids), tables))

    def finish(self) -> bytes:
        """The payload bytes: big-endian words, trailing zeros dropped, small streams tail-trimmed."""
        data = _words_to_bytes(self._enc.get_compressed())
        if 0 < self._n <= TRIM_TRIAL_MAX_SYMBOLS and len(data) > 1:
            data = self._trim_tail(data)
        return data

    def _decodes_same(self, data: bytes) -> bool:
        try:
            dec = StreamDecoder(data)
            for s, tid, tables in self._calls:
                if not np.array_equal(dec.decode(tid, tables), s):
                    return False
        except BitstreamError:
            return False
        return True

    def _trim_tail(self, data: bytes) -> bytes:
        full = int.from_bytes(data, "big")
        for drop in (3, 2, 1):
            keep = len(data) - drop
            if keep < 1:
                continue
            prefix = (full >> (8 * drop)) + 1  # round the stream's value up to `keep` bytes
            if prefix >> (8 * keep):
                continue
            cand = prefix.to_bytes(keep, "big").rstrip(b"\x00")
            if self._decodes_same(cand):
                return cand
        return data


def _words_to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype=np.uint32).astype(">u4").tobytes().rstrip(b"\x00")


def _bytes_to_words(data: bytes | memoryview) -> np.ndarray:
    b = bytes(data)
    pad = (-len(b)) % 4
    if pad:
        b += b"\x00" * pad
    return np.frombuffer(b, dtype=">u4").astype(np.uint32)


class StreamDecoder:
    """Reads a payload written by StreamEncoder; call ``decode`` with the encoder's table_ids."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._dec = _RangeDecoder(_bytes_to_words(data))

    def decode(self, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> np.ndarray:
        tables = as_table_set(tables)
        tid_in = np.asarray(table_ids)
        n = int(tid_in.size)
        tid = _check_ids(tid_in, n, len(tables))
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        order, groups = _groups(tid, len(tables))
        vals = np.empty(n, dtype=np.int64)
        esc_pos, esc_lo, esc_hi = [], [], []
        try:
            for t, a, b in groups:
                tab = tables[t]
                idx = np.asarray(self._dec.decode(tab.model, b - a), dtype=np.int64)
                vals[a:b] = idx + tab.offset
                hit = np.flatnonzero(idx == tab.escape_index)
                if hit.size:
                    esc_pos.append(hit + a)
                    esc_lo.append(np.full(hit.size, tab.lo, dtype=np.int64))
                    esc_hi.append(np.full(hit.size, tab.hi, dtype=np.int64))
            if esc_pos:
                pos = np.concatenate(esc_pos)
                lo, hi = np.concatenate(esc_lo), np.concatenate(esc_hi)
                nb = np.asarray(self._dec.decode(_ESC_NBITS_MODEL, pos.size), dtype=np.int64)
                mask, bits = _chunk_layout(nb)
                u = np.where(nb > 0, np.left_shift(1, np.maximum(nb - 1, 0)), 0).astype(np.int64)
                if mask.any():
                    flat = np.asarray(
                        self._dec.decode(_UNIFORM_FAMILY, (1 << bits[mask]).astype(np.int32)), dtype=np.int64
                    )
                    chunks = np.zeros(mask.shape, dtype=np.int64)
                    chunks[mask] = flat
                    shifts = np.arange(mask.shape[1], dtype=np.int64) * _ESC_CHUNK
                    u = u + (chunks << shifts[None, :]).sum(axis=1)
                odd = (u & 1).astype(bool)
                v = np.where(odd, lo - 1 - (u - 1) // 2, hi + 1 + u // 2)
                if int(v.min()) < INT32_MIN or int(v.max()) > INT32_MAX:
                    raise BitstreamError(
                        "payload decodes to an escaped symbol outside int32: the payload is corrupt "
                        "or was coded with other tables (check the model id)"
                    )
                vals[pos] = v
        except BitstreamError:
            raise
        except Exception as exc:  # constriction reports malformed input as ValueError/RuntimeError
            raise BitstreamError(f"entropy decoder failed ({exc}); the payload is corrupt") from exc
        if order is None:
            return vals.astype(np.int32)
        out = np.empty(n, dtype=np.int32)
        out[order] = vals
        return out


def encode(symbols: np.ndarray, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> bytes:
    """Code symbols (int32, shape (n,)), symbol i with table ``table_ids[i]``, into one payload."""
    enc = StreamEncoder()
    enc.encode(symbols, table_ids, tables)
    return enc.finish()


def decode(data: bytes | memoryview, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> np.ndarray:
    """Inverse of ``encode`` given the same table_ids and tables."""
    return StreamDecoder(data).decode(table_ids, tables)


def ideal_bits(symbols: np.ndarray, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> float:
    """-sum log2 p under the integer tables, escapes included at their exact fixed cost."""
    tables = as_table_set(tables)
    s = np.asarray(symbols).astype(np.int64)
    tid = _check_ids(table_ids, s.size, len(tables))
    if s.size == 0:
        return 0.0
    order, groups = _groups(tid, len(tables))
    ss = s if order is None else s[order]
    total = 0.0
    for t, a, b in groups:
        tab = tables[t]
        idx = ss[a:b] - tab.offset
        out = (idx < 0) | (idx >= tab.n_symbols)
        idx = np.where(out, tab.escape_index, idx)
        total += float(tab.cost_bits[idx].sum())
        if out.any():
            v = ss[a:b][out]
            nb = _bit_length(_fold_escape(v, tab.lo, tab.hi))
            total += v.size * math.log2(_ESC_NBITS_SIZE) + float(np.maximum(nb - 1, 0).sum())
    return total
