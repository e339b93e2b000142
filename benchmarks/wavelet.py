"""CDF 9/7 wavelet coding of signal windows: the other classical baseline an ECG codec must beat.

The biorthogonal 9/7 wavelet (PyWavelets' bior4.4, the JPEG 2000 lossy filter) is what most
published wavelet ECG coders use: it compacts a QRS complex into a few coefficients at every
scale. This baseline gets everything latentwire has except a learned transform, like the DCT
one (benchmarks/dct.py): a per-lead wavelet decomposition of the whole window (periodic
extension, so a window of L samples has exactly L coefficients), the project's own uniform
quantizer, one integer entropy table per (lead, band) fit on coefficients of the TRAINING
records, the project's range coder and the same packet framing. Its bytes per window are
directly comparable with latentwire's.
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

WAVELET = "bior4.4"  # CDF 9/7
MODE = "periodization"  # L samples -> L coefficients: nothing is added at the window's edges
ESCAPE_COUNT = 1  # coefficients never seen in training stay codable through the escape


def _pywt():
    try:
        import pywt
    except ImportError as e:
        raise InputError("the wavelet baseline needs PyWavelets: pip install -e '.[dev]'") from e
    return pywt


class WaveletCodec:
    """(N, leads, L) windows -> wavelet coefficients / step, rounded, one table per (lead, band)."""

    def __init__(self, window: int, step: float, train_raw: np.ndarray, offset: float, raw_min: float,
                 raw_max: float, level: int | None = None) -> None:
        pywt = _pywt()
        if step <= 0:
            raise InputError(f"quantizer step must be positive, got {step}")
        if train_raw.ndim != 3 or train_raw.shape[2] != window:
            raise InputError(f"training windows must be (N, leads, {window}), got {train_raw.shape}")
        self.window, self.step, self.offset = int(window), float(step), float(offset)
        self.raw_min, self.raw_max = float(raw_min), float(raw_max)
        self.leads = int(train_raw.shape[1])
        self.level = pywt.dwt_max_level(window, pywt.Wavelet(WAVELET).dec_len) if level is None else int(level)
        sizes = [len(c) for c in pywt.wavedec(np.zeros(window), WAVELET, mode=MODE, level=self.level)]
        self.band_of = np.repeat(np.arange(len(sizes)), sizes)  # band of every coefficient position
        symbols = self._symbols(train_raw)  # (N, leads, window)
        tables = []
        for lead in range(self.leads):
            for band in range(len(sizes)):
                col = symbols[:, lead, self.band_of == band].ravel().astype(np.int64)
                lo = int(col.min())
                tables.append(T.table_from_counts(np.bincount(col - lo), lo, escape_count=ESCAPE_COUNT))
        self.bands = len(sizes)
        self.tables = T.TableSet(tuple(tables))

    def _coefficients(self, raw: np.ndarray) -> np.ndarray:
        pywt = _pywt()
        x = np.asarray(raw, dtype=np.float64) - self.offset
        return np.concatenate(pywt.wavedec(x, WAVELET, mode=MODE, level=self.level, axis=-1), axis=-1)

    def _symbols(self, raw: np.ndarray) -> np.ndarray:
        return quantize(self._coefficients(raw) / self.step)

    @cached_property
    def model_id(self) -> str:
        """A stand-in model id (the packet header needs one): hash of window, step and tables."""
        h = hashlib.sha256(f"wavelet:{WAVELET}:{self.window}:{self.leads}:{self.level}:{self.step!r}".encode())
        h.update(self.tables.dumps().encode())
        return h.hexdigest()

    def _ids(self, n: int) -> np.ndarray:
        per_window = (np.arange(self.leads)[:, None] * self.bands + self.band_of[None, :]).ravel()
        return np.tile(per_window.astype(np.int32), n)

    def encode(self, raw: np.ndarray) -> bytes:
        """N windows -> one packet (same framing and coder as a latentwire packet)."""
        if raw.ndim != 3 or raw.shape[1:] != (self.leads, self.window):
            raise InputError(f"windows must be (N, {self.leads}, {self.window}), got {raw.shape}")
        payload = C.encode(self._symbols(raw).ravel(), self._ids(len(raw)), self.tables)
        return bitstream.write_packet(model_id=self.model_id, quality=0, sample_shape=(self.leads, self.window),
                                      count=int(raw.shape[0]), payload=payload)

    def decode(self, packet: bytes, dtype: np.dtype) -> np.ndarray:
        pywt = _pywt()
        header, payload = bitstream.read_packet(packet, expected_model_id=self.model_id)
        symbols = C.decode(payload, self._ids(header.count), self.tables)
        coef = symbols.astype(np.float64).reshape(header.count, self.leads, self.window) * self.step
        sizes = np.bincount(self.band_of)
        parts = np.split(coef, np.cumsum(sizes)[:-1], axis=-1)
        x = pywt.waverec(parts, WAVELET, mode=MODE, axis=-1)[..., : self.window]
        x = np.clip(x + self.offset, self.raw_min, self.raw_max)
        if np.dtype(dtype).kind in "iu":
            x = np.rint(x)
        return x.astype(dtype)
