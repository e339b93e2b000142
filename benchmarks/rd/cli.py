"""`python -m benchmarks.rd`: arguments and the run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentwire.codec.codec import Codec
from latentwire.codec.errors import LatentwireError

from ..common import RESULTS
from . import codecs
from .bounded import bounded_rows, format_bounded, targets_bounded
from .datasets import bsds_jobs, ecg_jobs, mnist_jobs
from .points import Point, run_jobs
from .report import (
    bd_rates,
    format_ratios,
    format_table,
    plot,
    prd_interval_db,
    rate_ratios_at_levels,
    reuse_baselines,
    run_metadata,
    targets_bsds,
    targets_ecg,
    targets_mnist,
)

DATASETS = ("mnist", "ecg", "bsds")
# custom max-error points between the ladder levels, raw units, per dataset
DEFAULT_MAX_ERRORS = {"mnist": (128, 80, 48, 32, 12, 5, 2, 1), "ecg": (1, 2, 4, 5, 8, 12, 20, 32, 64), "bsds": ()}
DEFAULT_INTERVAL = {"mnist": (22.0, 35.0)}
# PCA: k beyond what the data needs costs ~nothing (coefficients under the step round to 0), so
# the step drives the trade-off; k = all components with a step sweep is close to PCA's best front.
PCA_KS = (32, 64, 128, 256, 784)
DCT_STEPS = (6.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 40.0, 48.0, 64.0, 96.0)
PCA_STEPS = (8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0, 256.0, 384.0)


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rd", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--bundle", required=True, help="codec bundle directory (calibrated)")
    p.add_argument("--data", help="the samples: any folder or file latentwire reads (mnist: MNIST folder, .npy, IDX; "
                                  "ecg: folder of WFDB records; bsds: folder of photos)")
    p.add_argument("--data-root", help="without --data: folder holding mnist/, mitdb/, bsds500/ "
                                       "(default: $LATENTWIRE_DATA or ../shared/data)")
    p.add_argument("--fit-data", help="where the fitted baselines (PCA, DCT, wavelet) take their training samples "
                                      "(default: the MNIST train split / the --data folder's training records)")
    p.add_argument("--fit-records", type=lambda s: s.split(","), help="ecg: records the DCT/wavelet tables are fit on "
                                                                       "(default: the bundle's training records)")
    p.add_argument("--limit", type=int, help="first N samples (bsds: images) only")
    p.add_argument("--batch", type=int, default=256, help="frames per latentwire packet (the streaming batch size)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/rd-<dataset>.json); the plot goes next to it")
    p.add_argument("--max-errors", type=lambda s: [int(v) for v in s.split(",") if v],
                   help="custom max_error points between the ladder levels (comma list; '' for none)")
    p.add_argument("--levels", type=_ints, help="ladder levels measured (comma list of indices; default all): a run "
                                             "for the lossless table needs only the bounded ones, which it adds")
    p.add_argument("--compact-levels", type=int, default=3, help="ladder levels also measured in per-frame packets")
    p.add_argument("--compact-limit", type=int, default=2000, help="frames measured in per-frame mode (0: all)")
    p.add_argument("--webp-step", type=int, default=5, help="WebP quality sweep 0..100 in this step")
    p.add_argument("--jpeg-qualities", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100])
    p.add_argument("--avif-qualities", type=_ints, default=list(codecs.AVIF_QUALITIES), help="bsds: AVIF quality sweep")
    p.add_argument("--avif-speed", type=int, default=codecs.AVIF_SPEED, help="bsds: libavif speed (0 slowest .. 10)")
    p.add_argument("--avif-chroma", choices=("444", "422", "420"), default=codecs.AVIF_CHROMA,
                   help="bsds: AVIF YUV format")
    p.add_argument("--jxl-distances", type=lambda s: [float(v) for v in s.split(",")],
                   default=list(codecs.JXL_DISTANCES),
                   help="bsds: JPEG XL butteraugli distance sweep")
    p.add_argument("--jxl-effort", type=int, default=codecs.JXL_EFFORT, help="bsds: JPEG XL effort, lossy and lossless")
    p.add_argument("--near", type=_ints, default=list(codecs.NEAR_BOUNDS),
                   help="error bounds of the near-lossless table (JPEG-LS NEAR, latentwire max_error); '' for none")
    p.add_argument("--pca-ks", type=lambda s: [int(v) for v in s.split(",")], default=list(PCA_KS))
    p.add_argument("--pca-steps", type=lambda s: [float(v) for v in s.split(",")], default=list(PCA_STEPS))
    p.add_argument("--no-pca", dest="pca", action="store_false", help="skip the PCA baseline (mnist)")
    p.add_argument("--dct-steps", type=lambda s: [float(v) for v in s.split(",")], default=list(DCT_STEPS),
                   help="ecg: DCT baseline quantizer steps in raw units")
    p.add_argument("--no-dct", dest="dct", action="store_false", help="skip the DCT baseline (ecg)")
    p.add_argument("--no-wavelet", dest="wavelet", action="store_false", help="skip the CDF 9/7 wavelet baseline (ecg)")
    p.add_argument("--target-prdns", type=lambda s: [float(v) for v in s.split(",") if v], default=[2, 3, 4, 5, 6, 8],
                   help="ecg: latentwire points with a per-window PRDN target (bundles with a transform residual)")
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
    if args.levels is not None and (min(args.levels, default=0) < 0):
        p.error("--levels are ladder indices >= 0")
    if args.compact_limit == 0:
        args.compact_limit = None
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        codec = Codec.load(args.bundle, provider="cpu", threads=args.threads)
        meta = run_metadata(args, codec, argv)
        builders = {"mnist": mnist_jobs, "ecg": ecg_jobs, "bsds": bsds_jobs}
        jobs = builders[args.dataset](args, codec, meta)
    except LatentwireError as exc:  # a baseline or the data that cannot be had: say why, exit non-zero
        print(f"benchmarks.rd: {exc}", file=sys.stderr)
        return 2
    reused: list[Point] = []
    if args.reuse_baselines:
        reused = reuse_baselines(Path(args.reuse_baselines), meta)
        # PCA depends on the samples, not on the bundle: reused where the file has it, else measured
        has_pca = any(p.codec == "pca" for p in reused)
        jobs = [j for j in jobs if j.label.startswith("latentwire") or (j.label.startswith("pca") and not has_pca)]
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
        prd_1_8 = prd_interval_db(1.0, 8.0)
        summary["bd_rate_percent_vs_prd_1_8"] = bd_prd = bd_rates(points, prd_1_8, lw_mode, "prd")
        summary["bd_rate_percent_vs_prdn_1_8"] = bd_rates(points, prd_1_8, lw_mode, "prdn")
        summary["targets"] = targets_ecg(points, bd_prd)
    elif args.dataset == "bsds":
        summary["bd_rate_percent_vs_latent_only"] = bd_latent = bd_rates(points, interval, lw_mode, latent_only=True)
        summary["targets"] = targets_bsds(bd, bd_latent)
    if args.dataset != "ecg":
        summary["rate_ratio_at_levels"] = rate_ratios_at_levels(points, lw_mode, latent_only=args.dataset == "bsds")
    values = None if args.dataset == "bsds" else int(meta["values_per_sample"])
    rows = bounded_rows(points, args.near, values, lw_mode)
    summary["bounded_error_table"] = [r.to_dict() for r in rows]
    summary["targets"] = summary.get("targets", []) + targets_bounded(args.dataset, rows, args.near)
    out = Path(args.out) if args.out else RESULTS / f"rd-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summary, "points": [p.to_dict() for p in points]}
    out.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(format_table(points))
    print()
    unit = {"bsds": "bpp", "mnist": "bits/pixel", "ecg": "bits/sample"}[args.dataset]
    print("Lossless and near-lossless (bound = max abs error asked; max err = measured on the decoded samples):")
    print(format_bounded(rows, unit))
    print()
    for label, table in (("PSNR", bd), ("PSNR, latent levels", summary.get("bd_rate_percent_vs_latent_only")),
                         ("PRD 1-8%", summary.get("bd_rate_percent_vs_prd_1_8")),
                         ("PRDN 1-8%", summary.get("bd_rate_percent_vs_prdn_1_8"))):
        for name, r in (table or {}).items():
            if r.get("value") is None:
                print(f"BD-rate ({label}) latentwire vs {name}: n/a ({r.get('error')})")
            else:
                print(f"BD-rate ({label}) latentwire vs {name}: {r['value']:+.1f}% over {r['lo']:.2f}-{r['hi']:.2f} dB"
                      + (" (clipped to the overlap)" if r["clipped"] else ""))
    if summary.get("rate_ratio_at_levels"):
        print(format_ratios(summary["rate_ratio_at_levels"]))
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
