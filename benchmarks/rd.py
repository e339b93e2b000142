"""Rate-distortion benchmark: latentwire against classical codecs on the same samples, same run.

    python -m benchmarks.rd --dataset mnist|ecg|bsds --bundle DIR [--data-root PATH] [--limit N]
                            [--batch 256] [--out benchmarks/results/rd-<dataset>.json]

Why this exists: the codec's claims are about bytes on the wire. So latentwire's bytes are the
packets AS SENT (header + payload + CRCs, packets of --batch frames, and the compact one-frame
packets), every packet is decoded again and the PSNR is measured on what the receiver gets.
The classical codecs compress each sample on its own (that is how a sender of frames uses them);
the PCA baseline uses the project's own quantizer, entropy coder and packet framing.

Metrics: PSNR over the whole set in raw units (peak = raw range: 255 for pixels, 2047 for 11-bit
ECG). ECG adds PRD = 100 * sqrt(sum (x - x_hat)^2 / sum (x - 1024)^2) (the record's ADC zero,
i.e. the literature's PRD on the zero-mean signal), PRDN (the same against each window's own
mean per lead) and CR = samples * 11 bits / (bytes * 8).
Images (bsds) are whole photos, one packet each: bits per pixel and mean per-image PSNR.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import zstandard
from tqdm import tqdm

from latentwire.codec import baselines
from latentwire.codec.coding import bitstream
from latentwire.codec.codec import Codec
from latentwire.codec.errors import InputError
from latentwire.codec.normalization import psnr_db
from latentwire.codec.sources import ImageFolder, default_data_root, load_ecg_windows, load_mnist

from . import bdrate
from .dct import DctCodec
from .pca import PcaBasis, PcaCodec

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("mnist", "ecg", "bsds")
DEFAULT_ECG_HELD_OUT = ("117", "119", "121", "122", "123", "124")
# custom max-error points between the ladder levels, raw units, per dataset
DEFAULT_MAX_ERRORS = {"mnist": (128, 80, 48, 32, 12, 5, 2, 1), "ecg": (1, 2, 4, 5, 8, 12, 20, 32, 64), "bsds": ()}
DEFAULT_INTERVAL = {"mnist": (22.0, 35.0)}
# PCA: k beyond what the data needs costs ~nothing (coefficients under the step round to 0), so
# the step drives the trade-off; k = all components with a step sweep is close to PCA's best front.
PCA_KS = (32, 64, 128, 256, 784)
DCT_STEPS = (6.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 40.0, 48.0, 64.0, 96.0)
PCA_STEPS = (8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0, 256.0, 384.0)


# ------------------------------------------------------------------------------ results


@dataclass
class Point:
    """One operating point of one codec over the whole benchmark set."""

    codec: str
    setting: str
    bytes_per_sample: float
    psnr_db: float
    payload_bytes_per_sample: float | None = None  # latentwire: range-coded payload only (no framing)
    mode: str | None = None  # latentwire/pca: "packet<N>" (N frames per packet) or "frame" (1 per packet)
    quality: int | None = None
    max_error: int | None = None
    max_abs_error: float | None = None
    prd_percent: float | None = None
    prdn_percent: float | None = None
    cr: float | None = None
    bpp: float | None = None
    k: int | None = None
    step: float | None = None
    pareto: bool | None = None
    n_samples: int | None = None
    seconds: float | None = None

    @property
    def lossless(self) -> bool:
        return math.isinf(self.psnr_db)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Point":
        d = dict(d)
        if d.pop("lossless", False):
            d["psnr_db"] = math.inf
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.lossless:  # JSON has no Infinity: lossless points say so instead
            d["psnr_db"] = None
            d["lossless"] = True
        return d


@dataclass(frozen=True)
class Scorer:
    """How a dataset turns (raw, decoded, bytes) into figures."""

    peak: float
    prd_baseline: float | None = None  # ECG: the ADC zero
    bits_per_value: float | None = None  # ECG: ADC resolution, for CR

    def score(self, raw: np.ndarray, decoded: np.ndarray, total_bytes: int) -> dict[str, Any]:
        n = len(raw)
        out: dict[str, Any] = {
            "bytes_per_sample": total_bytes / n,
            "psnr_db": psnr_db(raw, decoded, self.peak),
            "max_abs_error": float(np.max(np.abs(raw.astype(np.float64) - decoded.astype(np.float64)))),
            "n_samples": n,
        }
        if self.prd_baseline is not None:
            x = raw.astype(np.float64)
            err = float(np.sum((x - decoded.astype(np.float64)) ** 2))
            out["prd_percent"] = 100.0 * math.sqrt(err / float(np.sum((x - self.prd_baseline) ** 2)))
            # PRDN: against each window's own mean, so a DC offset of the record cannot flatter it
            centred = x - x.mean(axis=-1, keepdims=True)
            out["prdn_percent"] = 100.0 * math.sqrt(err / float(np.sum(centred**2)))
        if self.bits_per_value is not None:
            out["cr"] = raw[0].size * self.bits_per_value / (8.0 * total_bytes / n)
        return out


# ------------------------------------------------------------------------------ latentwire


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def level_name(level: Any) -> str:
    """q3 (max_error=8), q0 (latent_step=4): what the level does, next to its index."""
    parts = []
    if getattr(level, "latent_step", 1.0) != 1.0:
        parts.append(f"latent_step={level.latent_step:g}")
    if level.max_error is not None:
        parts.append(f"max_error={level.max_error}")
    return level.name + (f" ({', '.join(parts)})" if parts else "")


def latentwire_point(
    codec: Codec, raw: np.ndarray, scorer: Scorer, *, quality: int | None = None, max_error: int | None = None,
    packet_frames: int = 256,
) -> Point:
    """Encode in packets of packet_frames, decode every packet, score what the receiver got."""
    t0 = time.perf_counter()
    decoded = np.empty_like(raw)
    total = payload = 0
    for sl in _chunks(len(raw), packet_frames):
        packet = codec.encode(raw[sl], quality=quality, max_error=max_error)
        total += len(packet)
        payload += len(bitstream.read_packet(packet)[1])
        decoded[sl] = codec.decode(packet)
    if max_error is not None:
        setting = f"max_error={max_error}"
    else:
        level = codec.qualities[int(quality or 0)]
        setting = level_name(level)
        max_error = level.max_error
    mode = "frame" if packet_frames == 1 else f"packet{packet_frames}"
    return Point("latentwire", setting, mode=mode, quality=quality, max_error=max_error,
                 payload_bytes_per_sample=payload / len(raw), seconds=time.perf_counter() - t0,
                 **scorer.score(raw, decoded, total))


# ------------------------------------------------------------------------------ classical codecs


def _from_baseline(bp: baselines.BaselinePoint, raw: np.ndarray, scorer: Scorer, decoded: np.ndarray | None,
                   seconds: float) -> Point:
    if decoded is None:  # lossless
        fig = scorer.score(raw, raw, int(round(bp.bytes_per_sample * len(raw))))
        fig["bytes_per_sample"] = bp.bytes_per_sample
    else:
        fig = scorer.score(raw, decoded, int(round(bp.bytes_per_sample * len(raw))))
        fig["bytes_per_sample"] = bp.bytes_per_sample
    return Point(bp.codec, bp.setting, seconds=seconds, **fig)


def image_codec_point(raw: np.ndarray, fmt: str, quality: int | None, scorer: Scorer) -> Point:
    t0 = time.perf_counter()
    sizes = np.empty(len(raw))
    decoded = np.empty_like(raw)
    for i, sample in enumerate(raw):
        sizes[i], decoded[i] = baselines.image_roundtrip(sample, fmt, quality)
    setting = "lossless" if quality is None else f"q={quality}"
    bp = baselines.BaselinePoint(fmt, setting, float(sizes.mean()), 0.0)
    p = _from_baseline(bp, raw, scorer, decoded, time.perf_counter() - t0)
    if quality is None:
        assert math.isinf(p.psnr_db), f"{fmt} lossless did not round-trip"
    return p


def zstd_point(raw: np.ndarray, scorer: Scorer, level: int = 19) -> Point:
    t0 = time.perf_counter()
    bp = baselines.zstd_point(raw, level)
    return _from_baseline(bp, raw, scorer, None, time.perf_counter() - t0)


def delta_zstd_point(raw: np.ndarray, scorer: Scorer, level: int = 19) -> Point:
    """Lossless: first value + successive differences along time (int16), zstd per window.
    Differencing is the classical lossless ECG predictor; zstd codes what is left."""
    t0 = time.perf_counter()
    cctx = zstandard.ZstdCompressor(level=level)
    x = raw.astype(np.int16)
    deltas = np.concatenate([x[..., :1], np.diff(x, axis=-1)], axis=-1)
    sizes = [len(cctx.compress(np.ascontiguousarray(d).tobytes())) for d in deltas]
    assert np.array_equal(np.cumsum(deltas, axis=-1, dtype=np.int16), x)
    bp = baselines.BaselinePoint("delta+zstd", f"level={level}", float(np.mean(sizes)), float("inf"))
    return _from_baseline(bp, raw, scorer, None, time.perf_counter() - t0)


def raw_point(raw: np.ndarray, scorer: Scorer) -> Point:
    bp = baselines.raw_point(raw)
    return _from_baseline(bp, raw, scorer, None, 0.0)


# ------------------------------------------------------------------------------ PCA


def _packet_round_trip(codec: PcaCodec | DctCodec, raw: np.ndarray, packet_frames: int) -> tuple[np.ndarray, int]:
    """A baseline's packets of packet_frames frames, decoded back: (decoded samples, total bytes)."""
    decoded = np.empty_like(raw)
    total = 0
    for sl in _chunks(len(raw), packet_frames):
        packet = codec.encode(raw[sl])
        total += len(packet)
        decoded[sl] = codec.decode(packet, raw.dtype)
    return decoded, total


