"""The data sets of the rate-distortion benchmark: where the samples come from (any folder or file
with --data, else the data root's usual sub-folders), what the baselines are fit on, and the jobs
that measure each. A baseline that cannot run is an error that says why, never left out."""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from latentwire.codec import baselines
from latentwire.codec.codec import Codec
from latentwire.codec.errors import InputError
from latentwire.codec.normalization import psnr_db
from latentwire.codec.sources import (
    ImageFolder,
    default_data_root,
    detect_kind,
    load_ecg_windows,
    load_mnist,
    load_source,
)

from ..pca import PcaBasis
from . import codecs
from .bounded import latentwire_bounds
from .points import (
    Job,
    Point,
    Scorer,
    dct_points,
    delta_zstd_point,
    image_codec_point,
    latentwire_jobs,
    level_name,
    measured_levels,
    pca_points,
    raw_point,
    wavelet_points,
    zstd_point,
)

DEFAULT_ECG_HELD_OUT = ("117", "119", "121", "122", "123", "124")


def _data_root(arg: str | None) -> Path:
    root = Path(arg) if arg else default_data_root()
    if root is None:
        raise InputError("no data root: pass --data PATH (any folder or file) or --data-root (e.g. ../shared/data "
                         "or tests/data), or set LATENTWIRE_DATA")
    return root


def data_folder(args: argparse.Namespace, *defaults: str) -> Path:
    """--data as given (any folder or file), else the first of the default sub-folders of the data root."""
    if args.data:
        path = Path(args.data)
        if not path.exists():
            raise InputError(f"--data {path}: no such file or folder")
        return path
    root = _data_root(args.data_root)
    for sub in defaults:
        if (root / sub).exists():
            return root / sub
    raise InputError(f"{root} has none of {', '.join(defaults)}: pass --data PATH to point at the samples")


def _limit(raw: np.ndarray, limit: int | None) -> np.ndarray:
    return raw if limit is None else raw[:limit]


def _webp_qualities(args: argparse.Namespace) -> list[int]:
    return list(range(0, 101, args.webp_step)) + ([100] if 100 % args.webp_step else [])


def mnist_jobs(args: argparse.Namespace, codec: Codec, meta: dict[str, Any]) -> list[Job]:
    """Digits or any fixed-shape images: an MNIST folder (test split measured, train split fits the
    PCA baseline), or any file or folder latentwire reads (--fit-data then fits the PCA)."""
    folder = data_folder(args, "mnist")
    if detect_kind(folder) == "mnist":
        raw = _limit(load_mnist(folder, split="test").samples, args.limit)
        fit = args.fit_data or folder
    else:
        raw = _limit(load_source(folder).samples, args.limit)
        fit = args.fit_data
    train = None
    if args.pca:
        if fit is None:
            raise InputError("the PCA baseline is fit on training samples: pass --fit-data PATH, or --no-pca")
        fit_path = Path(fit)
        fit_set = load_mnist(fit_path, split="train") if detect_kind(fit_path) == "mnist" else load_source(fit_path)
        train = fit_set.samples
    meta["data"] = {"folder": str(folder), "n_samples": len(raw), "sample_shape": list(raw.shape[1:]),
                    "pca_fit": None if train is None else f"{fit} ({len(train)} samples)"}
    meta["values_per_sample"] = int(raw[0].size)
    scorer = Scorer(peak=codec.normalization.peak)
    max_errors = latentwire_bounds(codec, args.max_errors, args.near, args.levels)
    jobs = latentwire_jobs(codec, raw, scorer, args.batch, max_errors, args.compact_levels, args.compact_limit,
                           levels=args.levels)
    jobs += [Job(f"webp q={q}", partial(lambda q: [image_codec_point(raw, "webp", q, scorer)], q), 3)
             for q in _webp_qualities(args)]
    jobs += [Job(f"jpeg q={q}", partial(lambda q: [image_codec_point(raw, "jpeg", q, scorer)], q), 1)
             for q in args.jpeg_qualities]
    jobs += [
        Job("png", lambda: [image_codec_point(raw, "png", None, scorer)], 1),
        Job("webp lossless", lambda: [image_codec_point(raw, "webp", None, scorer)], 20),
        Job("zstd", lambda: [zstd_point(raw, scorer)], 1),
        Job(f"zstd {args.batch} per batch", lambda: [codecs.zstd_batch_point(raw, scorer, args.batch)], 1),
        Job(f"xz {args.batch} per batch", lambda: [codecs.xz_point(raw, scorer, args.batch)], 2),
        Job("raw", lambda: [raw_point(raw, scorer)], 1),
    ]
    if train is not None:
        ks = sorted({min(k, raw[0].size) for k in args.pca_ks})
        n_pca = len(ks) * len(args.pca_steps)

        def run_pca() -> list[Point]:
            basis = PcaBasis.fit(train, max(ks), codec.normalization.raw_min, codec.normalization.raw_max)
            return pca_points(basis, train, raw, scorer, ks, args.pca_steps, args.batch)

        jobs.append(Job(f"pca ({n_pca} settings)", run_pca, n_pca))
    return jobs


