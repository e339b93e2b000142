"""`latentwire eval`: what a bundle costs and delivers on your data, as JSON (and, with
--picture, as a PNG of originals beside their reconstructions at every level).

Bytes are counted as sent: whole packets (header, payload and checksums) of `--batch` frames,
divided by the frames they carry. A folder of photos is evaluated on whole photos, one packet
each (what a sender of photos sends), unless a crop `size` is given as a source option.
Fidelity is reported where it means something: PSNR everywhere; bits per pixel for images;
for series (ECG), PRD against the ADC zero, PRDN (each window's own mean removed per lead, the
figure a baseline offset cannot flatter) and the compression ratio against the raw bits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .codec import Codec
from .coding.transform import prdn_per_frame
from .errors import InputError, LatentwireError
from .normalization import psnr_db
from .sources import ImageFolder, detect_kind, load_source, source_option

Samples = np.ndarray | list[np.ndarray]  # one batchable array, or whole images of different sizes


@dataclass(frozen=True)
class LevelResult:
    """One quality level (or custom max_error) measured over a set of samples."""

    quality: int | None
    max_error: int | None
    frames: int
    bytes_per_sample: float
    bits_per_value: float
    psnr_db: float
    max_abs_error: float
    compression_ratio: float
    bits_per_pixel: float | None = None  # images: bits / (H x W), all channels
    prd_percent: float | None = None  # series: error energy over the signal's energy about the ADC zero
    prdn_percent: float | None = None  # series: the same about each window's own mean (per lead)
    prdn_window_mean: float | None = None  # series: each window's own PRDN, averaged
    prdn_window_p95: float | None = None  # series: ... and its 95th percentile
    target_prdn: float | None = None  # the per-window PRDN asked for (rate-controlled runs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def raw_bits(codec: Codec) -> int:
    """Bits of one raw value as acquired (8 for pixels, 11 for MIT-BIH): the CR reference."""
    norm = codec.normalization
    return max(1, math.ceil(math.log2(norm.raw_max - norm.raw_min + 1))) if norm.is_integer else 32


def prd(raw: np.ndarray, decoded: np.ndarray, zero: float) -> float:
    """PRD in percent: 100 * sqrt(sum err^2 / sum (x - zero)^2) over all windows."""
    x = raw.astype(np.float64)
    err = x - decoded.astype(np.float64)
    return float(100 * math.sqrt(float((err**2).sum()) / max(float(((x - zero) ** 2).sum()), 1e-12)))


def prdn(raw: np.ndarray, decoded: np.ndarray) -> float:
    """PRDN in percent: like prd, about each window's mean per lead (raw (N, leads, L))."""
    x = raw.astype(np.float64)
    err = x - decoded.astype(np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    return float(100 * math.sqrt(float((err**2).sum()) / max(float((centred**2).sum()), 1e-12)))


def _round_trip(codec: Codec, samples: Samples, quality: int | None, max_error: int | None, batch: int,
                progress: bool, target_prdn: float | None = None) -> tuple[int, list[np.ndarray]]:
    """(bytes sent, decoded samples in input order): packets of ``batch`` frames, or one per image."""
    total, decoded = 0, []
    if isinstance(samples, list):
        for img in tqdm(samples, disable=not progress, desc="eval", unit="image"):
            packet = codec.encode(img[None], quality=quality, max_error=max_error)
            total += len(packet)
            decoded.append(codec.decode(packet)[0])
        return total, decoded
    for i in tqdm(range(0, samples.shape[0], batch), disable=not progress, desc="eval", unit="packet"):
        packet = codec.encode(samples[i : i + batch], quality=quality, max_error=max_error, target_prdn=target_prdn)
        total += len(packet)
        decoded.extend(codec.decode(packet))
    return total, decoded


def evaluate(
    codec: Codec, raw: Samples, quality: int | None = None, max_error: int | None = None, batch: int = 256,
    progress: bool = False, keep: list[np.ndarray] | None = None, target_prdn: float | None = None,
) -> LevelResult:
    """Measure one level on raw samples. keep: if given, receives the decoded samples.
    target_prdn: series with a transform residual, each window coded to this PRDN (percent)."""
    total, decoded = _round_trip(codec, raw, quality, max_error, batch, progress, target_prdn)
    if keep is not None:
        keep.extend(decoded)
    frames = len(raw)
    values = sum(int(s.size) for s in raw)
    peak = codec.normalization.peak
    if isinstance(raw, list):  # whole images: the mean of per-image PSNRs, as image codecs are compared
        psnrs = [psnr_db(a, b, peak) for a, b in zip(raw, decoded, strict=True)]
        psnr = float(np.mean(psnrs)) if all(math.isfinite(p) for p in psnrs) else float("inf")
        max_err = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(raw, decoded, strict=True))
    else:
        dec = np.stack(decoded)
        psnr = psnr_db(raw, dec, peak)
        max_err = float(np.abs(raw.astype(np.float64) - dec).max())
    bound = (
        max_error if max_error is not None else (codec.qualities[quality].max_error if quality is not None else None)
    )
    spatial = codec.manifest.spatial_dims
    pixels = sum(int(np.prod(s.shape[1:])) for s in raw)
    series = spatial == 1
    windows = prdn_per_frame(np.asarray(raw), np.stack(decoded)) if series else None
    return LevelResult(
        quality=quality,
        max_error=bound,
        frames=frames,
        bytes_per_sample=total / frames,
        bits_per_value=total * 8 / values,
        psnr_db=psnr,
        max_abs_error=max_err,
        compression_ratio=values * raw_bits(codec) / (total * 8),
        bits_per_pixel=total * 8 / pixels if spatial == 2 else None,
        prd_percent=prd(np.asarray(raw), np.stack(decoded), codec.normalization.offset) if series else None,
        prdn_percent=prdn(np.asarray(raw), np.stack(decoded)) if series else None,
        prdn_window_mean=float(np.mean(windows)) if windows is not None else None,
        prdn_window_p95=float(np.percentile(windows, 95)) if windows is not None else None,
        target_prdn=target_prdn,
    )


