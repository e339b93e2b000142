"""Reference codecs every latentwire figure is compared against, measured in the same run.

Each sample is compressed on its own, as it would be sent on its own: that is the cost a
sender of individual frames pays with a general-purpose or image codec.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import zstandard
from PIL import Image

from .normalization import psnr_db

IMAGE_FORMATS = ("png", "webp", "jpeg")


@dataclass(frozen=True)
class BaselinePoint:
    """One operating point of a reference codec over a set of samples."""

    codec: str
    setting: str
    bytes_per_sample: float
    psnr_db: float

    def to_dict(self) -> dict[str, object]:
        return {
            "codec": self.codec,
            "setting": self.setting,
            "bytes_per_sample": self.bytes_per_sample,
            "psnr_db": self.psnr_db,
        }


def raw_point(raw: np.ndarray) -> BaselinePoint:
    """Uncompressed: the bytes of one sample as stored."""
    return BaselinePoint("raw", raw.dtype.name, float(raw[0].nbytes), float("inf"))


def zstd_point(raw: np.ndarray, level: int = 19, batch: int = 1) -> BaselinePoint:
    """Lossless zstd (no dictionary) of ``batch`` samples at a time, as one would send them:
    batch=1 compresses each sample alone; batch=256 compresses the same batches latentwire
    codes into one packet, where zstd also finds the redundancy between samples."""
    cctx = zstandard.ZstdCompressor(level=level)
    total = sum(len(cctx.compress(np.ascontiguousarray(raw[i : i + batch]).tobytes()))
                for i in range(0, len(raw), batch))
    setting = f"level={level}" + (f", {batch} samples per frame" if batch > 1 else ", each sample alone")
    return BaselinePoint("zstd", setting, total / max(len(raw), 1), float("inf"))


def _to_pil(sample: np.ndarray) -> Image.Image:
    if sample.dtype != np.uint8:
        raise ValueError(f"image baselines need uint8 samples, got {sample.dtype}")
    if sample.ndim != 3 or sample.shape[0] not in (1, 3):
        raise ValueError(f"image baselines need (C,H,W) samples with C in (1,3), got {sample.shape}")
    if sample.shape[0] == 1:
        return Image.fromarray(sample[0], mode="L")
    return Image.fromarray(np.moveaxis(sample, 0, -1), mode="RGB")


def _from_pil(img: Image.Image, channels: int) -> np.ndarray:
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img)
    return arr[None] if channels == 1 else np.moveaxis(arr, -1, 0)


def image_roundtrip(sample: np.ndarray, fmt: str, quality: int | None) -> tuple[int, np.ndarray]:
    """Compress one (C,H,W) uint8 sample with Pillow; return (bytes, decoded sample)."""
    buf = io.BytesIO()
    img = _to_pil(sample)
    if fmt == "png":
        img.save(buf, format="PNG", optimize=True, compress_level=9)
    elif fmt == "webp":
        if quality is None:
            img.save(buf, format="WEBP", lossless=True, method=6, quality=100)
        else:
            img.save(buf, format="WEBP", quality=int(quality), method=6)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=int(quality if quality is not None else 95), optimize=True)
    else:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {IMAGE_FORMATS}")
    data = buf.getvalue()
    decoded = _from_pil(Image.open(io.BytesIO(data)), sample.shape[0])
    return len(data), decoded


def image_point(raw: np.ndarray, fmt: str, quality: int | None) -> BaselinePoint:
    """One quality setting of an image codec over a set of (N,C,H,W) uint8 samples."""
    sizes = np.empty(len(raw))
    decoded = np.empty_like(raw)
    for i, sample in enumerate(raw):
        sizes[i], decoded[i] = image_roundtrip(sample, fmt, quality)
    setting = "lossless" if quality is None else f"q={quality}"
    return BaselinePoint(fmt, setting, float(sizes.mean()), psnr_db(raw, decoded, 255.0))


def image_sweep(raw: np.ndarray, fmt: str, qualities: Sequence[int]) -> list[BaselinePoint]:
    return [image_point(raw, fmt, q) for q in qualities]


def image_at_psnr(raw: np.ndarray, fmt: str, target_db: float,
                  on_try: Callable[[int], None] | None = None) -> BaselinePoint:
    """The cheapest quality setting whose PSNR reaches target_db (bisection over 0..100).

    Falls back to the highest quality when the target is out of reach, so the caller can see
    that the codec could not match the fidelity. on_try(quality) is called before each try
    (progress: each try codes every sample).
    """
    lo, hi = 0, 100
    if on_try is not None:
        on_try(hi)
    best = image_point(raw, fmt, hi)
    if best.psnr_db < target_db:
        return best
    while lo < hi:
        mid = (lo + hi) // 2
        if on_try is not None:
            on_try(mid)
        point = image_point(raw, fmt, mid)
        if point.psnr_db >= target_db:
            best, hi = point, mid
        else:
            lo = mid + 1
    return best
