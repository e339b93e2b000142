"""Turn a trained bundle into a codable one: integer latent tables, residual statistics, quality ladder.

Calibration runs the bundle's own ONNX graphs (never torch) on real samples, so the residual
histograms describe exactly the predictions receivers will compute. It writes entropy.json,
sets manifest quality_levels and entropy, records in-sample rate/PSNR per level under
manifest metrics.calibration, and re-finalizes the bundle (the model id covers the tables).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import ENTROPY, Bundle, finalize, read_manifest, sha256_file, write_manifest
from .entropy import DEFAULT_PRECISION, TableSet, table_from_pmf
from .errors import InputError
from .normalization import psnr_db
from .payload import CodingTables, encode_payload
from .quantize import quantize
from .residual import ContextSpec, ResidualModel, default_radius, prediction, residual_histograms
from .runtime import Decoder, Encoder

# Raw-unit max errors. On MNIST (8-bit) with a ~22 dB autoencoder this spans ~22 dB (q0, latent
# only) -> ~27 -> ~33 -> ~39 -> ~46 dB -> lossless (measured figures land in metrics.calibration).
DEFAULT_QUALITY_LADDER: tuple[int | None, ...] = (None, 32, 16, 8, 3, 0)


@dataclass(frozen=True)
class LevelReport:
    name: str
    max_error: int | None
    bytes_per_sample: float
    psnr_db: float
    max_abs_error: int


@dataclass(frozen=True)
class CalibrationReport:
    model_id: str
    n_samples: int
    levels: tuple[LevelReport, ...]
    seconds: float


def latent_tables(pmf_offsets: Sequence[int], pmf_probs: Sequence[Sequence[float]], precision: int) -> TableSet:
    """Manifest latent.pmf -> one floored integer table per channel (tail mass -> ESCAPE)."""
    if len(pmf_offsets) != len(pmf_probs) or not pmf_offsets:
        raise InputError("manifest latent.pmf needs one offset and one probability list per channel")
    return TableSet(
        tuple(table_from_pmf(np.asarray(p, dtype=np.float64), int(o), precision) for o, p in zip(pmf_offsets, pmf_probs)),
        precision=precision,
    )


def _forward(enc: Encoder, dec: Decoder, bundle: Bundle, raw: np.ndarray, batch_size: int):
    """(symbols, raw_float) for raw samples, in batches, exactly as a sender computes them."""
    m = bundle.manifest
    norm = m.normalization
    syms, floats = [], []
    out_size = tuple(raw.shape[2:]) if m.spatial_dims else None
    for i in range(0, raw.shape[0], batch_size):
        x = norm.to_model(raw[i : i + batch_size])
        s = quantize(enc.encode(x))
        x_hat = dec.decode(s.astype(np.float32), out_size)
        syms.append(s)
        floats.append(norm.to_raw_float(x_hat))
    return np.concatenate(syms), np.concatenate(floats)


def calibrate(
    bundle_dir: str | Path,
    raw_samples: np.ndarray,
    quality_max_errors: Sequence[int | None] = DEFAULT_QUALITY_LADDER,
    *,
    n_contexts: int = 16,
    n_shifts: int = 8,
    guard: float = 0.01,
    precision: int = DEFAULT_PRECISION,
    batch_size: int = 1024,
    provider: str = "cpu",
    threads: int | None = None,
    measure_samples: int = 2000,
) -> CalibrationReport:
    """Calibrate ``bundle_dir`` in place on raw samples (N, *sample_shape) in the raw dtype."""
    t0 = time.perf_counter()
    d = Path(bundle_dir)
    bundle = Bundle.load(d, verify=True)
    m = bundle.manifest
    norm = m.normalization
    raw = np.asarray(getattr(raw_samples, "samples", raw_samples))  # a SampleSet or an array
    if raw.ndim < 2 or raw.shape[0] < 1:
        raise InputError(f"calibration needs raw samples shaped (N, *sample_shape), got {raw.shape}")
    levels = list(quality_max_errors)
    if not levels or levels[0] is not None:
        raise InputError("the quality ladder must start with None (q0 = latent only)")
    if len(levels) > 255:
        raise InputError("at most 255 quality levels fit the packet's quality byte")
    wants_residual = any(e is not None for e in levels)
    if wants_residual and not norm.is_integer:
        raise InputError(
            f"raw dtype {norm.raw_dtype} is not integer: the max-error residual layer works on integer raw "
            "samples only; calibrate with quality_max_errors=(None,)"
        )
    if norm.is_integer and (raw.min() < norm.raw_min or raw.max() > norm.raw_max):
        raise InputError(
            f"calibration samples span [{raw.min()}, {raw.max()}], outside the raw range "
            f"[{norm.raw_min}, {norm.raw_max}] of the bundle's normalization"
        )

    offsets, probs = m.pmf
    latent = latent_tables(offsets, probs, precision)
    enc = Encoder(bundle, provider=provider, threads=threads)
    dec = Decoder(bundle, provider=provider, threads=threads)
    symbols, raw_float = _forward(enc, dec, bundle, raw, batch_size)

    residual = None
    if wants_residual:
        spec = ContextSpec(int(norm.raw_min), int(norm.raw_max), n_contexts=n_contexts, n_shifts=n_shifts, guard=guard)
        radius = default_radius(spec)
        hist = np.zeros((spec.n_contexts, 2 * radius + 1), dtype=np.int64)
        for i in range(0, raw.shape[0], batch_size):
            hist += residual_histograms(spec, raw[i : i + batch_size], raw_float[i : i + batch_size], radius)
        residual = ResidualModel(spec, radius, hist, precision)
    tables = CodingTables(latent=latent, residual=residual)

    (d / ENTROPY).write_bytes(tables.dumps())
    manifest = read_manifest(d)
    manifest["quality_levels"] = [{"name": f"q{i}", "max_error": e} for i, e in enumerate(levels)]
    manifest["entropy"] = {"file": ENTROPY, "sha256": sha256_file(d / ENTROPY)}

    # in-sample figures per level, one joint payload per level over up to measure_samples frames
    k = min(measure_samples, raw.shape[0])
    reports = []
    for i, e in enumerate(levels):
        if e is None:
            payload, _ = encode_payload(tables, symbols[:k], m.channel_axis)
            if norm.is_integer:
                rec = prediction(raw_float[:k], int(norm.raw_min), int(norm.raw_max))
            else:
                rec = raw_float[:k]
        else:
            payload, info = encode_payload(
                tables, symbols[:k], m.channel_axis, x_raw=raw[:k], raw_float=raw_float[:k], max_error=e
            )
            rec = info.recon
        err = np.abs(rec.astype(np.float64) - raw[:k].astype(np.float64))
        reports.append(
            LevelReport(
                name=f"q{i}",
                max_error=e,
                bytes_per_sample=len(payload) / k,
                psnr_db=psnr_db(raw[:k], rec, norm.peak),
                max_abs_error=int(np.ceil(err.max())),
            )
        )
    metrics = manifest.setdefault("metrics", {})
    metrics["calibration"] = {
        "n_samples": int(raw.shape[0]),
        "measured_on": int(k),
        "in_sample": True,
        "provider": provider,
        "levels": [
            {
                "name": r.name,
                "max_error": r.max_error,
                "payload_bytes_per_sample": round(r.bytes_per_sample, 3),
                "psnr_db": None if not np.isfinite(r.psnr_db) else round(r.psnr_db, 3),
                "max_abs_error": r.max_abs_error,
            }
            for r in reports
        ],
    }
    write_manifest(d, manifest)
    model_id = finalize(d)
    return CalibrationReport(
        model_id=model_id, n_samples=int(raw.shape[0]), levels=tuple(reports), seconds=time.perf_counter() - t0
    )


def _ladder(text: str) -> list[int | None]:
    """"none,96,48,16,0" -> [None, 96, 48, 16, 0]."""
    return [None if v.strip().lower() in ("none", "") else int(v) for v in text.split(",")]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help="build a bundle's integer entropy tables and quality levels")
    p.add_argument("bundle", type=Path, help="an exported bundle directory (changed in place; its model id changes)")
    p.add_argument("--data", required=True, help="raw samples like the training data (any source latentwire reads)")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--levels", type=_ladder, default=list(DEFAULT_QUALITY_LADDER),
                   help="max-error ladder in raw units, first 'none' (latent only), e.g. none,96,48,16,0")
    p.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    p.add_argument("--threads", type=int, default=None)
    return p


def run(args: argparse.Namespace) -> int:
    from .sources import load_source

    options = {k: int(v) if v.isdigit() else v for k, v in (o.split("=", 1) for o in args.source_option)}
    samples = load_source(args.data, **options).samples[: args.limit]
    report = calibrate(args.bundle, samples, args.levels, threads=args.threads)
    print(json.dumps({
        "bundle": str(args.bundle), "model_id": report.model_id, "n_samples": report.n_samples,
        "seconds": round(report.seconds, 2),
        "levels": [{"name": lv.name, "max_error": lv.max_error, "payload_bytes_per_sample": round(lv.bytes_per_sample, 3),
                    "psnr_db": None if not np.isfinite(lv.psnr_db) else round(lv.psnr_db, 3)} for lv in report.levels],
    }, indent=2))
    return 0
