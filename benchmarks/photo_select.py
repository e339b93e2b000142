"""Choose a photo bundle on whole validation photos, never on test photos (issue 23).

Why: photo_curve scores a run on its own 256 x 256 validation crops, but bundles are judged on whole
photos, and the two disagree (a hyperprior whose side networks saw small crops mispredicts whole
photos). This codes the run's validation photos whole (the photos its group split held out of
training, rebuilt from its recorded command) through the real codec of every bundle given, with
WebP on the same photos in the same run, and reports BD-rate of each bundle against the first and
against WebP (PSNR per photo averaged, bits per pixel over all photos).

    python -m benchmarks.photo_select codec/assets/bsds-gdn2d /tmp/hx --run runs/bsds-hyper256-lr3e5
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bdrate import bd_rate
from benchmarks.common import git_commit, machine_info, write_result
from benchmarks.photo_curve import train_args

WEBP_QUALITIES = (5, 15, 30, 50, 70, 85, 95)


def validation_photos(command: str) -> list[Path]:
    """The photos a run's group split held out of training, from its recorded `latentwire train` command."""
    from latentwire.codec.sources import ImageFolder
    from latentwire.codec.sources.sampleset import SampleSet

    args = train_args(command)
    options = dict(args.source_option)
    subdirs = options.get("subdirs")
    folder = ImageFolder(args.data, subdirs=[subdirs] if isinstance(subdirs, str) else subdirs)
    n = len(folder)
    # the same split the run made: crops are grouped by photo index, so split the indices alike
    index = SampleSet(samples=np.zeros((n, 1), dtype=np.uint8), normalization=folder.normalization,
                      groups=np.arange(n, dtype=np.int64))
    _, val = index.split(args.val_fraction, seed=args.seed)
    assert val.groups is not None
    return [folder.paths[int(g)] for g in np.unique(val.groups)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def bundle_curve(bundle: str, photos: list[np.ndarray], threads: int) -> list[dict[str, float]]:
    """Every latent-only level: bits per pixel over all photos, PSNR per photo averaged, seconds per photo."""
    from latentwire.codec.codec import Codec

    codec = Codec.load(bundle, provider="cpu", threads=threads)
    pixels = sum(p.shape[1] * p.shape[2] for p in photos)
    points = []
    for q in [lv.index for lv in codec.qualities if lv.max_error is None and lv.transform_step is None]:
        nbytes, psnrs, t0 = 0, [], time.perf_counter()
        for photo in photos:
            packet = codec.encode(photo[None], quality=q)
            nbytes += len(packet)
            psnrs.append(_psnr(codec.decode(packet)[0], photo))
        points.append({"quality": q, "bpp": 8.0 * nbytes / pixels, "psnr_db": float(np.mean(psnrs)),
                       "seconds_per_photo": (time.perf_counter() - t0) / len(photos)})
        print(f"  {Path(bundle).name} q{q}: {points[-1]['bpp']:.3f} bpp {points[-1]['psnr_db']:.2f} dB",
              file=sys.stderr)
    return points


def webp_curve(photos: list[np.ndarray]) -> list[dict[str, float]]:
    from latentwire.codec.baselines import image_roundtrip

    pixels = sum(p.shape[1] * p.shape[2] for p in photos)
    points = []
    for q in WEBP_QUALITIES:
        nbytes, psnrs = 0, []
        for photo in photos:
            size, decoded = image_roundtrip(photo, "webp", q)
            nbytes += size
            psnrs.append(_psnr(decoded, photo))
        points.append({"quality": q, "bpp": 8.0 * nbytes / pixels, "psnr_db": float(np.mean(psnrs))})
    return points


def _bd(ref: list[dict[str, float]], test: list[dict[str, float]]) -> float | None:
    from latentwire.codec.errors import InputError

    try:
        return bd_rate([p["bpp"] for p in ref], [p["psnr_db"] for p in ref],
                       [p["bpp"] for p in test], [p["psnr_db"] for p in test]).value
    except InputError as exc:  # curves that do not overlap: reported, not fatal
        print(f"  no BD-rate: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="+", help="bundles to score; BD-rates are against the first")
    p.add_argument("--run", required=True, help="the training run whose validation photos to use (its checkpoint.pt)")
    p.add_argument("--limit", type=int, default=None, help="at most this many photos (evenly spaced)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/photo-select.json")
    args = p.parse_args(argv)
    import torch

    from latentwire.codec.sources import read_image

    ckpt = torch.load(Path(args.run) / "checkpoint.pt", map_location="cpu", weights_only=False)
    paths = validation_photos(str(ckpt["command"]))
    if args.limit is not None and args.limit < len(paths):
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, args.limit).round()]
    photos = [read_image(path, "RGB") for path in paths]
    print(f"{len(photos)} whole validation photos of {args.run}", file=sys.stderr)
    webp = webp_curve(photos)
    curves = {b: bundle_curve(b, photos, args.threads) for b in args.bundles}
    first = curves[args.bundles[0]]
    result: dict[str, Any] = {
        "run": args.run, "photos": [str(path) for path in paths],
        "webp": {"setting": "Pillow method 6", "points": webp},
        "bundles": [{"bundle": b, "points": pts, "bd_rate_vs_first_percent": _bd(first, pts),
                     "bd_rate_vs_webp_percent": _bd(webp, pts)} for b, pts in curves.items()],
        "machine": machine_info(), "git": git_commit(),
        "command": shlex.join(["python", "-m", "benchmarks.photo_select", *(argv or sys.argv[1:])]),
    }
    write_result(Path(args.out), result)
    for b in result["bundles"]:
        print(f"{b['bundle']}: BD-rate vs {args.bundles[0]} {b['bd_rate_vs_first_percent']}, "
              f"vs WebP {b['bd_rate_vs_webp_percent']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
