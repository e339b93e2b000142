"""Turn a trained bundle into a codable one: integer latent tables, residual statistics, quality ladder.

Calibration runs the bundle's own ONNX graphs (never torch) on real samples, so the residual
histograms describe exactly the predictions receivers will compute. It writes entropy.json,
sets manifest quality_levels and entropy, records in-sample rate/PSNR per level under
manifest metrics.calibration, and re-finalizes the bundle (the model id covers the tables).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import ENTROPY, EXACT, RESIDUAL_STEP, Bundle, finalize, read_manifest, sha256_file, write_manifest
from .calibrate_hyper import fit_tables, hyper_stage
from .coding import transform
from .coding.context import LatentContext
from .coding.context2d import LatentContext2D
from .coding.exact import IntegerNetwork
from .coding.fallback import DEFAULT_ANOMALY_QUANTILE, AnomalyCalibration, frame_scores
from .coding.hyper_latents import HyperInput, HyperLatentPath, HyperLatents, concat_latents
from .coding.payload import CodingTables, LevelTables, encode_payload
from .coding.quantize import dequantize_scaled, quantize_scaled
from .coding.residual import ContextSpec, ResidualModel, default_radius, prediction, residual_histograms
from .coding.residual_coding import fit_calibrated
from .coding.residual_context import ResidualContext
from .coding.tables import DEFAULT_PRECISION, latent_tables, step_tables
from .coding.transform import TransformResidual
from .errors import InputError
from .ladder import DEFAULT_QUALITY_LADDER, VARIABLE_RATE_RESIDUALS, LevelSpec, default_ladder, residual_grid
from .normalization import psnr_db
from .runtime import Decoder, Encoder
from .sources import source_option
from .sources.sampleset import SampleSet


@dataclass(frozen=True)
class LevelReport:
    name: str
    max_error: int | None
    bytes_per_sample: float
    psnr_db: float
    max_abs_error: int
    prdn_percent: float | None = None  # series: rms over frames of each frame's PRDN


@dataclass(frozen=True)
class CalibrationReport:
    model_id: str
    n_samples: int
    levels: tuple[LevelReport, ...]
    seconds: float


def _gains(bundle: Bundle, spec: LevelSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(gain, inverse gain) of the spec's learned level, shaped to broadcast over (N, C, ...)."""
    if spec.latent_level is None:
        return None, None
    m = bundle.manifest
    lv = m.latent_levels[spec.latent_level]
    shape = (1, -1) + (1,) * m.spatial_dims
    return lv.gain.reshape(shape), lv.inverse_gain.reshape(shape)


def _forward(enc: Encoder, dec: Decoder, bundle: Bundle, raw: np.ndarray, batch_size: int,
             spec: LevelSpec | None = None, hyper: HyperLatentPath | None = None,
             keep: list[HyperInput] | None = None) -> tuple[Any, np.ndarray]:
    """(symbols, raw_float) for raw samples at a level's latent grid (default: the trained one),
    in batches, exactly as a sender computes them (a hyperprior bundle's symbols: HyperLatents);
    ``keep`` collects a hyperprior encoder's outputs, batch by batch, for fitting its tables."""
    m = bundle.manifest
    norm = m.normalization
    spec = spec or LevelSpec()
    gain, inverse = _gains(bundle, spec)
    syms, hyper_syms, floats = [], [], []
    for i in range(0, raw.shape[0], batch_size):
        part = raw[i : i + batch_size]
        size = tuple(part.shape[2:]) if m.spatial_dims else None
        if hyper is not None:
            latents = HyperInput(*enc.encode_with_side(norm.to_model(part)))
            if keep is not None:
                keep.append(latents)
            h = hyper.quantize(latents, spec.latent_level)
            hyper_syms.append(h)
            x_hat = dec.decode(hyper.values(h, spec.latent_level), size)
        else:
            s = quantize_scaled(enc.encode(norm.to_model(part)), spec.latent_step, gain)
            syms.append(s)
            x_hat = dec.decode(dequantize_scaled(s, spec.latent_step, inverse), size)
        floats.append(norm.to_raw_float(x_hat))
    return (concat_latents(hyper_syms) if hyper is not None else np.concatenate(syms)), np.concatenate(floats)


