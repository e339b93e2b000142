"""PCA transform coding: the classical learned-linear baseline latentwire has to beat at equal bytes.

Without it a win over WebP could come merely from knowing the data set (a learned transform) and
from sending no image header, not from the deep model. So this baseline is given everything
latentwire has except the nonlinearity: a transform fit on the same training set, the project's
own quantizer (uniform rounding, ``quantize.quantize``), the project's integer entropy tables and
range coder (``T.table_from_counts`` per component, fit on training coefficients) and the
same packet framing (``bitstream.write_packet``: header, count, payload, CRC). Its bytes per
sample are therefore directly comparable with latentwire's.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from latentwire.codec.coding import bitstream
from latentwire.codec.coding import coder as C
from latentwire.codec.coding import tables as T
from latentwire.codec.coding.quantize import quantize
from latentwire.codec.errors import InputError

ESCAPE_COUNT = 1  # coefficients never seen in training stay codable through the escape


def _single_blas_thread() -> contextlib.AbstractContextManager:
    """One BLAS thread for the eigen-decomposition: on a busy machine OpenBLAS's spinning worker
    threads make it 10-20x slower than one thread (measured 8 s vs 0.5 s for 784 x 784)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


@dataclass(frozen=True)
class PcaBasis:
    """Mean and principal axes (rows, orthonormal, by decreasing variance) in raw units."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    raw_min: float
    raw_max: float

    @classmethod
    def fit(cls, train_raw: np.ndarray, max_components: int, raw_min: float, raw_max: float) -> PcaBasis:
        """Eigen-decomposition of the training covariance (D x D, so cheap for D ~ 10^3)."""
        x = np.asarray(train_raw, dtype=np.float64).reshape(len(train_raw), -1)
        if max_components < 1 or max_components > x.shape[1]:
            raise InputError(f"max_components must be in 1..{x.shape[1]}, got {max_components}")
        mean = x.mean(axis=0)
        xc = x - mean
        with _single_blas_thread():
            cov = (xc.T @ xc) / max(len(x) - 1, 1)
            vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:max_components]
        comps = vecs[:, order].T
        # fix each axis' sign so the basis does not depend on the LAPACK build
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
        return cls(mean, comps * signs[:, None], vals[order], float(raw_min), float(raw_max))

    def project(self, raw: np.ndarray, k: int) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
        return (x - self.mean) @ self.components[:k].T

    def reconstruct(self, coefficients: np.ndarray, sample_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Coefficients -> raw samples: clipped to the raw range and rounded like latentwire's output."""
        k = coefficients.shape[1]
        x = coefficients @ self.components[:k] + self.mean
        x = np.clip(x, self.raw_min, self.raw_max)
        if np.dtype(dtype).kind in "iu":
            x = np.rint(x)
        return x.astype(dtype).reshape(len(x), *sample_shape)


class PcaCodec:
    """k components uniformly quantized with one step (raw units), one integer table per component."""

    def __init__(self, basis: PcaBasis, k: int, step: float, train_coefficients: np.ndarray) -> None:
        if not 1 <= k <= len(basis.components):
            raise InputError(f"k must be in 1..{len(basis.components)}, got {k}")
        if step <= 0:
            raise InputError(f"quantizer step must be positive, got {step}")
        self.basis, self.k, self.step = basis, int(k), float(step)
        symbols = quantize(train_coefficients[:, : self.k] / self.step)
        tables = []
        for c in range(self.k):
            col = symbols[:, c].astype(np.int64)
            lo = int(col.min())
            tables.append(T.table_from_counts(np.bincount(col - lo), lo, escape_count=ESCAPE_COUNT))
        self.tables = T.TableSet(tuple(tables))

    @cached_property
    def model_id(self) -> str:
        """A stand-in model id (the packet header needs one): hash of the basis, k, step, tables."""
        h = hashlib.sha256()
        h.update(self.basis.components[: self.k].tobytes())
        h.update(self.basis.mean.tobytes())
        h.update(f"{self.k}:{self.step!r}".encode())
        h.update(self.tables.dumps().encode())
        return h.hexdigest()

    def _ids(self, n: int) -> np.ndarray:
        return np.tile(np.arange(self.k, dtype=np.int32), n)

    def encode(self, raw: np.ndarray) -> bytes:
        """N samples -> one packet (same framing and coder as a latentwire packet)."""
        symbols = quantize(self.basis.project(raw, self.k) / self.step)
        payload = C.encode(symbols.ravel(), self._ids(len(raw)), self.tables)
        return bitstream.write_packet(
            model_id=self.model_id, quality=0, sample_shape=tuple(int(d) for d in raw.shape[1:]),
            count=int(raw.shape[0]), payload=payload,
        )

    def decode(self, packet: bytes, dtype: np.dtype) -> np.ndarray:
        header, payload = bitstream.read_packet(packet, expected_model_id=self.model_id)
        symbols = C.decode(payload, self._ids(header.count), self.tables).reshape(header.count, self.k)
        return self.basis.reconstruct(symbols.astype(np.float64) * self.step, tuple(header.sample_shape), dtype)
