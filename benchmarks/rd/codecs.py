"""The codecs users would pick instead of latentwire, beyond Pillow's JPEG / WebP / PNG: AVIF and JPEG XL
(lossy and lossless) and JPEG-LS (lossless and near-lossless) through imagecodecs, FLAC through
soundfile, and xz / zstd on the same batches latentwire packs into one packet.

Every row is decoded again and compared with the input, so a "lossless" row is checked, not assumed.
imagecodecs and soundfile are benchmark dependencies (the dev extra), never the runtime's: they are
imported here, lazily, and ``require`` turns a missing one into a one-line error that says what to install.
"""

from __future__ import annotations

import importlib
import io
import lzma
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import zstandard

from latentwire.codec.errors import InputError

from .points import Point, Scorer

Roundtrip = Callable[[np.ndarray], tuple[int, np.ndarray]]  # (C,H,W) uint8 -> (bytes, decoded (C,H,W))

AVIF_SPEED = 6  # libavif's speed 0 (slowest) .. 10; 6 is avifenc's default
AVIF_CHROMA = "444"  # avifenc's default for RGB input; 420 is the other common choice
AVIF_QUALITIES = (5, 15, 25, 35, 45, 55, 65, 75, 85, 92, 98)
JXL_EFFORT = 7  # cjxl's default effort (1 fastest .. 9)
JXL_DISTANCES = (0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 4.5, 6.5, 9.0, 13.0)  # butteraugli distance; 1.0 = cjxl default
NEAR_BOUNDS = (1, 2, 4)  # max abs error per channel of the near-lossless rows (JPEG-LS NEAR)
XZ_PRESET = 9 | lzma.PRESET_EXTREME  # xz -9e
ZSTD_LEVEL = 19
NEAR_LOSSLESS = "near-lossless"  # Point.mode of a baseline row coded with a per-sample error bound
JPEGLS_TRANSFORMS = ("rgb", "hp2", "rct")
# photos: WebP lossless at quality 100, method 4 (cwebp -lossless -q 100 -m 4): on the BSDS photo compared the same
# bytes as method 6 (Pillow's row on digits) at 1/8 of its time (1.6 s instead of 12 s)
WEBP_LOSSLESS_QUALITY, WEBP_LOSSLESS_METHOD = 100, 4
SETTINGS = {
    "avif": f"imagecodecs avif_encode (libavif, aom), speed {AVIF_SPEED}, YUV {AVIF_CHROMA[0]}:{AVIF_CHROMA[1]}:"
            f"{AVIF_CHROMA[2]}, 8-bit, quality sweep",
    "jpegxl": f"imagecodecs jpegxl_encode (libjxl), effort {JXL_EFFORT}, butteraugli distance sweep; lossless: "
              f"effort {JXL_EFFORT}",
    "jpeg-ls": "imagecodecs jpegls_encode (CharLS), one sample-interleaved stream; rgb: the RGB planes; hp2: "
               "HP2 colour transform mod 256 (R-G, G, B-(R+G)/2); rct: the JPEG 2000 reversible colour transform "
               "(Y=(R+2G+B)>>2, B-G, R-G) coded as three planes; near-lossless: NEAR on the RGB planes",
    "webp": "Pillow (libwebp) method 6, quality sweep; lossless: digits Pillow quality 100 method 6, photos "
            f"imagecodecs webp_encode quality {WEBP_LOSSLESS_QUALITY} method {WEBP_LOSSLESS_METHOD}",
    "png": "Pillow, optimize, compress_level 9",
    "xz": "lzma FORMAT_XZ, preset 9 | PRESET_EXTREME (xz -9e), on the same batches latentwire packs",
    "zstd": f"zstandard level {ZSTD_LEVEL}, no dictionary",
    "flac": "soundfile (libsndfile), FLAC PCM_16, compression_level 1.0 (FLAC level 8), all leads in one file",
}