def pca_points(basis: PcaBasis, train_raw: np.ndarray, raw: np.ndarray, scorer: Scorer, ks: Sequence[int],
               steps: Sequence[float], packet_frames: int) -> list[Point]:
    """Every (k, step) pair, packets of packet_frames, decoded back; the Pareto front is flagged."""
    kmax = max(ks)
    train_coef = basis.project(train_raw, kmax)
    points = []
    for k in ks:
        for step in steps:
            t0 = time.perf_counter()
            decoded, total = _packet_round_trip(PcaCodec(basis, k, step, train_coef), raw, packet_frames)
            points.append(Point("pca", f"k={k} step={step:g}", mode=f"packet{packet_frames}", k=k, step=step,
                                seconds=time.perf_counter() - t0, **scorer.score(raw, decoded, total)))
    fr, fp = bdrate.pareto_front([p.bytes_per_sample for p in points], [p.psnr_db for p in points])
    front = set(zip(fr.tolist(), fp.tolist()))
    for p in points:
        p.pareto = (p.bytes_per_sample, p.psnr_db) in front
    return points


def dct_points(train_raw: np.ndarray, raw: np.ndarray, scorer: Scorer, steps: Sequence[float], offset: float,
               raw_min: float, raw_max: float, packet_frames: int) -> list[Point]:
    """DCT transform coding at every step (tables fit on train_raw), packets of packet_frames."""
    points = []
    for step in steps:
        t0 = time.perf_counter()
        dc = DctCodec(raw.shape[-1], step, train_raw, offset, raw_min, raw_max)
        decoded, total = _packet_round_trip(dc, raw, packet_frames)
        points.append(Point("dct", f"step={step:g}", mode=f"packet{packet_frames}", step=step,
                            seconds=time.perf_counter() - t0, **scorer.score(raw, decoded, total)))
    return points