def heldout_records(manifest: dict[str, Any], available: Sequence[str]) -> tuple[list[str], str]:
    """Records the bundle never trained on: the manifest's own list when it has one (held-out or
    training records), else the default held-out set. Returns (records, where the choice came from)."""
    data = (manifest.get("training") or {}).get("data") or {}
    for key in ("test_records", "held_out_records", "heldout_records"):
        if data.get(key):
            return [str(r) for r in data[key]], f"manifest training.data.{key}"
    for key in ("records", "train_records", "training_records"):
        if data.get(key):
            used = {str(r) for r in data[key]} | {str(r) for r in data.get("val_records", [])}
            rest = [r for r in available if r not in used]
            if rest:
                return rest, f"all records not in manifest training.data.{key}"
    m = re.search(r"records=([0-9][0-9,]*)", str((manifest.get("training") or {}).get("command", "")))
    if m:
        used = {r for r in m.group(1).split(",") if r}
        rest = [r for r in available if r not in used]
        if rest:
            return rest, "all records not named by records= in the manifest's training command"
    return [r for r in DEFAULT_ECG_HELD_OUT if r in available], "default held-out set (manifest lists no records)"


def training_records(manifest: dict[str, Any]) -> list[str]:
    """Records the bundle learned from (training + validation): what a fitted baseline may see too."""
    data = (manifest.get("training") or {}).get("data") or {}
    for key in ("records", "train_records", "training_records"):
        if data.get(key):
            return [str(r) for r in data[key]] + [str(r) for r in data.get("val_records", [])]
    m = re.search(r"records=([0-9][0-9,]*)", str((manifest.get("training") or {}).get("command", "")))
    return [r for r in m.group(1).split(",") if r] if m else []


def _training_window(manifest: dict[str, Any]) -> int | None:
    """The window the bundle was trained on: its fixed length, else the training set's name (ecg-w<N>)."""
    shape = (manifest.get("input") or {}).get("sample_shape") or []
    if shape and shape[-1] is not None:
        return int(shape[-1])
    name = str(((manifest.get("training") or {}).get("data") or {}).get("name", ""))
    m = re.fullmatch(r"ecg-w(\d+)", name)
    return int(m.group(1)) if m else None


