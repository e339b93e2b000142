"""DCT transform coding of signal windows: the classical baseline a learned ECG codec has to beat.

Like the PCA baseline for digits (benchmarks/pca.py), it gets everything latentwire has except a
learned transform: per-lead orthonormal DCT-II of the whole window (the transform behind most
classical ECG coders' energy compaction), the project's own uniform quantizer, one integer
entropy table per (lead, coefficient) fit on coefficients of the TRAINING records, the project's
range coder and the same packet framing. Its bytes per window are therefore directly comparable
with latentwire's, and a learned codec that does not beat it has learned nothing a cosine basis
did not already know.
"""

from __future__ import annotations

import hashlib
from functools import cached_property

import numpy as np

from latentwire.codec.coding import bitstream
from latentwire.codec.coding import coder as C
from latentwire.codec.coding import tables as T
from latentwire.codec.coding.quantize import quantize
from latentwire.codec.errors import InputError

ESCAPE_COUNT = 1  # coefficients never seen in training stay codable through the escape


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II as an n x n matrix (rows = basis vectors), float64."""
    if n < 1:
        raise InputError(f"window length must be positive, got {n}")
    i = np.arange(n)
    m = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


class DctCodec:
    """(N, leads, L) windows -> DCT coefficients / step, rounded, one table per (lead, coefficient)."""

    def __init__(self, window: int, step: float, train_raw: np.ndarray, offset: float, raw_min: float,
                 raw_max: float) -> None:
        if step <= 0:
            raise InputError(f"quantizer step must be positive, got {step}")
        if train_raw.ndim != 3 or train_raw.shape[2] != window:
            raise InputError(f"training windows must be (N, leads, {window}), got {train_raw.shape}")
        self.window, self.step, self.offset = int(window), float(step), float(offset)
        self.raw_min, self.raw_max = float(raw_min), float(raw_max)
        self.leads = int(train_raw.shape[1])
        self.basis = dct_matrix(self.window)
        symbols = self._symbols(train_raw).reshape(len(train_raw), -1)
        tables = []
        for c in range(symbols.shape[1]):
            col = symbols[:, c].astype(np.int64)
            lo = int(col.min())
            tables.append(T.table_from_counts(np.bincount(col - lo), lo, escape_count=ESCAPE_COUNT))
        self.tables = T.TableSet(tuple(tables))

    def _symbols(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float64) - self.offset
        return quantize((x @ self.basis.T) / self.step)

    @cached_property
    def model_id(self) -> str:
        """A stand-in model id (the packet header needs one): hash of window, step and tables."""
        h = hashlib.sha256(f"dct:{self.window}:{self.leads}:{self.step!r}".encode())
        h.update(self.tables.dumps().encode())
        return h.hexdigest()

    def _ids(self, n: int) -> np.ndarray:
        return np.tile(np.arange(self.leads * self.window, dtype=np.int32), n)

    def encode(self, raw: np.ndarray) -> bytes:
        """N windows -> one packet (same framing and coder as a latentwire packet)."""
        if raw.ndim != 3 or raw.shape[1:] != (self.leads, self.window):
            raise InputError(f"windows must be (N, {self.leads}, {self.window}), got {raw.shape}")
        payload = C.encode(self._symbols(raw).ravel(), self._ids(len(raw)), self.tables)
        return bitstream.write_packet(
            model_id=self.model_id, quality=0, sample_shape=(self.leads, self.window),
            count=int(raw.shape[0]), payload=payload,
        )

    def decode(self, packet: bytes, dtype: np.dtype) -> np.ndarray:
        header, payload = bitstream.read_packet(packet, expected_model_id=self.model_id)
        symbols = C.decode(payload, self._ids(header.count), self.tables)
        coef = symbols.astype(np.float64).reshape(header.count, self.leads, self.window) * self.step
        x = np.clip(coef @ self.basis + self.offset, self.raw_min, self.raw_max)
        if np.dtype(dtype).kind in "iu":
            x = np.rint(x)
        return x.astype(dtype)