# ------------------------------------------------------------------------------ jobs


@dataclass
class Job:
    label: str
    run: Callable[[], list[Point]]
    weight: int = 1


def run_jobs(jobs: list[Job], show: bool = True) -> list[Point]:
    """Run the work under one progress bar (weighted by rough cost)."""
    points: list[Point] = []
    with tqdm(total=sum(j.weight for j in jobs), unit="step", disable=not show, file=sys.stderr) as bar:
        for job in jobs:
            bar.set_description(job.label)
            points.extend(job.run())
            bar.update(job.weight)
    return points


def latentwire_jobs(codec: Codec, raw: np.ndarray, scorer: Scorer, batch: int, max_errors: Sequence[int],
                    compact_levels: int, compact_limit: int | None) -> list[Job]:
    jobs = []
    for q in codec.qualities:
        jobs.append(Job(f"latentwire {q.name}", lambda q=q: [latentwire_point(codec, raw, scorer, quality=q.index,
                                                                               packet_frames=batch)], 2))
    if codec.tables.residual is not None:
        for e in max_errors:
            jobs.append(Job(f"latentwire max_error={e}", lambda e=e: [latentwire_point(
                codec, raw, scorer, max_error=e, packet_frames=batch)], 2))
    sub = raw if compact_limit is None else raw[:compact_limit]
    for q in codec.qualities[:compact_levels]:
        jobs.append(Job(f"latentwire {q.name} per-frame", lambda q=q: [latentwire_point(
            codec, sub, scorer, quality=q.index, packet_frames=1)], 4))
    return jobs