def require(name: str) -> ModuleType:
    """Import a benchmark-only library, or say in one line what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InputError(f"the {name} baselines need {name}: pip install -e '.[dev]' ({exc})") from None


def _hwc(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(img, 0, -1) if img.shape[0] == 3 else img[0])


def _chw(arr: np.ndarray, channels: int) -> np.ndarray:
    arr = np.asarray(arr)
    if channels == 1:
        return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)[:1]
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0))


# ------------------------------------------------------------------------------ photos


def avif(quality: int, speed: int = AVIF_SPEED, chroma: str = AVIF_CHROMA) -> Roundtrip:
    ic = require("imagecodecs")

    def rt(img: np.ndarray) -> tuple[int, np.ndarray]:
        data = ic.avif_encode(_hwc(img), int(quality), speed=speed, pixelformat=chroma, numthreads=1)
        return len(data), _chw(ic.avif_decode(data, numthreads=1), img.shape[0])
    return rt


def jpegxl(distance: float | None, effort: int = JXL_EFFORT) -> Roundtrip:
    """distance None: lossless."""
    ic = require("imagecodecs")

    def rt(img: np.ndarray) -> tuple[int, np.ndarray]:
        if distance is None:
            data = ic.jpegxl_encode(_hwc(img), effort=effort, lossless=True, numthreads=1)
        else:
            data = ic.jpegxl_encode(_hwc(img), effort=effort, distance=float(distance), numthreads=1)
        return len(data), _chw(ic.jpegxl_decode(data, numthreads=1), img.shape[0])
    return rt


def webp_lossless() -> Roundtrip:
    ic = require("imagecodecs")

    def rt(img: np.ndarray) -> tuple[int, np.ndarray]:
        data = ic.webp_encode(_hwc(img), WEBP_LOSSLESS_QUALITY, lossless=True, method=WEBP_LOSSLESS_METHOD,
                              numthreads=1)
        return len(data), _chw(ic.webp_decode(data), img.shape[0])
    return rt


def rct_forward(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """JPEG 2000's reversible colour transform on (3,H,W) uint8: Y in 0..255, Cb and Cr in -255..255."""
    r, g, b = (rgb[i].astype(np.int32) for i in range(3))
    return (r + 2 * g + b) >> 2, b - g, r - g


def rct_inverse(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    g = y - ((cb + cr) >> 2)
    return np.stack([cr + g, g, cb + g]).astype(np.uint8)


def hp2_forward(rgb: np.ndarray) -> np.ndarray:
    """JPEG-LS's HP2 colour transform (as in CharLS), modulo 256 so it stays 8-bit: (R-G, G, B-(R+G)/2)."""
    r, g, b = (rgb[i].astype(np.int32) for i in range(3))
    return (np.stack([r - g, g, b - ((r + g) >> 1)]) % 256).astype(np.uint8)


def hp2_inverse(t: np.ndarray) -> np.ndarray:
    d, g, e = (t[i].astype(np.int32) for i in range(3))
    r = (d + g) % 256
    return np.stack([r, g, (e + ((r + g) >> 1)) % 256]).astype(np.uint8)


def jpegls(near: int = 0, transform: str = "rgb") -> Roundtrip:
    """JPEG-LS at NEAR (0: lossless), after a reversible colour transform (lossless only)."""
    ic = require("imagecodecs")
    if transform not in JPEGLS_TRANSFORMS:
        raise InputError(f"unknown JPEG-LS colour transform {transform!r}; choose one of {JPEGLS_TRANSFORMS}")
    if near and transform != "rgb":
        raise InputError("near-lossless JPEG-LS bounds the error of the coded planes: use it on rgb only")

    def rt(img: np.ndarray) -> tuple[int, np.ndarray]:
        if transform == "rct" and img.shape[0] == 3:
            y, cb, cr = rct_forward(img)
            # 9-bit chroma as unsigned planes; each plane is its own JPEG-LS stream
            streams = [ic.jpegls_encode(np.ascontiguousarray(p.astype(np.uint16))) for p in (y, cb + 255, cr + 255)]
            planes = [ic.jpegls_decode(s).astype(np.int32) for s in streams]
            return sum(len(s) for s in streams), rct_inverse(planes[0], planes[1] - 255, planes[2] - 255)
        coded = hp2_forward(img) if transform == "hp2" and img.shape[0] == 3 else img
        data = ic.jpegls_encode(_hwc(coded), int(near))
        dec = _chw(ic.jpegls_decode(data), img.shape[0])
        return len(data), hp2_inverse(dec) if transform == "hp2" and img.shape[0] == 3 else dec
    return rt


# ------------------------------------------------------------------------------ batches and series


def _batch_point(raw: np.ndarray, scorer: Scorer, codec: str, setting: str, batch: int,
                 compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]) -> Point:
    """A general-purpose compressor on the same batches latentwire packs into one packet, decoded again."""
    t0 = time.perf_counter()
    decoded = np.empty_like(raw)
    total = 0
    for i in range(0, len(raw), batch):
        chunk = np.ascontiguousarray(raw[i : i + batch])
        data = compress(chunk.tobytes())
        total += len(data)
        decoded[i : i + batch] = np.frombuffer(decompress(data), dtype=raw.dtype).reshape(chunk.shape)
    return Point(codec, f"{setting}, {batch} samples per batch", seconds=time.perf_counter() - t0,
                 **scorer.score(raw, decoded, total))