def load_samples(path: str | Path, options: dict[str, Any], limit: int | None = None) -> Samples:
    """Any source latentwire reads; a folder of photos gives whole photos unless a crop size is set."""
    if detect_kind(path) == "images" and "size" not in options:
        allowed = {"mode", "subdirs", "limit"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InputError(f"options {unknown} apply to photo crops only; whole photos take {sorted(allowed)} "
                             "(or pass size=H,W to evaluate crops)")
        subdirs = options.get("subdirs")
        folder = ImageFolder(path, mode=options.get("mode", "RGB"), subdirs=subdirs)
        return folder.images(limit=limit if limit is not None else options.get("limit"))
    return load_source(path, **options).samples[:limit]


def write_picture(codec: Codec, raw: Samples, levels: Sequence[int | None], max_errors: Sequence[int], path: Path,
                  n: int = 4) -> Path:
    """Originals (first column) beside each level's reconstruction, with size and PSNR under each."""
    from .picture import Tile, grid

    picked = [raw[i] for i in np.linspace(0, len(raw) - 1, min(n, len(raw))).round().astype(int).tolist()]
    rows: list[list[Tile]] = [[Tile(s, "original")] for s in picked]
    peak = codec.normalization.peak
    runs = [(q, None) for q in levels] + [(None, e) for e in max_errors]
    for q, e in runs:
        for row, s in zip(rows, picked, strict=True):
            packet = codec.encode(s[None], quality=q, max_error=e)
            out = codec.decode(packet)[0]
            name = f"max err {e}" if q is None else codec.qualities[q].name
            size = (f"{len(packet) * 8 / int(np.prod(s.shape[1:])):.3f} bpp" if codec.manifest.spatial_dims == 2
                    else f"{len(packet)} B")
            fid = psnr_db(s, out, peak)
            fid_text = "lossless" if not math.isfinite(fid) else f"{fid:.2f} dB"
            if s.ndim == 2:  # series: PRDN says more than PSNR to someone reading an ECG
                fid_text += f" PRDN {prdn(s[None], out[None]):.1f}%"
            row.append(Tile(out, f"{name}: {size}\n{fid_text}"))
    norm = codec.normalization
    return grid(rows, path, raw_min=norm.raw_min, raw_max=norm.raw_max,
                title=f"{codec.manifest.name} ({codec.model_id[:12]}): original, then each level "
                      "(one packet per sample)")


def add_parser(subparsers: Any, name: str = "eval") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="bytes per sample, bits per value, PSNR (and PRD/CR) per quality level",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="default")
    p.add_argument("--data", type=Path, required=True, help="any data source latentwire reads (folder or file)")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE")
    p.add_argument("--quality", type=int, action="append", default=None, help="level(s) to measure (default: all)")
    p.add_argument("--max-error", type=int, action="append", default=[], help="also measure these custom bounds")
    p.add_argument("--target-prdn", type=float, action="append", default=[],
                   help="series with a transform residual: also code each window to this PRDN (percent); reports "
                        "the windows' mean and 95th percentile PRDN (repeatable)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch", type=int, default=256, help="frames per packet (whole photos: one packet each)")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--picture", type=Path, default=None, metavar="PNG",
                   help="write originals beside their reconstructions at every level, size and fidelity under each")
    p.add_argument("--picture-samples", type=int, default=4, help="rows in the picture (samples spread over the data)")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        codec = Codec.load(args.bundle, provider=args.provider)
        raw = load_samples(args.data, dict(args.source_option), args.limit)
        if len(raw) == 0:
            raise InputError(f"{args.data}: no samples to evaluate")
        levels = args.quality if args.quality is not None else [q.index for q in codec.qualities]
        results = [evaluate(codec, raw, quality=q, batch=args.batch, progress=True) for q in levels]
        results += [evaluate(codec, raw, max_error=e, batch=args.batch, progress=True) for e in args.max_error]
        results += [evaluate(codec, raw, batch=args.batch, progress=True, target_prdn=t) for t in args.target_prdn]
        picture = (
            write_picture(codec, raw, levels, args.max_error, args.picture, args.picture_samples)
            if args.picture
            else None
        )
    except (LatentwireError, OSError) as exc:
        print(f"latentwire eval: {exc}", file=sys.stderr)
        return 1
    report = {
        "bundle": str(codec.bundle.path), "model_id": codec.model_id, "data": str(args.data), "frames": len(raw),
        "batch": None if isinstance(raw, list) else args.batch, "raw_bits_per_value": raw_bits(codec),
        "levels": [r.to_dict() for r in results],
    }
    if picture is not None:
        report["picture"] = str(picture)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0