# ------------------------------------------------------------------------------ datasets


def _data_root(arg: str | None) -> Path:
    root = Path(arg) if arg else default_data_root()
    if root is None:
        raise InputError("no data root: pass --data-root (e.g. ../shared/data or tests/data) or set LATENTWIRE_DATA")
    return root


def _limit(raw: np.ndarray, limit: int | None) -> np.ndarray:
    return raw if limit is None else raw[:limit]


def _webp_qualities(args: argparse.Namespace) -> list[int]:
    return list(range(0, 101, args.webp_step)) + ([100] if 100 % args.webp_step else [])


def mnist_jobs(args: argparse.Namespace, codec: Codec, meta: dict[str, Any]) -> list[Job]:
    folder = _data_root(args.data_root) / "mnist"
    raw = _limit(load_mnist(folder, split="test").samples, args.limit)
    train = load_mnist(folder, split="train").samples
    meta["data"] = {"folder": str(folder), "split": "test", "n_samples": len(raw), "pca_fit": f"train ({len(train)})"}
    scorer = Scorer(peak=codec.normalization.peak)
    jobs = latentwire_jobs(codec, raw, scorer, args.batch, args.max_errors, args.compact_levels, args.compact_limit)
    jobs += [Job(f"webp q={q}", lambda q=q: [image_codec_point(raw, "webp", q, scorer)], 3) for q in _webp_qualities(args)]
    jobs += [Job(f"jpeg q={q}", lambda q=q: [image_codec_point(raw, "jpeg", q, scorer)], 1) for q in args.jpeg_qualities]
    jobs += [
        Job("png", lambda: [image_codec_point(raw, "png", None, scorer)], 1),
        Job("webp lossless", lambda: [image_codec_point(raw, "webp", None, scorer)], 20),
        Job("zstd", lambda: [zstd_point(raw, scorer)], 1),
        Job("raw", lambda: [raw_point(raw, scorer)], 1),
    ]
    if args.pca:
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
    folder = _data_root(args.data_root) / "mitdb"
    available = sorted(p.stem for p in folder.glob("*.hea"))
    records, why = heldout_records(codec.manifest.raw, available)
    if args.records:
        records, why = [str(r) for r in args.records], "--records"
    if not records:
        raise InputError(f"none of the held-out records are in {folder}; pass --records")
    shape = codec.sample_shape
    window = args.window or _training_window(codec.manifest.raw) or 1024
    ecg = load_ecg_windows(folder, records=records, window=window)
    raw = ecg.samples
    leads = int(shape[0]) if len(shape) == 2 and shape[0] is not None else raw.shape[1]
    raw = np.ascontiguousarray(raw[:, :leads])  # one-lead models get lead 0 (MLII)
    raw = _limit(raw, args.limit)
    norm = ecg.normalization
    bits = math.log2(norm.raw_max - norm.raw_min + 1)
    meta["data"] = {"folder": str(folder), "records": records, "records_from": why, "window": window,
                    "leads": leads, "n_samples": len(raw),
                    "prd": f"100*sqrt(sum((x-x_hat)^2)/sum((x-{norm.offset:g})^2)), baseline = ADC zero",
                    "cr": f"samples*{bits:g} bits / (bytes*8)"}
    scorer = Scorer(peak=norm.peak, prd_baseline=norm.offset, bits_per_value=bits)
    jobs = latentwire_jobs(codec, raw, scorer, args.batch, args.max_errors, args.compact_levels, args.compact_limit)
    jobs += [
        Job("zstd", lambda: [zstd_point(raw, scorer)], 1),
        Job("delta+zstd", lambda: [delta_zstd_point(raw, scorer)], 1),
        Job("raw", lambda: [raw_point(raw, scorer)], 1),
    ]
    train_records = [r for r in training_records(codec.manifest.raw) if r in available and r not in records]
    if args.dct and train_records:
        meta["data"]["dct_fit"] = f"training records {','.join(train_records)}"

        def run_dct() -> list[Point]:
            train = np.ascontiguousarray(load_ecg_windows(folder, records=train_records, window=window).samples[:, :leads])
            return dct_points(train, raw, scorer, args.dct_steps, norm.offset, norm.raw_min, norm.raw_max, args.batch)

        jobs.append(Job(f"dct ({len(args.dct_steps)} steps)", run_dct, len(args.dct_steps)))
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
    root = _data_root(args.data_root)
    folder = root / "bsds500" / "test"
    if not folder.is_dir():
        folder = root / "bsds"  # the shipped sample (tests/data/bsds)
    channels = int(codec.sample_shape[0])
    images = ImageFolder(folder, mode="L" if channels == 1 else "RGB").images(args.limit)
    shapes = sorted({tuple(i.shape[1:]) for i in images})
    meta["data"] = {"folder": str(folder), "n_images": len(images), "shapes": [list(s) for s in shapes],
                    "psnr": "mean of per-image PSNR", "bpp": "mean of per-image bits per pixel",
                    "channels": channels}

    def lw(q: int | None, e: int | None) -> Callable[[np.ndarray], tuple[int, np.ndarray]]:
        def rt(img: np.ndarray) -> tuple[int, np.ndarray]:
            packet = codec.encode(img[None], quality=q, max_error=e)
            return len(packet), codec.decode(packet)[0]
        return rt

    def pil(fmt: str, q: int | None) -> Callable[[np.ndarray], tuple[int, np.ndarray]]:
        return lambda img: baselines.image_roundtrip(img, fmt, q)

    jobs = []
    for q in codec.qualities:
        name = level_name(q)
        jobs.append(Job(f"latentwire {q.name}", lambda q=q, name=name: [_image_point(
            "latentwire", name, images, lw(q.index, None), mode="frame", quality=q.index, max_error=q.max_error)], 3))
    if codec.tables.residual is not None:
        for e in args.max_errors:
            jobs.append(Job(f"latentwire max_error={e}", lambda e=e: [_image_point(
                "latentwire", f"max_error={e}", images, lw(None, e), mode="frame", max_error=e)], 3))
    for fmt, qs in (("webp", _webp_qualities(args)), ("jpeg", args.jpeg_qualities)):
        jobs += [Job(f"{fmt} q={q}", lambda fmt=fmt, q=q: [_image_point(fmt, f"q={q}", images, pil(fmt, q))], 2)
                 for q in qs]
    jobs.append(Job("png", lambda: [_image_point("png", "lossless", images, pil("png", None))], 2))
    return jobs