def ecg_jobs(args: argparse.Namespace, codec: Codec, meta: dict[str, Any]) -> list[Job]:
    """Series windows from a folder of WFDB records: the records the bundle never saw (from its
    manifest, or --records); the DCT and wavelet baselines fit on the records it trained on (in
    the same folder, or --fit-data with --fit-records)."""
    folder = data_folder(args, "mitdb")
    if folder.is_file():
        folder = folder.parent
    available = sorted(p.stem for p in folder.glob("*.hea"))
    records, why = heldout_records(codec.manifest.raw, available)
    if args.records:
        records, why = [str(r) for r in args.records], "--records"
    missing = [r for r in records if r not in available]
    if missing or not records:
        raise InputError(f"records {missing or records} are not in {folder} (it has {', '.join(available) or 'none'}): "
                         "pass --data FOLDER or --records")
    shape = codec.sample_shape
    window = args.window or _training_window(codec.manifest.raw) or 1024
    ecg = load_ecg_windows(folder, records=records, window=window)
    raw = ecg.samples
    leads = int(shape[0]) if len(shape) == 2 and shape[0] is not None else raw.shape[1]
    raw = np.ascontiguousarray(raw[:, :leads])  # one-lead models get lead 0 (MLII)
    raw = _limit(raw, args.limit)
    if ecg.groups is None:
        raise InputError("ECG windows load grouped by record; these have no groups")
    groups = ecg.groups[: len(raw)]
    fs = int(ecg.meta["fs"])
    codecs.require("soundfile")
    norm = ecg.normalization
    bits = math.log2(norm.raw_max - norm.raw_min + 1)
    meta["data"] = {"folder": str(folder), "records": records, "records_from": why, "window": window,
                    "leads": leads, "n_samples": len(raw),
                    "prd": f"100*sqrt(sum((x-x_hat)^2)/sum((x-{norm.offset:g})^2)), baseline = ADC zero",
                    "cr": f"samples*{bits:g} bits / (bytes*8)"}
    meta["values_per_sample"] = int(raw[0].size)
    scorer = Scorer(peak=norm.peak, prd_baseline=norm.offset, bits_per_value=bits)
    jobs = latentwire_jobs(codec, raw, scorer, args.batch, latentwire_bounds(codec, args.max_errors, args.near,
                                                                             args.levels),
                           args.compact_levels, args.compact_limit, args.target_prdns, args.levels)
    jobs += [
        Job("zstd", lambda: [zstd_point(raw, scorer)], 1),
        Job("delta+zstd", lambda: [delta_zstd_point(raw, scorer)], 1),
        Job("flac", lambda: codecs.flac_points(raw, groups, scorer, fs), 2),
        Job(f"xz {args.batch} per batch", lambda: [codecs.xz_point(raw, scorer, args.batch)], 2),
        Job("raw", lambda: [raw_point(raw, scorer)], 1),
    ]
    if not (args.dct or args.wavelet):
        return jobs
    fit_folder = Path(args.fit_data) if args.fit_data else folder
    fit_available = sorted(p.stem for p in fit_folder.glob("*.hea"))
    wanted = [str(r) for r in args.fit_records] if args.fit_records else training_records(codec.manifest.raw)
    train_records = [r for r in wanted if r in fit_available and r not in records]
    if not train_records:
        named = ", ".join(wanted) or "none named in the manifest"
        raise InputError(
            f"the DCT and wavelet baselines are fit on training records ({named}), and none of them is in "
            f"{fit_folder}: pass --fit-data FOLDER / --fit-records, or --no-dct --no-wavelet")
    meta["data"]["baseline_fit"] = f"records {','.join(train_records)} in {fit_folder}"
    fitted: dict[str, np.ndarray] = {}

    def train() -> np.ndarray:
        if "x" not in fitted:
            fitted["x"] = np.ascontiguousarray(
                load_ecg_windows(fit_folder, records=train_records, window=window).samples[:, :leads])
        return fitted["x"]

    if args.dct:
        jobs.append(Job(f"dct ({len(args.dct_steps)} steps)", lambda: dct_points(
            train(), raw, scorer, args.dct_steps, norm.offset, norm.raw_min, norm.raw_max, args.batch),
            len(args.dct_steps)))
    if args.wavelet:
        jobs.append(Job(f"wavelet ({len(args.dct_steps)} steps)", lambda: wavelet_points(
            train(), raw, scorer, args.dct_steps, norm.offset, norm.raw_min, norm.raw_max, args.batch),
            len(args.dct_steps)))
    return jobs


# --- bsds: whole photos of two orientations, one packet per image


def _image_point(codec_name: str, setting: str, images: list[np.ndarray],
                 roundtrip: Callable[[np.ndarray], tuple[int, np.ndarray]], **extra: Any) -> Point:
    t0 = time.perf_counter()
    sizes, psnrs, bpps, maxerr = [], [], [], 0.0
    for img in images:
        n, dec = roundtrip(img)
        sizes.append(n)
        psnrs.append(psnr_db(img, dec, 255.0))
        bpps.append(8.0 * n / (img.shape[1] * img.shape[2]))
        maxerr = max(maxerr, float(np.abs(img.astype(np.int16) - dec.astype(np.int16)).max()))
    return Point(codec_name, setting, float(np.mean(sizes)), float(np.mean(psnrs)), bpp=float(np.mean(bpps)),
                 max_abs_error=maxerr, n_samples=len(images), seconds=time.perf_counter() - t0, **extra)


