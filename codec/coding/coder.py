"""Range coding (constriction) of integer symbols with the fixed tables of tables.py.

A symbol outside its table's range is coded as ESCAPE, its value after the call's groups
(escape.py).

Coding is vectorised: one ``encode`` call groups its symbols by table (stable order) and hands
each group to constriction as one array, so Python never loops per symbol. The payload is the
coder's 32-bit words as a big-endian byte string, trailing zero bytes removed (the decoder pads
zeros back, which is exactly what constriction's decoder assumes past the end). Small streams are
additionally shortened by up to 3 bytes: the final word is rounded up to fewer significant bytes
when the shorter stream provably decodes identically (``trim_tail``, checked against the coder's
final interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import constriction
import numpy as np

from ..errors import BitstreamError, InputError
from .escape import ESC_NBITS_SIZE, bit_length, fold_escape, read_escapes, write_escapes
from .tables import INT32_MAX, INT32_MIN, FreqTable, TableSet, as_table_set

# Streams up to this many symbols get their tail trimmed (1-3 bytes saved; beyond, 3 bytes do not
# matter and the big-integer check would cost more; the limit also keeps older streams' bytes)
TRIM_MAX_SYMBOLS = 1 << 16
# Below this many symbols per group on average, the coder checks ranges and escapes for all
# groups at once (per-group numpy calls cost more than the data at batch 1)
SMALL_GROUP_SYMBOLS = 2048
# Calls with at most this many symbols take a plain-Python path (same stream): context coding makes
# one call per position, a few symbols each when a packet holds one frame
TINY_CALL_SYMBOLS = 16

_RangeEncoder = constriction.stream.queue.RangeEncoder
_RangeDecoder = constriction.stream.queue.RangeDecoder


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
    """(order or None if one table, [(table, start, stop) in sorted order]).

    The stable radix argsort is the one O(n) pass that cannot be avoided for data-dependent ids."""
    first = int(tid[0])
    if tid.size and (tid == first).all():
        return None, [(first, 0, int(tid.size))]
    order = np.argsort(tid, kind="stable")
    ranked = tid[order]
    # group bounds where the sorted id changes: O(n), not O(n_tables) (context models have
    # hundreds of tables and code a few symbols per call)
    cuts = np.flatnonzero(ranked[1:] != ranked[:-1]) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    stops = np.concatenate((cuts, [ranked.size])).tolist()
    return order, list(
        zip(ranked[np.asarray(starts, dtype=np.intp)].astype(np.int64).tolist(), starts, stops, strict=True)
    )


def _tiny_groups(ids: list[int]) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Plain-Python ``_groups`` for a few ids: (stable order by id, [(table, start, stop)])."""
    n = len(ids)
    order = sorted(range(n), key=ids.__getitem__)
    runs = []
    i = 0
    while i < n:
        t = ids[order[i]]
        j = i + 1
        while j < n and ids[order[j]] == t:
            j += 1
        runs.append((t, i, j))
        i = j
    return order, runs


def as_int32(s: np.ndarray) -> np.ndarray:
    """Symbols as int32 (no copy when they already are); wider types are range-checked first."""
    if s.dtype == np.int32:
        return s
    if s.dtype.itemsize >= 4 and (int(s.min()) < INT32_MIN or int(s.max()) > INT32_MAX):
        raise InputError("symbols must fit in int32")
    return s.astype(np.int32)


def _check_grouped_tables(table_order: Sequence[int], n_tables: int) -> None:
    last = -1
    for t in table_order:
        if not last < t < n_tables:
            raise InputError(
                f"grouped coding needs strictly ascending table ids below {n_tables} (the stream order), "
                f"got {list(table_order)}"
            )
        last = t


# --------------------------------------------------------------------------------------------
# coder