# ------------------------------------------------------------------------------ summary


def curve(points: list[Point], codec: str, mode_prefix: str | None = "packet") -> tuple[list[float], list[float]]:
    sel = [p for p in points if p.codec == codec and not p.lossless
           and (mode_prefix is None or p.mode is None or p.mode.startswith(mode_prefix))]
    x = [p.bpp if p.bpp is not None else p.bytes_per_sample for p in sel]
    return x, [p.psnr_db for p in sel]


def bd_rates(points: list[Point], interval: tuple[float, float] | None, lw_mode: str | None) -> dict[str, Any]:
    """BD-rate of latentwire against each lossy baseline (negative: latentwire needs fewer bytes)."""
    lw = curve(points, "latentwire", lw_mode)
    out: dict[str, Any] = {}
    for name in sorted({p.codec for p in points if p.codec != "latentwire" and not p.lossless}):
        ref = curve(points, name, None)
        try:
            res = bdrate.bd_rate(*ref, *lw, *(interval or (None, None)))
            out[name] = res.to_dict()
        except InputError as exc:
            out[name] = {"value": None, "error": str(exc)}
    return out


def _lw_bytes_for(points: list[Point], target_db: float, mode: str) -> float | None:
    """Bytes latentwire needs for >= target_db: interpolated on its front, the cheapest point beyond
    its range (a cheaper point with more PSNR, or the lossless level)."""
    sel = [p for p in points if p.codec == "latentwire" and p.mode == mode]
    r = bdrate.rate_at_psnr([p.bytes_per_sample for p in sel], [p.psnr_db for p in sel], target_db)
    if r is not None:
        return r
    ok = [p.bytes_per_sample for p in sel if p.psnr_db >= target_db]
    return min(ok) if ok else None