def calibrate(
    bundle_dir: str | Path,
    raw_samples: np.ndarray | SampleSet,
    quality_max_errors: Sequence[int | str | None | LevelSpec] | None = None,
    *,
    n_contexts: int = 16,
    n_shifts: int | None = None,
    guard: float | None = None,
    precision: int = DEFAULT_PRECISION,
    batch_size: int = 1024,
    provider: str = "cpu",
    threads: int | None = None,
    measure_samples: int = 2000,
    anomaly_quantile: float = DEFAULT_ANOMALY_QUANTILE,
    latent_context: bool | None = None,
    residual_context: bool | None = None,
    residual_coding: bool | None = None,
    residual_max_errors: Sequence[int] = (),
    transform_basis: str = "dct",
    command: str | None = None,
) -> CalibrationReport:
    """Calibrate ``bundle_dir`` in place on raw samples (N, *sample_shape) in the raw dtype.

    latent_context: fit context-adaptive latent tables (context.py) from these samples' latents;
    None = wherever the latents have a position axis (conv families), False = factorized only.
    residual_context: also fit residual tables that follow the previous residual (residual_context.py)
    for the ladder's max errors; None = for conv families, like latent_context.
    residual_coding: context-coded residuals (coding/residual_coding.py) for the ladder's and residual_max_errors'
    max errors; None = where the samples suit a kind, False = never.
    transform_basis: the transform residual's basis for tX levels, "dct" or "cdf97" (transform.py).
    command: how this calibration was invoked, recorded with its seconds in the manifest's
    metrics.calibration (a bundle records every stage that made it; default: the CLI's argv).
    quality_max_errors: the ladder (LevelSpec.parse forms); None = default_ladder for the bundle."""
    t0 = time.perf_counter()
    d = Path(bundle_dir)
    bundle = Bundle.load(d, verify=True)
    m = bundle.manifest
    norm = m.normalization
    raw = np.asarray(getattr(raw_samples, "samples", raw_samples))  # a SampleSet or an array
    if raw.ndim < 2 or raw.shape[0] < 1:
        raise InputError(f"calibration needs raw samples shaped (N, *sample_shape), got {raw.shape}")
    n_learned = len(m.latent_levels)
    specs = (
        default_ladder(n_learned) if quality_max_errors is None else [LevelSpec.parse(v) for v in quality_max_errors]
    )
    if n_learned:
        wrong = [sp for sp in specs if sp.latent_level is None or sp.latent_level >= n_learned]
        if wrong:
            raise InputError(
                f"this variable-rate bundle has learned latent levels l0..l{n_learned - 1}; every level of the "
                f"ladder must name one (e.g. l0,l3,l{n_learned - 1}+4), got {wrong[0]}"
            )
    elif any(sp.latent_level is not None for sp in specs):
        raise InputError("latent levels (lK) exist only in variable-rate bundles (trained with --rate-levels)")
    levels = [sp.max_error for sp in specs]
    if not levels or levels[0] is not None:
        raise InputError("the quality ladder must start with a latent-only level (q0: None)")
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

    hyper = hyper_stage(bundle, precision) if m.has_hyper else None
    offsets: list[int] = []
    probs: list[list[float]] = []
    if hyper is not None:
        if any(sp.latent_step != 1.0 or sp.transform_step is not None for sp in specs):
            raise InputError("a hyperprior bundle's ladder takes its learned levels (lK, lK+E), not latent steps "
                             "or transform levels")
    else:
        offsets, probs = m.pmf
        latent = latent_tables(offsets, probs, precision)
    enc = Encoder(bundle, provider=provider, threads=threads)
    dec = Decoder(bundle, provider=provider, threads=threads)
    # the reference grid: the trained one, or a variable-rate bundle's finest level
    reference = LevelSpec(None, 1.0, n_learned - 1 if n_learned else None)
    encoded: list[HyperInput] = []  # (quantize and values do not depend on the tables refit below)
    symbols, raw_float = _forward(enc, dec, bundle, raw, batch_size, reference, hyper, keep=encoded)
    if hyper is not None:  # the tables' frequencies refit on these samples' own symbols, every level
        hyper = fit_tables(hyper, encoded)
        latent = hyper.coding.z_tables
    del encoded
    # What residuals are taken against: the exact network's integer prediction where the bundle
    # has one (no float drift, so one bucket grid and no guard band), else the float decoder's.
    exact = IntegerNetwork.load(bundle.file(EXACT)) if m.has_exact else None
    n_shifts = (1 if exact else 8) if n_shifts is None else n_shifts
    guard = (0.0 if exact else 0.01) if guard is None else guard

    def against(sym: np.ndarray | HyperLatents, flt: np.ndarray, sp: LevelSpec) -> np.ndarray:
        if exact is None:
            return flt
        # a photo network takes the reference level's symbols themselves (its inverse gains are in it), or
        # under a hyperprior y_hat * gain on the mean's grid
        if isinstance(sym, HyperLatents):
            if hyper is None:
                raise InputError("hyperprior latents need a hyperprior bundle")
            values = hyper.exact_input(sym, sp.latent_level)
        else:
            values = sym if exact.layout == "channels_first_2d" else dequantize_scaled(sym, sp.latent_step,
                                                                                       _gains(bundle, sp)[1])
        return np.concatenate([exact.predict_frames(values[i : i + batch_size], flt.shape[1:])
                               for i in range(0, len(values), batch_size)]).astype(np.float32)

    ref_float = against(symbols, raw_float, reference)
    grid = residual_grid(specs, reference)  # max-error levels on a coarser latent step fit against its prediction
    res_float = ref_float if grid == reference else against(*_forward(enc, dec, bundle, raw, batch_size, grid), grid)

    latent_ndim = (symbols.symbols if hyper is not None else symbols).ndim
    positional = m.spatial_dims > 0 and m.channel_axis % (latent_ndim - 1) == 0
    if latent_context and not positional:
        raise InputError("a latent context needs channel-first latents with a position axis (conv families)")
    use_context = (positional if latent_context is None else latent_context) and hyper is None
    fit_context = LatentContext2D.fit if m.spatial_dims == 2 and latent_ndim == 4 else LatentContext.fit
    context = fit_context(symbols, latent) if use_context and not n_learned else None
    level_tables = []
    for k in range(0 if hyper is not None else n_learned):  # a hyperprior's levels share its Gaussian tables
        lv_offsets, lv_probs = m.level_pmf(k)
        factorized = latent_tables(lv_offsets, lv_probs, precision)
        lv_symbols = (
            symbols if k == n_learned - 1 else _forward(enc, dec, bundle, raw, batch_size, LevelSpec(None, 1.0, k))[0]
        )
        level_tables.append(LevelTables(factorized, fit_context(lv_symbols, factorized) if use_context else None))

    residual = None
    if wants_residual:
        spec = ContextSpec(int(norm.raw_min), int(norm.raw_max), n_contexts=n_contexts, n_shifts=n_shifts, guard=guard)
        radius = default_radius(spec)
        hist = np.zeros((spec.n_contexts, 2 * radius + 1), dtype=np.int64)
        for i in range(0, raw.shape[0], batch_size):
            hist += residual_histograms(spec, raw[i : i + batch_size], res_float[i : i + batch_size], radius)
        residual = ResidualModel(spec, radius, hist, precision)
    coding = fit_calibrated(residual, raw, res_float, levels, exact=exact is not None, enabled=residual_coding,
                            extra_max_errors=residual_max_errors)
    rctx = None  # residual_coding supersedes it
    if coding is None and residual is not None and (positional if residual_context is None else residual_context):
        rctx = ResidualContext.fit(residual, raw, res_float, [e for e in levels if e is not None],
                                   batch_size=batch_size)
    exact_tr = exact is not None and transform_basis == "cdf97"  # the wavelet's levels reconstruct exactly too
    specs, tr = _fit_transform(specs, raw, symbols, ref_float if exact_tr else raw_float, reference, enc, dec, bundle,
                               batch_size, transform_basis, exact_tr)
    steps = sorted({sp.latent_step for sp in specs if sp.latent_step != 1.0})
    tables = CodingTables(
        latent=latent,
        residual=residual,
        latent_steps=tuple((st, step_tables(offsets, probs, st, precision)) for st in steps),
        latent_context=context,
        residual_context=rctx,
        latent_levels=tuple(level_tables),
        transform=tr,
        hyper=None if hyper is None else hyper.coding,
        residual_coding=coding,
    )

    (d / ENTROPY).write_bytes(tables.dumps())
    manifest = read_manifest(d)
    manifest["quality_levels"] = [sp.to_manifest(i) for i, sp in enumerate(specs)]
    manifest["latent"].pop(RESIDUAL_STEP, None)  # absent at step 1, so earlier bundles keep their model ids
    if grid.latent_step != reference.latent_step:
        manifest["latent"][RESIDUAL_STEP] = grid.latent_step
    manifest["entropy"] = {"file": ENTROPY, "sha256": sha256_file(d / ENTROPY)}
    # Anomaly threshold: quantiles of the latent-only reconstruction error on these (training)
    # samples; the sender's lossless fallback compares each frame's score with it. Not a decoding
    # field: receivers only see the packet's flag, so the model id does not cover it.
    latent_only = prediction(raw_float, int(norm.raw_min), int(norm.raw_max)) if norm.is_integer else raw_float
    manifest["anomaly"] = AnomalyCalibration.fit(
        frame_scores(raw, latent_only), threshold_quantile=anomaly_quantile
    ).to_dict()

    # in-sample figures per level, one joint payload per level over up to measure_samples frames
    k = min(measure_samples, raw.shape[0])
    reports = []
    for i, (e, sp) in enumerate(zip(levels, specs, strict=True)):
        sym_k, float_k = symbols[:k], raw_float[:k]
        if (sp.latent_step, sp.latent_level) != (reference.latent_step, reference.latent_level):
            sym_k, float_k = _forward(enc, dec, bundle, raw[:k], batch_size, sp, hyper)
        if sp.transform_step is not None and tr is not None:
            float_k = against(sym_k, float_k, sp) if tr.exact else float_k
            idx = np.full(k, tr.step_index(sp.transform_step), dtype=np.int64)
            qc = tr.quantize(tr.forward(raw[:k].astype(np.float64) - float_k), idx)
            payload, _ = encode_payload(tables, sym_k, m.channel_axis, latent_step=sp.latent_step,
                                        latent_level=sp.latent_level, transform=(qc, idx))
            rec = tr.reconstruct(float_k, qc, idx, norm.raw_min, norm.raw_max, norm.is_integer)
        elif e is None:
            payload, _ = encode_payload(tables, sym_k, m.channel_axis, latent_step=sp.latent_step,
                                        latent_level=sp.latent_level, hyper=hyper)
            if norm.is_integer:
                rec = prediction(float_k, int(norm.raw_min), int(norm.raw_max))
            else:
                rec = float_k
        else:
            payload, info = encode_payload(
                tables, sym_k, m.channel_axis, x_raw=raw[:k], raw_float=against(sym_k, float_k, sp), max_error=e,
                latent_step=sp.latent_step, latent_level=sp.latent_level, hyper=hyper,
            )
            assert info is not None  # encode_payload returns the residual's encoding when given max_error
            rec = info.recon
        err = np.abs(rec.astype(np.float64) - raw[:k].astype(np.float64))
        reports.append(
            LevelReport(
                name=f"q{i}",
                max_error=e,
                bytes_per_sample=len(payload) / k,
                psnr_db=psnr_db(raw[:k], rec, norm.peak),
                max_abs_error=int(np.ceil(err.max())),
                prdn_percent=float(np.sqrt(np.mean(transform.prdn_per_frame(raw[:k], rec) ** 2))) if raw.ndim == 3
                else None,
            )
        )
    metrics = manifest.setdefault("metrics", {})
    metrics["calibration"] = {
        "command": command if command is not None else shlex.join(["latentwire", *sys.argv[1:]]),
        "seconds": round(time.perf_counter() - t0, 2),
        "transform_basis": transform_basis if tr is not None else None,
        "n_samples": int(raw.shape[0]),
        "measured_on": int(k),
        "in_sample": True,
        "provider": provider,
        "levels": [
            {
                "name": r.name,
                "max_error": r.max_error,
                "latent_step": sp.latent_step,
                **({"latent_level": sp.latent_level} if sp.latent_level is not None else {}),
                "payload_bytes_per_sample": round(r.bytes_per_sample, 3),
                "psnr_db": None if not np.isfinite(r.psnr_db) else round(r.psnr_db, 3),
                "max_abs_error": r.max_abs_error,
                **({"transform_step": sp.transform_step} if sp.transform_step is not None else {}),
                **({"prdn_percent": round(r.prdn_percent, 3)} if r.prdn_percent is not None else {}),
            }
            for r, sp in zip(reports, specs, strict=True)
        ],
    }
    write_manifest(d, manifest)
    model_id = finalize(d)
    return CalibrationReport(
        model_id=model_id, n_samples=int(raw.shape[0]), levels=tuple(reports), seconds=time.perf_counter() - t0
    )