def bsds_jobs(args: argparse.Namespace, codec: Codec, meta: dict[str, Any]) -> list[Job]:
    """Whole photos of any size from a folder (default: BSDS500's test split, else the shipped
    sample), one packet per photo, like one image file per photo for the image codecs."""
    folder = data_folder(args, "bsds500/test", "bsds")
    first = codec.sample_shape[0]
    if first is None:
        raise InputError(f"a photo bundle fixes its channel count; this one's sample shape is {codec.sample_shape}")
    channels = int(first)
    images = ImageFolder(folder, mode="L" if channels == 1 else "RGB").images(args.limit)
    shapes = sorted({tuple(i.shape[1:]) for i in images})
    meta["data"] = {"folder": str(folder), "n_images": len(images), "shapes": [list(s) for s in shapes],
                    "psnr": "mean of per-image PSNR", "bpp": "mean of per-image bits per pixel",
                    "channels": channels}

    classic: dict[tuple[int | None, int | None], int] = {}  # per level: photos sent classically (no latent)

    def lw(q: int | None, e: int | None) -> Callable[[np.ndarray], tuple[int, np.ndarray]]:
        def rt(img: np.ndarray) -> tuple[int, np.ndarray]:
            packet = codec.encode(img[None], quality=q, max_error=e)
            h = codec.header(packet)  # one frame: modes are signalled only when it went classically
            classic[(q, e)] = classic.get((q, e), 0) + int(h.has_residual and h.has_modes)
            return len(packet), codec.decode(packet)[0]
        return rt

    def share(point: Point, q: int | None, e: int | None) -> list[Point]:
        if point.max_error is not None:
            point.alone_share = classic.get((q, e), 0) / len(images)
        return [point]

    def pil(fmt: str, q: int | None) -> Callable[[np.ndarray], tuple[int, np.ndarray]]:
        return lambda img: baselines.image_roundtrip(img, fmt, q)

    jobs = []
    for q in measured_levels(codec, args.levels):
        name = level_name(q)
        jobs.append(Job(f"latentwire {q.name}", partial(lambda q, name: share(_image_point(
            "latentwire", name, images, lw(q.index, None), mode="frame", quality=q.index, max_error=q.max_error),
            q.index, None), q, name), 3))
    if codec.tables.residual is not None:
        for e in latentwire_bounds(codec, args.max_errors, args.near, args.levels):
            jobs.append(Job(f"latentwire max_error={e}", partial(lambda e: share(_image_point(
                "latentwire", f"max_error={e}", images, lw(None, e), mode="frame", max_error=e), None, e), e), 3))
    for fmt, qs in (("webp", _webp_qualities(args)), ("jpeg", args.jpeg_qualities)):
        jobs += [Job(f"{fmt} q={q}", partial(lambda fmt, q: [_image_point(fmt, f"q={q}", images, pil(fmt, q))],
                                             fmt, q), 2) for q in qs]
    jobs += _photo_baseline_jobs(args, images, channels)
    return jobs


def _photo_baseline_jobs(args: argparse.Namespace, images: list[np.ndarray], channels: int) -> list[Job]:
    """AVIF and JPEG XL sweeps, and the lossless and near-lossless codecs, on the same photos."""
    codecs.require("imagecodecs")
    lossless: dict[str, Any] = {"max_error": 0}
    jobs = [Job(f"avif q={q}", partial(lambda q: [_image_point(
        "avif", f"q={q} speed={args.avif_speed} {args.avif_chroma}", images,
        codecs.avif(q, args.avif_speed, args.avif_chroma), quality=q)], q), 2) for q in args.avif_qualities]
    jobs += [Job(f"jpegxl d={d:g}", partial(lambda d: [_image_point(
        "jpegxl", f"distance={d:g} effort={args.jxl_effort}", images, codecs.jpegxl(d, args.jxl_effort))], d), 2)
        for d in args.jxl_distances]
    jobs += [
        Job("png", lambda: [_image_point("png", "lossless", images,
                                         lambda img: baselines.image_roundtrip(img, "png", None), **lossless)], 2),
        Job("webp lossless", lambda: [_image_point(
            "webp", f"lossless q={codecs.WEBP_LOSSLESS_QUALITY} method={codecs.WEBP_LOSSLESS_METHOD}", images,
            codecs.webp_lossless(), **lossless)], 4),
        Job("jpegxl lossless", lambda: [_image_point("jpegxl", f"lossless effort={args.jxl_effort}", images,
                                                     codecs.jpegxl(None, args.jxl_effort), **lossless)], 4),
    ]
    transforms: tuple[str, ...] = codecs.JPEGLS_TRANSFORMS if channels == 3 else ("rgb",)
    for t in transforms:
        jobs.append(Job(f"jpeg-ls {t}", partial(lambda t: [_image_point(
            "jpeg-ls", f"lossless {t}" if channels == 3 else "lossless", images, codecs.jpegls(0, t), **lossless)],
            t), 1))
    jobs += [Job(f"jpeg-ls NEAR={n}", partial(lambda n: [_image_point(
        "jpeg-ls", f"NEAR={n}" + (" rgb" if channels == 3 else ""), images, codecs.jpegls(n),
        mode=codecs.NEAR_LOSSLESS, max_error=n)], n), 1) for n in args.near]
    return jobs