def targets_mnist(points: list[Point], codec: Codec, batch: int, bd: dict[str, Any]) -> list[dict[str, Any]]:
    mode = f"packet{batch}"
    lw = [p for p in points if p.codec == "latentwire" and p.mode == mode]
    ladder = [p for p in lw if p.setting.startswith("q")]
    out = []
    lo, hi = min(p.psnr_db for p in ladder), max(p.psnr_db for p in ladder)
    out.append({"target": ">= 4 quality levels spanning <= 21 dB to >= 35 dB",
                "measured": f"{len(ladder)} levels, {lo:.2f} dB .. {'lossless' if math.isinf(hi) else f'{hi:.2f} dB'}",
                "met": len(ladder) >= 4 and lo <= 21.0 and hi >= 35.0})
    for db, nbytes in ((22.5, 16.0), (24.2, 24.0)):
        best = max((p.psnr_db for p in lw if p.bytes_per_sample <= nbytes), default=None)
        need = _lw_bytes_for(points, db, mode)
        out.append({"target": f">= {db} dB at <= {nbytes:g} B/sample",
                    "measured": (f"best PSNR at <= {nbytes:g} B: {best:.2f} dB; " if best is not None else
                                 f"no point at <= {nbytes:g} B; ") + (f"{db} dB needs {need:.2f} B" if need else ""),
                    "met": best is not None and best >= db})
    worst = None
    wx, wy = curve(points, "webp", None)
    fr, fp = bdrate.pareto_front(wx, wy)
    ok = True
    for r, p in zip(fr, fp):
        need = _lw_bytes_for(points, float(p), mode)
        ratio = None if need is None else need / r
        if ratio is None or ratio >= 1.0:
            ok = False
        if ratio is not None and (worst is None or ratio > worst[0]):
            worst = (ratio, float(p), float(r))
    out.append({"target": "fewer bytes than WebP at every PSNR",
                "measured": "no WebP point" if worst is None else
                f"worst case: {100 * worst[0]:.1f}% of WebP's bytes (WebP {worst[2]:.1f} B at {worst[1]:.2f} dB)",
                "met": ok and worst is not None})
    w = bd.get("webp", {})
    out.append({"target": "BD-rate vs WebP <= -75% over 22-35 dB",
                "measured": "n/a" if w.get("value") is None else
                f"{w['value']:.1f}% over {w['lo']:.2f}-{w['hi']:.2f} dB" + (" (clipped to overlap)" if w["clipped"] else ""),
                # an interval cut short by WebP's own range (it cannot go below ~22.7 dB on digits)
                # still counts if it keeps >= 80 % of 22-35 dB
                "met": w.get("value") is not None and w["value"] <= -75.0 and (w["hi"] - w["lo"]) >= 0.8 * 13.0})
    px, py = curve(points, "pca", None)
    lx, ly = curve(points, "latentwire", mode)
    fr, fp = bdrate.pareto_front(px, py)
    margins = []
    for r, p in zip(fr, fp):
        mine = bdrate.psnr_at_rate(lx, ly, float(r))
        if mine is not None:
            margins.append((mine - float(p), float(r)))
    pca_bd = bd.get("pca", {})
    out.append({"target": "better than PCA (same quantizer + coder) at equal bytes",
                "measured": "no overlap" if not margins else
                f"latentwire PSNR - PCA PSNR at PCA's front points {min(m[0] for m in margins):+.2f} .. "
                f"{max(m[0] for m in margins):+.2f} dB ({len(margins)} points, "
                f"{min(m[1] for m in margins):.1f}-{max(m[1] for m in margins):.1f} B)"
                + ("" if pca_bd.get("value") is None else f"; BD-rate vs PCA {pca_bd['value']:.1f}%"),
                "met": bool(margins) and min(m[0] for m in margins) > 0})
    return out


def _best_cr(points: list[Point], codec: str, prd: float) -> Point | None:
    ok = [p for p in points if p.codec == codec and (p.mode is None or p.mode.startswith("packet"))
          and p.prd_percent is not None and p.prd_percent <= prd]
    return max(ok, key=lambda p: p.cr or 0.0, default=None)


def targets_ecg(points: list[Point]) -> list[dict[str, Any]]:
    best = _best_cr(points, "latentwire", 2.7)
    dct = _best_cr(points, "dct", 2.7)
    return [{"target": "CR >= 32 at PRD <= 2.7%",
             "measured": ("no latentwire point with PRD <= 2.7%" if best is None else
                          f"best CR at PRD <= 2.7%: {best.cr:.1f} ({best.setting}, PRD {best.prd_percent:.2f}%)")
             + ("" if dct is None else f"; DCT (same quantizer + coder): {dct.cr:.1f} ({dct.setting}, PRD {dct.prd_percent:.2f}%)"),
             "met": best is not None and (best.cr or 0) >= 32.0}]


# ------------------------------------------------------------------------------ output


