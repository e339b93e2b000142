"""The lossless fallback payload and the anomaly score that decides when to use it.

A codec must not silently destroy data it was never trained on: an autoencoder reconstructs
inputs unlike its training data badly, and its latent-only reconstruction error says so. The
sender already runs the decoder (for residual levels), so it can score every frame; frames
scoring above a threshold calibrated on the training data (manifest "anomaly", written by
codec/calibrate.py) go out as zstd of the raw frame in a FLAG_LOSSLESS packet instead
(codec/FORMAT.md) and arrive intact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from ..errors import BitstreamError, InputError

ZSTD_LEVEL = 19  # frames are small: the strongest regular level costs well under a millisecond
ANOMALY_QUANTILES = (0.9, 0.95, 0.99, 0.995, 0.999, 1.0)
DEFAULT_ANOMALY_QUANTILE = 0.999


def frame_scores(raw: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Per-frame anomaly score: mean squared error in RAW units between a frame and its
    latent-only reconstruction (float64, shape (N,)). Higher = less like the training data."""
    a = np.asarray(raw, dtype=np.float64).reshape(raw.shape[0], -1)
    b = np.asarray(reconstruction, dtype=np.float64).reshape(raw.shape[0], -1)
    return np.mean((a - b) ** 2, axis=1)


def compress_raw(raw: np.ndarray, dtype: np.dtype) -> bytes:
    """zstd of the frames as little-endian ``dtype``, C order (the FLAG_LOSSLESS payload)."""
    data = np.ascontiguousarray(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data.tobytes())


def decompress_raw(payload: bytes | memoryview, dtype: np.dtype, count: int, sample_shape: Sequence[int]) -> np.ndarray:
    """Inverse of compress_raw; refuses a payload that does not hold exactly count frames."""
    dt = np.dtype(dtype)
    expected = int(count) * int(np.prod(sample_shape)) * dt.itemsize
    try:
        data = zstandard.ZstdDecompressor().decompress(bytes(payload), max_output_size=expected + 1)
    except zstandard.ZstdError as e:
        raise BitstreamError(f"lossless fallback payload is not valid zstd ({e}): corrupt packet") from e
    if len(data) != expected:
        raise BitstreamError(
            f"lossless fallback payload holds {len(data)} bytes, {count} frames of {tuple(sample_shape)} "
            f"{dt.name} need {expected}: corrupt packet or another bundle's raw dtype"
        )
    out = np.frombuffer(data, dtype=dt.newbyteorder("<")).astype(dt)
    return out.reshape(int(count), *(int(d) for d in sample_shape))


@dataclass(frozen=True)
class AnomalyCalibration:
    """The manifest's "anomaly" block: score quantiles on the calibration (training) data."""

    score: str  # what the numbers measure
    n_samples: int
    quantiles: dict[float, float]
    threshold_quantile: float

    @property
    def threshold(self) -> float:
        return self.quantiles[self.threshold_quantile]

    def threshold_at(self, quantile: float | None = None) -> float:
        q = self.threshold_quantile if quantile is None else float(quantile)
        if q not in self.quantiles:
            raise InputError(f"no anomaly threshold at quantile {q}; the bundle has {sorted(self.quantiles)}")
        return self.quantiles[q]

    @classmethod
    def fit(cls, scores: np.ndarray, quantiles: Sequence[float] = ANOMALY_QUANTILES,
            threshold_quantile: float = DEFAULT_ANOMALY_QUANTILE) -> AnomalyCalibration:
        qs = tuple(float(q) for q in quantiles)
        if threshold_quantile not in qs:
            qs = tuple(sorted({*qs, float(threshold_quantile)}))
        values = np.quantile(np.asarray(scores, dtype=np.float64), qs)
        return cls("mse_raw_latent_only", int(len(scores)), {q: float(v) for q, v in zip(qs, values, strict=True)},
                   float(threshold_quantile))

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "n_samples": self.n_samples,
            "quantiles": {repr(q): v for q, v in self.quantiles.items()},
            "threshold_quantile": self.threshold_quantile,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnomalyCalibration:
        return cls(str(d["score"]), int(d["n_samples"]), {float(k): float(v) for k, v in d["quantiles"].items()},
                   float(d["threshold_quantile"]))


@dataclass(frozen=True)
class ScoredEncoding:
    """encode_scored's result: packets in frame order, and per frame its score and path.

    frames[i] is the (start, stop) slice of the input batch that packets[i] carries.
    """

    packets: list[bytes]
    frames: list[tuple[int, int]]
    scores: np.ndarray  # (N,) float64 anomaly score per frame (codec/fallback.py)
    lossless: np.ndarray  # (N,) bool: the frame went out through the lossless fallback
    threshold: float | None