def xz_point(raw: np.ndarray, scorer: Scorer, batch: int) -> Point:
    return _batch_point(raw, scorer, "xz", "-9e", batch,
                        lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, preset=XZ_PRESET), lzma.decompress)


def zstd_batch_point(raw: np.ndarray, scorer: Scorer, batch: int) -> Point:
    cctx, dctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor()
    return _batch_point(raw, scorer, "zstd", f"level={ZSTD_LEVEL}", batch, cctx.compress, dctx.decompress)


def _flac_roundtrip(series: np.ndarray, fs: int) -> tuple[int, np.ndarray]:
    """(leads, T) int16 -> one FLAC file of all leads: (bytes, decoded (leads, T))."""
    sf = require("soundfile")
    buf = io.BytesIO()
    sf.write(buf, np.ascontiguousarray(series.T.astype(np.int16)), fs, format="FLAC", subtype="PCM_16",
             compression_level=1.0)
    data = buf.getvalue()
    dec, _ = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    return len(data), dec.T.astype(series.dtype)


def flac_points(raw: np.ndarray, groups: np.ndarray, scorer: Scorer, fs: int) -> list[Point]:
    """FLAC on whole records (each record's windows joined back in order: the same samples latentwire
    codes) and on each window alone (a sender of single windows)."""
    out = []
    t0 = time.perf_counter()
    decoded = np.empty_like(raw)
    total = 0
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        series = np.concatenate(list(raw[idx]), axis=-1)  # (leads, n * window), windows are consecutive
        n, dec = _flac_roundtrip(series, fs)
        total += n
        decoded[idx] = np.stack(np.split(dec, len(idx), axis=-1))
    out.append(Point("flac", "whole records", seconds=time.perf_counter() - t0, **scorer.score(raw, decoded, total)))
    t0 = time.perf_counter()
    total = 0
    for i, w in enumerate(raw):
        n, decoded[i] = _flac_roundtrip(w, fs)
        total += n
    seconds = time.perf_counter() - t0
    out.append(Point("flac", "each window alone", seconds=seconds, **scorer.score(raw, decoded, total)))
    return out


def settings(dataset: str) -> dict[str, Any]:
    """The settings of the baselines a dataset's run uses, for the results file."""
    names = {"bsds": ("webp", "png", "avif", "jpegxl", "jpeg-ls"), "mnist": ("webp", "png", "xz", "zstd"),
             "ecg": ("flac", "xz", "zstd")}[dataset]
    return {n: SETTINGS[n] for n in names}