def run_metadata(args: argparse.Namespace, codec: Codec, argv: Sequence[str]) -> dict[str, Any]:
    def ver(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "dataset": args.dataset,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.rd " + shlex.join(argv),
        "git_commit": commit,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "versions": {n: ver(n) for n in ("latentwire", "numpy", "onnxruntime", "Pillow", "zstandard", "constriction")},
        "bundle": {"path": str(codec.bundle.path), "name": codec.manifest.name, "model_id": codec.model_id,
                   "family": codec.manifest.family, "qualities": [asdict(q) for q in codec.qualities],
                   "training": codec.manifest.raw.get("training", {}).get("command")},
        "batch": args.batch,
        "bytes": "latentwire and pca: whole packets (header + payload + CRCs) / frames; others: per-sample files",
    }


def format_table(points: list[Point]) -> str:
    ecg = any(p.prd_percent is not None for p in points)
    img = any(p.bpp is not None for p in points)
    head = f"{'codec':<11} {'setting':<24} {'mode':<10} {'B/sample':>10} {'PSNR dB':>8}"
    head += f" {'PRD %':>7} {'PRDN %':>7} {'CR':>7}" if ecg else ""
    head += f" {'bpp':>7}" if img else ""
    lines = [head, "-" * len(head)]
    order = {id(p): i for i, p in enumerate(points)}
    lw_key = lambda p: (p.codec != "latentwire", p.mode == "frame", p.bytes_per_sample if p.codec == "latentwire" else order[id(p)])  # noqa: E731
    for p in sorted(points, key=lw_key):
        if p.codec == "pca" and not p.pareto:
            continue
        psnr = "inf" if p.lossless else f"{p.psnr_db:.2f}"
        line = f"{p.codec:<11} {p.setting:<24} {p.mode or '':<10} {p.bytes_per_sample:>10.2f} {psnr:>8}"
        if ecg:
            prd = [float("nan") if v is None else v for v in (p.prd_percent, p.prdn_percent, p.cr)]
            line += f" {prd[0]:>7.2f} {prd[1]:>7.2f} {prd[2]:>7.2f}"
        if img:
            line += f" {p.bpp if p.bpp is not None else float('nan'):>7.3f}"
        lines.append(line)
    return "\n".join(lines)