class StreamEncoder:
    """One range-coded stream, filled by one or more ``encode`` calls (e.g. latents, then residual
    contexts, then residuals); the decoder repeats the same calls with the same table_ids.

    ``encode_grouped`` writes exactly what ``encode`` writes when the caller already holds the
    symbols grouped by table (the latent layout is a transpose away from grouped): it skips the
    argsort, which was the largest single cost of coding."""

    def __init__(self) -> None:
        self._enc = _RangeEncoder()
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
        tid_in = np.asarray(table_ids)
        if 0 < s.size <= TINY_CALL_SYMBOLS and tid_in.ndim == 1 and tid_in.size == s.size and tid_in.dtype.kind in "iu":
            ids, values = tid_in.tolist(), s.tolist()
            if (min(ids) >= 0 and max(ids) < len(tables)
                    and INT32_MIN <= min(values) and max(values) <= INT32_MAX):
                self._encode_tiny(values, ids, tables)
                return
        tid = _check_ids(tid_in, s.size, len(tables))
        if s.size == 0:
            return
        s32 = as_int32(s)
        order, spans = _groups(tid, len(tables))
        self._code(s32 if order is None else s32[order], spans, tables)

    def encode_grouped(
        self, groups: Sequence[tuple[int, np.ndarray]], tables: TableSet | Sequence[FreqTable]
    ) -> None:
        """groups: (table id, 1-D integer symbols in stream order), table ids strictly ascending.
        Empty groups are allowed (and code nothing)."""
        tables = as_table_set(tables)
        _check_grouped_tables([t for t, _ in groups], len(tables))
        parts, spans, pos = [], [], 0
        for t, v in groups:
            a = np.asarray(v)
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise InputError(f"group symbols must be 1-D integers, got shape {a.shape} dtype {a.dtype}")
            if a.size:
                parts.append(as_int32(a))
                spans.append((int(t), pos, pos + a.size))
                pos += a.size
        if parts:
            self._code(np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0]), spans, tables)

    def _code(self, ss: np.ndarray, spans: list[tuple[int, int, int]], tables: TableSet) -> None:
        """ss: int32 symbols already in stream order; spans: (table, start, stop), ascending tables."""
        meta = tables.coding_meta
        esc_v, esc_lo, esc_hi = [], [], []
        if len(spans) > 1 and ss.size < SMALL_GROUP_SYMBOLS * len(spans):
            # many small groups (latents of a few frames): one vectorised range check for all,
            # then one constriction call per group
            t_ids = np.array([t for t, _, _ in spans], dtype=np.intp)
            counts = np.array([b - a for _, a, b in spans], dtype=np.intp)
            lo, hi = np.repeat(meta.lo[t_ids], counts), np.repeat(meta.hi[t_ids], counts)
            idx = ss - lo
            out = (ss < lo) | (ss > hi)
            if out.any():
                esc_v.append(ss[out].astype(np.int64))
                esc_lo.append(lo[out])
                esc_hi.append(hi[out])
                idx[out] = np.repeat(meta.escape[t_ids], counts)[out]
            idx = idx.astype(np.int32)
            for t, a, b in spans:
                self._enc.encode(idx[a:b], meta.models[t])
        else:
            for t, a, b in spans:
                v = ss[a:b]
                t_lo, t_hi = int(meta.lo[t]), int(meta.hi[t])
                if int(v.min()) >= t_lo and int(v.max()) <= t_hi:  # the common case: two SIMD reductions
                    idx = v if t_lo == 0 else v - np.int32(t_lo)
                else:
                    out = (v < t_lo) | (v > t_hi)
                    ev = v[out].astype(np.int64)
                    esc_v.append(ev)
                    esc_lo.append(np.full(ev.size, t_lo, dtype=np.int64))
                    esc_hi.append(np.full(ev.size, t_hi, dtype=np.int64))
                    idx = np.where(out, int(meta.escape[t]), v.astype(np.int64) - t_lo).astype(np.int32)
                self._enc.encode(idx, meta.models[t])
        if esc_v:
            self._write_escapes(np.concatenate(esc_v), np.concatenate(esc_lo), np.concatenate(esc_hi))
        self._n += ss.size

    def _write_escapes(self, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        write_escapes(self._enc, v, lo, hi)

    def _encode_tiny(self, values: list[int], ids: list[int], tables: TableSet) -> None:
        """``encode`` for a handful of symbols in plain Python, writing the identical stream."""
        meta = tables.coding_meta
        n = len(values)
        order, runs = _tiny_groups(ids)
        esc_v: list[int] = []
        esc_t: list[int] = []
        for t, i, j in runs:
            lo, hi, escape = int(meta.lo[t]), int(meta.hi[t]), int(meta.escape[t])
            idx = []
            for k in order[i:j]:
                v = values[k]
                if lo <= v <= hi:
                    idx.append(v - lo)
                else:
                    idx.append(escape)
                    esc_v.append(v)
                    esc_t.append(t)
            self._enc.encode(np.asarray(idx, dtype=np.int32), meta.models[t])
        if esc_v:
            t_arr = np.asarray(esc_t, dtype=np.intp)
            self._write_escapes(np.asarray(esc_v, dtype=np.int64), meta.lo[t_arr], meta.hi[t_arr])
        self._n += n

    def encode_indices(self, indices: Sequence[int], models: Sequence[object]) -> None:
        """Symbols already turned into table indices (v - lo, none escaped), index i coded with
        ``models[i]`` (a table set's ``coding_meta.models``), in stream order: what ``encode_grouped``
        writes for the same symbols, without arrays (the one-frame path, codec/frame.py)."""
        code = self._enc.encode
        for i, m in zip(indices, models, strict=True):
            code(i, m)
        self._n += len(indices)

    def finish(self) -> bytes:
        """The payload bytes: big-endian words, trailing zeros dropped, small streams tail-trimmed."""
        pos, (lower, width) = self._enc.pos()  # the final interval, before the seal
        words = self._enc.get_compressed()
        data = _words_to_bytes(words)
        if 0 < self._n <= TRIM_MAX_SYMBOLS and len(data) > 1:
            data = trim_tail(words, data, pos, lower, width)
        return data


def trim_tail(words: np.ndarray, data: bytes, pos: int, lower: int, width: int) -> bytes:
    """Shorten a sealed stream by up to 3 bytes where the decoder provably reads the same symbols.

    The candidates round the stream's value up to fewer bytes (the decoder pads zeros). A range
    decoder decodes every symbol right iff the padded stream, as one number aligned at the coder's
    final word position, lies in the final interval [lower, lower + width) offset by the words
    already emitted: a few big-integer comparisons instead of the trial decodes that used to check
    each candidate (a third of a one-frame encode). Exactly the bytes the trial decodes chose
    (tests/codec/test_entropy.py compares the two on thousands of random streams)."""
    head = np.asarray(words[:pos], dtype=">u4").tobytes()
    low = (int.from_bytes(head, "big") << 64) + lower
    span = 4 * pos + 8  # bytes up to the end of the decoder's final 64-bit window
    full = int.from_bytes(data, "big")
    for drop in (3, 2, 1):
        keep = len(data) - drop
        if keep < 1 or keep > span:
            continue
        prefix = (full >> (8 * drop)) + 1
        if prefix >> (8 * keep):
            continue
        cand = prefix.to_bytes(keep, "big")
        if low <= int.from_bytes(cand.ljust(span, b"\x00"), "big") < low + width:
            return cand.rstrip(b"\x00")
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
    """Reads a payload written by StreamEncoder; call ``decode`` with the encoder's table_ids
    (or ``decode_grouped`` where the encoder used ``encode_grouped``)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._dec = _RangeDecoder(_bytes_to_words(data))

    def decode(self, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> np.ndarray:
        tables = as_table_set(tables)
        tid_in = np.asarray(table_ids)
        n = int(tid_in.size)
        if 0 < n <= TINY_CALL_SYMBOLS and tid_in.ndim == 1 and tid_in.dtype.kind in "iu":
            ids = tid_in.tolist()
            if min(ids) >= 0 and max(ids) < len(tables):
                return self._decode_tiny(ids, tables)
        tid = _check_ids(tid_in, n, len(tables))
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        order, spans = _groups(tid, len(tables))
        vals = self._decode([(t, b - a) for t, a, b in spans], tables)
        if order is None:
            return vals
        out = np.empty(n, dtype=np.int32)
        out[order] = vals
        return out

    def decode_indices(self, models: Sequence[object]) -> list[int]:
        """The inverse of ``StreamEncoder.encode_indices``: one table index per model, escape
        markers included (the caller checks for them)."""
        read = self._dec.decode
        try:
            return [int(read(m)) for m in models]
        except Exception as exc:  # constriction reports malformed input as ValueError/RuntimeError
            raise BitstreamError(f"entropy decoder failed ({exc}); the payload is corrupt") from exc

    def decode_grouped(
        self, groups: Sequence[tuple[int, int]], tables: TableSet | Sequence[FreqTable]
    ) -> np.ndarray:
        """groups: (table id, count), table ids strictly ascending -> int32 symbols of all groups,
        concatenated in group order."""
        tables = as_table_set(tables)
        _check_grouped_tables([t for t, _ in groups], len(tables))
        clean = [(int(t), int(k)) for t, k in groups if int(k) > 0]
        if any(int(k) < 0 for _, k in groups):
            raise InputError("group counts must be >= 0")
        if not clean:
            return np.zeros(0, dtype=np.int32)
        return self._decode(clean, tables)

    def _decode(self, groups: list[tuple[int, int]], tables: TableSet) -> np.ndarray:
        meta = tables.coding_meta
        total = sum(k for _, k in groups)
        esc_pos, esc_lo, esc_hi = [], [], []
        try:
            if len(groups) > 1 and total < SMALL_GROUP_SYMBOLS * len(groups):
                # many small groups: decode each, then offsets and escapes in one vectorised pass
                t_ids = np.array([t for t, _ in groups], dtype=np.intp)
                counts = np.array([k for _, k in groups], dtype=np.intp)
                idx = np.concatenate([self._dec.decode(meta.models[t], k) for t, k in groups]).astype(np.int64)
                lo = np.repeat(meta.lo[t_ids], counts)
                vals = (idx + lo).astype(np.int32)
                hit = np.flatnonzero(idx == np.repeat(meta.escape[t_ids], counts))
                if hit.size:
                    esc_pos.append(hit)
                    esc_lo.append(lo[hit])
                    esc_hi.append(np.repeat(meta.hi[t_ids], counts)[hit])
            else:
                vals = np.empty(total, dtype=np.int32)
                pos = 0
                for t, k in groups:
                    idx = np.asarray(self._dec.decode(meta.models[t], k), dtype=np.int32)
                    seg = vals[pos : pos + k]
                    t_lo = int(meta.lo[t])
                    if t_lo:
                        # int32 wraps only for the escape marker of a table ending at INT32_MAX,
                        # and escape positions are overwritten below
                        np.add(idx, np.int32(t_lo), out=seg)
                    else:
                        seg[...] = idx
                    esc = int(meta.escape[t])
                    if int(idx.max()) == esc:
                        hit = np.flatnonzero(idx == esc)
                        esc_pos.append(hit + pos)
                        esc_lo.append(np.full(hit.size, t_lo, dtype=np.int64))
                        esc_hi.append(np.full(hit.size, int(meta.hi[t]), dtype=np.int64))
                    pos += k
            if esc_pos:
                vals[np.concatenate(esc_pos)] = self._read_escapes(np.concatenate(esc_lo), np.concatenate(esc_hi))
        except BitstreamError:
            raise
        except Exception as exc:  # constriction reports malformed input as ValueError/RuntimeError
            raise BitstreamError(f"entropy decoder failed ({exc}); the payload is corrupt") from exc
        return vals

    def _read_escapes(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return read_escapes(self._dec, lo, hi)

    def _decode_tiny(self, ids: list[int], tables: TableSet) -> np.ndarray:
        """``decode`` for a handful of symbols in plain Python: the same stream order (groups by
        ascending table, stable, then the call's escapes) without numpy's per-call overhead,
        which dominates context coding's one call per position."""
        meta = tables.coding_meta
        order, runs = _tiny_groups(ids)
        out = np.empty(len(ids), dtype=np.int32)
        esc_at: list[int] = []
        esc_t: list[int] = []
        try:
            for t, i, j in runs:
                got = self._dec.decode(meta.models[t], j - i).tolist()
                lo, escape = int(meta.lo[t]), int(meta.escape[t])
                for m, v in enumerate(got):
                    if v == escape:
                        esc_at.append(order[i + m])
                        esc_t.append(t)
                    else:
                        out[order[i + m]] = v + lo
            if esc_at:
                t_arr = np.asarray(esc_t, dtype=np.intp)
                out[np.asarray(esc_at, dtype=np.intp)] = self._read_escapes(meta.lo[t_arr], meta.hi[t_arr])
        except BitstreamError:
            raise
        except Exception as exc:  # constriction reports malformed input as ValueError/RuntimeError
            raise BitstreamError(f"entropy decoder failed ({exc}); the payload is corrupt") from exc
        return out


def encode(symbols: np.ndarray, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> bytes:
    """Code symbols (int32, shape (n,)), symbol i with table ``table_ids[i]``, into one payload."""
    enc = StreamEncoder()
    enc.encode(symbols, table_ids, tables)
    return enc.finish()


def decode(data: bytes | memoryview, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> np.ndarray:
    """Inverse of ``encode`` given the same table_ids and tables."""
    return StreamDecoder(data).decode(table_ids, tables)


def symbol_bits(symbols: np.ndarray, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> np.ndarray:
    """-log2 p of each symbol under its integer table (float64, in the symbols' order), escapes
    included at their exact fixed cost: what a sender compares when it picks between codings."""
    tables = as_table_set(tables)
    s = np.asarray(symbols).astype(np.int64).ravel()
    tid = _check_ids(np.asarray(table_ids).ravel(), s.size, len(tables))
    out = np.zeros(s.size, dtype=np.float64)
    if s.size == 0:
        return out
    order, groups = _groups(tid, len(tables))
    where = np.arange(s.size) if order is None else order
    for t, a, b in groups:
        tab = tables[t]
        v = s[where[a:b]]
        idx = v - tab.offset
        esc = (idx < 0) | (idx >= tab.n_symbols)
        bits = tab.cost_bits[np.where(esc, tab.escape_index, idx)]
        if esc.any():
            nb = bit_length(fold_escape(v[esc], tab.lo, tab.hi))
            bits[esc] += math.log2(ESC_NBITS_SIZE) + np.maximum(nb - 1, 0)
        out[where[a:b]] = bits
    return out


def ideal_bits(symbols: np.ndarray, table_ids: np.ndarray, tables: TableSet | Sequence[FreqTable]) -> float:
    """-sum log2 p under the integer tables, escapes included at their exact fixed cost."""
    return float(symbol_bits(symbols, table_ids, tables).sum())
