"""The affine map between a data source's raw values and the model's float domain.

It is recorded in the bundle manifest so a receiver that never saw the training data can turn
decoded model-domain values back into raw samples (uint8 pixels, 11-bit ECG counts, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """model = (raw - offset) / scale; raw values live on an integer grid when raw_dtype is integer.

    raw_min/raw_max are the valid raw range (clip on the way back). For MNIST: offset 0, scale 255,
    raw 0..255 uint8. For MIT-BIH: offset 1024, scale 200 (adu per mV), raw 0..2047.
    """

    offset: float
    scale: float
    raw_dtype: str
    raw_min: float
    raw_max: float

    @property
    def is_integer(self) -> bool:
        return np.dtype(self.raw_dtype).kind in "iu"

    @property
    def peak(self) -> float:
        """Peak-to-peak raw range: the PSNR reference."""
        return float(self.raw_max - self.raw_min)

    def to_model(self, raw: np.ndarray) -> np.ndarray:
        return ((np.asarray(raw, dtype=np.float32) - np.float32(self.offset)) / np.float32(self.scale)).astype(
            np.float32, copy=False
        )

    def to_raw_float(self, model: np.ndarray) -> np.ndarray:
        """Model domain back to raw units, clipped to the valid range, not yet rounded."""
        raw = np.multiply(model, np.float32(self.scale), dtype=np.float32)  # a new array: the input is kept
        raw += np.float32(self.offset)
        return np.clip(raw, self.raw_min, self.raw_max, out=raw)

    def to_raw(self, model: np.ndarray) -> np.ndarray:
        """Model domain back to raw samples of raw_dtype (rounded to the integer grid if integer)."""
        raw = self.to_raw_float(model)
        if self.is_integer:
            raw = np.rint(raw)
        return raw.astype(self.raw_dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(
            offset=float(d["offset"]),
            scale=float(d["scale"]),
            raw_dtype=str(d["raw_dtype"]),
            raw_min=float(d["raw_min"]),
            raw_max=float(d["raw_max"]),
        )


def psnr_db(reference: np.ndarray, decoded: np.ndarray, peak: float) -> float:
    """PSNR over a whole set, in the raw domain (the figure every benchmark quotes)."""
    err = np.asarray(reference, dtype=np.float64) - np.asarray(decoded, dtype=np.float64)
    mse = float(np.mean(err * err))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))
