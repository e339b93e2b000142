"""Escapes: how a symbol outside its table's range travels (codec/FORMAT.md).

The table codes ESCAPE, then the call's escaped values follow its groups: each value's distance
beyond the range folded to one unsigned number u (above -> even, below -> odd), u's bit length
with a uniform model over 0..34, and the bits below u's leading one in uniform 16-bit chunks.
Any int32 round-trips; an escape costs ``-log2 p(ESC) + log2 35 + len(u)-1`` bits.
"""

from __future__ import annotations

import constriction
import numpy as np

from ..errors import BitstreamError
from .tables import INT32_MAX, INT32_MIN

ESC_NBITS_SIZE = 35  # folded escape distance u < 2**34 -> bit length 0..34
ESC_CHUNK = 16
ESC_NBITS_MODEL = constriction.stream.model.Uniform(ESC_NBITS_SIZE)
UNIFORM_FAMILY = constriction.stream.model.Uniform()


def fold_escape(v: np.ndarray, lo: np.ndarray | int, hi: np.ndarray | int) -> np.ndarray:
    """Distance beyond the table range, folded to u >= 0: above -> even, below -> odd."""
    return np.where(v > hi, 2 * (v - hi - 1), 2 * (lo - 1 - v) + 1)


def bit_length(u: np.ndarray) -> np.ndarray:
    return np.where(u > 0, np.frexp(u.astype(np.float64))[1], 0).astype(np.int64)


def _chunk_layout(nb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For mantissas of nb-1 bits: (mask (n, k) of present chunks, bits per chunk (n, k))."""
    mbits = np.maximum(nb - 1, 0)
    k = max(1, -(-int(mbits.max(initial=0)) // ESC_CHUNK))
    starts = np.arange(k, dtype=np.int64) * ESC_CHUNK
    bits = np.clip(mbits[:, None] - starts[None, :], 0, ESC_CHUNK)
    return bits > 0, bits


def write_escapes(enc: constriction.stream.queue.RangeEncoder, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """The escaped values of one call, after its groups (see FORMAT.md)."""
    u = fold_escape(v, lo, hi)
    nb = bit_length(u)
    enc.encode(nb.astype(np.int32), ESC_NBITS_MODEL)
    mask, bits = _chunk_layout(nb)
    if mask.any():
        mant = u - np.where(nb > 0, np.left_shift(1, np.maximum(nb - 1, 0)), 0)
        shifts = np.arange(mask.shape[1], dtype=np.int64) * ESC_CHUNK
        chunks = (mant[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
        enc.encode(chunks[mask].astype(np.int32), UNIFORM_FAMILY, (1 << bits[mask]).astype(np.int32))


def read_escapes(dec: constriction.stream.queue.RangeDecoder, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The escaped values of one call (their tables' lo / hi in stream order)."""
    nb = np.asarray(dec.decode(ESC_NBITS_MODEL, lo.size), dtype=np.int64)
    mask, bits = _chunk_layout(nb)
    u = np.where(nb > 0, np.left_shift(1, np.maximum(nb - 1, 0)), 0).astype(np.int64)
    if mask.any():
        flat = np.asarray(dec.decode(UNIFORM_FAMILY, (1 << bits[mask]).astype(np.int32)), dtype=np.int64)
        chunks = np.zeros(mask.shape, dtype=np.int64)
        chunks[mask] = flat
        shifts = np.arange(mask.shape[1], dtype=np.int64) * ESC_CHUNK
        u = u + (chunks << shifts[None, :]).sum(axis=1)
    odd = (u & 1).astype(bool)
    v = np.where(odd, lo - 1 - (u - 1) // 2, hi + 1 + u // 2)
    if int(v.min()) < INT32_MIN or int(v.max()) > INT32_MAX:
        raise BitstreamError(
            "payload decodes to an escaped symbol outside int32: the payload is corrupt "
            "or was coded with other tables (check the model id)"
        )
    return v