def plot(points: list[Point], path: Path, title: str) -> Path | None:
    """PSNR vs bytes per sample (log x), next to the JSON; skipped (None) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install -e '.[dev]')", file=sys.stderr)
        return None
    img = any(p.bpp is not None for p in points)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"latentwire": ("C3", "o"), "pca": ("C2", "s"), "dct": ("C2", "D"), "webp": ("C0", "^"), "jpeg": ("C1", "v")}
    series: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        if p.lossless or (p.codec == "pca" and not p.pareto):
            continue
        series.setdefault((p.codec, p.mode or ""), []).append(p)
    for (name, mode), pts in sorted(series.items()):
        pts.sort(key=lambda p: p.bytes_per_sample)
        x = [p.bpp if img else p.bytes_per_sample for p in pts]
        color, marker = styles.get(name, ("C7", "x"))
        label = name + (f" ({mode})" if mode else "") + (" front" if name == "pca" else "")
        ax.plot(x, [p.psnr_db for p in pts], marker=marker, color=color, markersize=4, label=label,
                linestyle="--" if mode == "frame" else "-", alpha=0.6 if mode == "frame" else 1.0)
    for p in points:
        if p.lossless:
            ax.axvline(p.bpp if img else p.bytes_per_sample, color="0.7", linewidth=0.8, linestyle=":")
            ax.annotate(f"{p.codec} lossless", (p.bpp if img else p.bytes_per_sample, ax.get_ylim()[0]),
                        rotation=90, fontsize=7, color="0.4", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel" if img else "bytes per sample (as sent)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reuse_baselines(path: Path, meta: dict[str, Any]) -> list[Point]:
    """The classical codecs' points of an earlier run on the same samples (they do not depend on
    the bundle), so re-measuring a new bundle does not spend CPU minutes on WebP again."""
    doc = json.loads(path.read_text())
    old = doc["meta"]
    if old["dataset"] != meta["dataset"] or old.get("data") != meta.get("data"):
        raise InputError(f"{path} was measured on other samples ({old.get('data')}); run the baselines again")
    meta["baselines_from"] = {"file": str(path), "date": old["date"], "command": old["command"],
                              "git_commit": old.get("git_commit")}
    return [Point.from_dict(p) for p in doc["points"] if p["codec"] != "latentwire"]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rd", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--bundle", required=True, help="codec bundle directory (calibrated)")
    p.add_argument("--data-root", help="folder holding mnist/, mitdb/, bsds500/ (default: $LATENTWIRE_DATA or ../shared/data)")
    p.add_argument("--limit", type=int, help="first N samples (bsds: images) only")
    p.add_argument("--batch", type=int, default=256, help="frames per latentwire packet (the streaming batch size)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/rd-<dataset>.json); the plot goes next to it")
    p.add_argument("--max-errors", type=lambda s: [int(v) for v in s.split(",") if v],
                   help="custom max_error points between the ladder levels (comma list; '' for none)")
    p.add_argument("--compact-levels", type=int, default=3, help="ladder levels also measured in per-frame packets")
    p.add_argument("--compact-limit", type=int, default=2000, help="frames measured in per-frame mode (0: all)")
    p.add_argument("--webp-step", type=int, default=5, help="WebP quality sweep 0..100 in this step")
    p.add_argument("--jpeg-qualities", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100])
    p.add_argument("--pca-ks", type=lambda s: [int(v) for v in s.split(",")], default=list(PCA_KS))
    p.add_argument("--pca-steps", type=lambda s: [float(v) for v in s.split(",")], default=list(PCA_STEPS))
    p.add_argument("--no-pca", dest="pca", action="store_false", help="skip the PCA baseline (mnist)")
    p.add_argument("--dct-steps", type=lambda s: [float(v) for v in s.split(",")], default=list(DCT_STEPS),
                   help="ecg: DCT baseline quantizer steps in raw units")
    p.add_argument("--no-dct", dest="dct", action="store_false", help="skip the DCT baseline (ecg)")
    p.add_argument("--records", type=lambda s: s.split(","), help="ecg: held-out records (default: from the manifest)")
    p.add_argument("--window", type=int, help="ecg: window length (default: the bundle's training window, else 1024)")
    p.add_argument("--interval", type=lambda s: tuple(float(v) for v in s.split(",")),
                   help="BD-rate PSNR interval lo,hi (default mnist 22,35; else the overlap)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--reuse-baselines", metavar="JSON",
                   help="take the classical codecs' points from an earlier results file on the same samples")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.max_errors is None:
        args.max_errors = list(DEFAULT_MAX_ERRORS[args.dataset])
    if args.compact_limit == 0:
        args.compact_limit = None
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    codec = Codec.load(args.bundle, provider="cpu", threads=args.threads)
    meta = run_metadata(args, codec, argv)
    builders = {"mnist": mnist_jobs, "ecg": ecg_jobs, "bsds": bsds_jobs}
    jobs = builders[args.dataset](args, codec, meta)
    reused: list[Point] = []
    if args.reuse_baselines:
        reused = reuse_baselines(Path(args.reuse_baselines), meta)
        jobs = [j for j in jobs if j.label.startswith("latentwire")]
    t0 = time.perf_counter()
    points = run_jobs(jobs, show=args.progress) + reused
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    interval = args.interval or DEFAULT_INTERVAL.get(args.dataset)
    lw_mode = None if args.dataset == "bsds" else f"packet{args.batch}"
    bd = bd_rates(points, interval, lw_mode)
    summary: dict[str, Any] = {"bd_rate_percent_vs": bd, "bd_interval_db": interval or "overlap"}
    if args.dataset == "mnist":
        summary["targets"] = targets_mnist(points, codec, args.batch, bd)
    elif args.dataset == "ecg":
        summary["targets"] = targets_ecg(points)
    out = Path(args.out) if args.out else RESULTS / f"rd-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summary, "points": [p.to_dict() for p in points]}
    out.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(format_table(points))
    print()
    for name, r in bd.items():
        if r.get("value") is None:
            print(f"BD-rate latentwire vs {name}: n/a ({r.get('error')})")
        else:
            print(f"BD-rate latentwire vs {name}: {r['value']:+.1f}% over {r['lo']:.2f}-{r['hi']:.2f} dB"
                  + (" (clipped to the overlap)" if r["clipped"] else ""))
    for t in summary.get("targets", []):
        print(f"[{'MET' if t['met'] else 'NOT MET'}] {t['target']}: {t['measured']}")
    if args.plot:
        png = plot(points, out.with_suffix(".png"), f"{args.dataset}: {codec.manifest.name or codec.model_id[:12]}")
        if png:
            print(f"plot: {png}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
