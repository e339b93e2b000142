"""`latentwire eval`: what a bundle costs and delivers on your data, as JSON.

Bytes are counted as sent: whole packets (header, payload and checksums) of `--batch` frames,
divided by the frames they carry.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .codec import Codec
from .errors import LatentwireError
from .normalization import psnr_db
from .sources import load_source, source_option


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
    prd_percent: float
    compression_ratio: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def raw_bits(codec: Codec) -> int:
    """Bits of one raw value as acquired (8 for pixels, 11 for MIT-BIH): the CR reference."""
    norm = codec.normalization
    return max(1, math.ceil(math.log2(norm.raw_max - norm.raw_min + 1))) if norm.is_integer else 32


def evaluate(
    codec: Codec, raw: np.ndarray, quality: int | None = None, max_error: int | None = None, batch: int = 256,
    progress: bool = False,
) -> LevelResult:
    total = 0
    decoded = np.empty_like(raw)
    for i in tqdm(range(0, raw.shape[0], batch), disable=not progress, desc="eval", unit="packet"):
        packet = codec.encode(raw[i : i + batch], quality=quality, max_error=max_error)
        total += len(packet)
        decoded[i : i + batch] = codec.decode(packet)
    x = raw.astype(np.float64)
    err = x - decoded.astype(np.float64)
    centred = x - codec.normalization.offset
    values = raw.size
    bound = max_error if max_error is not None else (codec.qualities[quality].max_error if quality is not None else None)
    return LevelResult(
        quality=quality,
        max_error=bound,
        frames=int(raw.shape[0]),
        bytes_per_sample=total / raw.shape[0],
        bits_per_value=total * 8 / values,
        psnr_db=psnr_db(raw, decoded, codec.normalization.peak),
        max_abs_error=float(np.abs(err).max()),
        prd_percent=float(100 * math.sqrt(float((err**2).sum()) / max(float((centred**2).sum()), 1e-12))),
        compression_ratio=values * raw_bits(codec) / (total * 8),
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="bytes per sample, bits per value, PSNR (and PRD/CR) per quality level")
    p.add_argument("--bundle", default="default")
    p.add_argument("--data", type=Path, required=True, help="any data source latentwire reads")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE")
    p.add_argument("--quality", type=int, action="append", default=None, help="level(s) to measure (default: all)")
    p.add_argument("--max-error", type=int, action="append", default=[], help="also measure these custom bounds")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch", type=int, default=256, help="frames per packet")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        codec = Codec.load(args.bundle, provider=args.provider)
        raw = load_source(args.data, **dict(args.source_option)).samples[: args.limit]
        levels = args.quality if args.quality is not None else [q.index for q in codec.qualities]
        results = [evaluate(codec, raw, quality=q, batch=args.batch, progress=True) for q in levels]
        results += [evaluate(codec, raw, max_error=e, batch=args.batch, progress=True) for e in args.max_error]
    except LatentwireError as exc:
        print(f"latentwire eval: {exc}", file=sys.stderr)
        return 1
    report = {
        "bundle": str(codec.bundle.path), "model_id": codec.model_id, "data": str(args.data), "frames": int(raw.shape[0]),
        "batch": args.batch, "raw_bits_per_value": raw_bits(codec), "levels": [r.to_dict() for r in results],
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0