def _fit_transform(specs: list[LevelSpec], raw: np.ndarray, symbols: np.ndarray, raw_float: np.ndarray,
                   reference: LevelSpec, enc: Encoder, dec: Decoder, bundle: Bundle,
                   batch_size: int, basis: str = "dct", exact: bool = False) -> tuple[list[LevelSpec],
                                                                                       TransformResidual | None]:
    """The transform residual's tables, fit on each transform level's own residuals at its own
    step, and the tables of windows sent alone (the raw windows against the normalization offset)
    at the same steps; steps are snapped to the ladder. (specs with snapped steps, tables or None)."""
    wanted = [sp for sp in specs if sp.transform_step is not None]
    if not wanted:
        return specs, None
    if raw.ndim != 3:
        raise InputError(
            f"transform residual levels (tX) are for series (channels, length); these samples are {raw.shape[1:]}"
        )
    snapped = [replace(sp, transform_step=TransformResidual.snap(sp.transform_step)) if sp.transform_step else sp
               for sp in specs]
    residuals: dict[tuple[float, int | None], np.ndarray] = {}
    pairs = []
    for sp in snapped:
        if sp.transform_step is None:
            continue
        key = (sp.latent_step, sp.latent_level)
        if key not in residuals:
            if exact and key != (reference.latent_step, reference.latent_level):
                raise InputError("exact transform levels code at the reference latent grid")
            flt = raw_float if key == (reference.latent_step, reference.latent_level) else \
                _forward(enc, dec, bundle, raw, batch_size, sp)[1]
            residuals[key] = raw.astype(np.float64) - flt
        pairs.append((residuals[key], sp.transform_step))
    alone = [(raw, step) for _, step in pairs]
    return snapped, TransformResidual.fit(pairs, basis=basis, alone=alone,
                                          prediction=bundle.manifest.normalization.offset, exact=exact)


def _ladder(text: str) -> list[LevelSpec]:
    """"s4,s2,none,96,48,16,0" -> latent-only at steps 4 and 2, then latent only, then max errors."""
    try:
        return [LevelSpec.parse(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad --levels {text!r}: {exc}") from exc


def add_parser(subparsers: Any, name: str = "calibrate") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="build a bundle's integer entropy tables and quality levels")
    p.add_argument("bundle", type=Path, help="an exported bundle directory (changed in place; its model id changes)")
    p.add_argument("--data", required=True, help="raw samples like the training data (any source latentwire reads)")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE")
    p.add_argument("--levels", type=_ladder, default=None,
                   help="quality ladder: 'sX' = latent only at quantization step X, 'none' = latent only, "
                        "N = residual with max error N (raw units), 'sX+N' both (when every max-error level "
                        "names one step, custom max errors use it too); e.g. s4,s2,none,96,48,16,0. "
                        "Variable-rate bundles: 'lK' = learned level K, 'lK+N' with max error N. Default: "
                        f"{','.join('none' if v is None else str(v) for v in DEFAULT_QUALITY_LADDER)}, or for a "
                        f"variable-rate bundle every learned level then the finest with max errors "
                        f"{','.join(map(str, VARIABLE_RATE_RESIDUALS))}")
    p.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-latent-context", dest="latent_context", action="store_const", const=False, default=None,
                   help="code conv latents with the factorized tables only (default: context-adaptive tables "
                        "fit on --data, codec/context.py)")
    p.add_argument("--residual-context", dest="residual_context", action=argparse.BooleanOptionalAction, default=None,
                   help="residual tables that also follow the previous residual, for the ladder's max errors "
                        "(codec/residual_context.py; default: on for conv families)")
    p.add_argument("--residual-coding", action=argparse.BooleanOptionalAction, default=None,
                   help="context-coded residuals (coding/residual_coding.py; default: where the data suits a kind)")
    p.add_argument("--residual-max-errors", type=lambda t: [int(v) for v in t.split(",") if v], default=[],
                   help="custom max errors (comma list) that get context-coded tables too, e.g. 1,2,4")
    p.add_argument("--transform-basis", choices=sorted(transform.BASES), default="dct",
                   help="basis of the transform residual levels (tX): dct (no extra dependency) or cdf97 "
                        "(the CDF 9/7 wavelet through PyWavelets; smaller on ECG, codec/coding/transform.py)")
    return p


def run(args: argparse.Namespace) -> int:
    from .sources import load_source

    samples = load_source(args.data, **dict(args.source_option)).samples[: args.limit]
    report = calibrate(args.bundle, samples, args.levels, threads=args.threads, latent_context=args.latent_context,
                       residual_context=args.residual_context, transform_basis=args.transform_basis,
                       residual_coding=args.residual_coding, residual_max_errors=args.residual_max_errors)
    print(json.dumps({
        "bundle": str(args.bundle), "model_id": report.model_id, "n_samples": report.n_samples,
        "seconds": round(report.seconds, 2),
        "levels": [{"name": lv.name, "max_error": lv.max_error,
                    "payload_bytes_per_sample": round(lv.bytes_per_sample, 3),
                    "psnr_db": None if not np.isfinite(lv.psnr_db) else round(lv.psnr_db, 3)} for lv in report.levels],
    }, indent=2))
    return 0
