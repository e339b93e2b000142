"""How close each latent level of a hyperprior photo bundle comes to what its transforms can do at
all (issue 23): where the bundle loses to WebP, is it the entropy model or the network?

Per level, on whole validation photos (never test photos): the codec's bits per pixel and PSNR, and
the PSNR of the same decoder fed the level's latent unrounded (y * gain * inverse gain), the
ceiling that no entropy model, context or table can lift. A level whose PSNR sits near its ceiling
is limited by the analysis and synthesis transforms (their capacity and training), not by coding.
PSNR is per photo, averaged; bpp over all photos.

    python -m benchmarks.photo_ceiling --out benchmarks/results/photo-ceiling.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import git_commit, machine_info, write_result
from latentwire.codec.normalization import psnr_db

DEFAULT_BUNDLE = "codec/assets/bsds-hyper2d"
DEFAULT_PHOTOS = "../shared/data/bsds500/val"


def _photos(folder: Path, limit: int) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    if not paths:
        raise SystemExit(f"benchmarks.photo_ceiling: no photos under {folder}")
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append((p.name, np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()))
    return out


def measure(bundle: str, photos: list[tuple[str, np.ndarray]], threads: int) -> list[dict[str, Any]]:
    """Per level: bpp, PSNR and the unrounded ceiling's PSNR (each averaged over the photos)."""
    from latentwire.codec.codec import Codec

    codec = Codec.load(bundle, provider="cpu", threads=threads)
    hyper = codec.hyper
    if hyper is None:
        raise SystemExit(f"benchmarks.photo_ceiling: {bundle} is not a hyperprior bundle")
    levels = len(hyper.gains)
    pixels = sum(x.shape[1] * x.shape[2] for _, x in photos)
    norm = codec.normalization
    peak = norm.peak
    bits = np.zeros(levels)
    coded = np.zeros((levels, len(photos)))
    ceiling = np.zeros((levels, len(photos)))
    for i, (_, raw) in enumerate(photos):
        y, _ = codec.encoder.encode_with_side(codec.normalization.to_model(raw[None]))
        for k in range(levels):
            packet = codec.encode(raw[None], quality=k)
            bits[k] += 8 * len(packet)
            coded[k, i] = psnr_db(raw, codec.decode(packet)[0], peak)
            x_hat = codec.decoder.decode(hyper.unrounded_values(y, k), out_size=raw.shape[1:])
            unrounded = np.clip(np.rint(norm.to_raw_float(x_hat)), norm.raw_min, norm.raw_max)[0]
            ceiling[k, i] = psnr_db(raw, unrounded, peak)
        print(f"  {i + 1}/{len(photos)} photos", file=sys.stderr, flush=True)
    return [{"level": k, "bpp": round(float(bits[k] / pixels), 4), "psnr_db": round(float(coded[k].mean()), 3),
             "ceiling_db": round(float(ceiling[k].mean()), 3),
             "gap_db": round(float((ceiling[k] - coded[k]).mean()), 3)} for k in range(levels)]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bpp = [r["bpp"] for r in rows]
    ax.plot(bpp, [r["psnr_db"] for r in rows], "o-", color="C3", label="coded (latent levels)")
    ax.plot(bpp, [r["ceiling_db"] for r in rows], "s--", color="C7", label="same level, latent unrounded")
    for r in rows:
        ax.annotate(f"q{r['level']}", (r["bpp"], r["psnr_db"]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("bits per pixel (coded)")
    ax.set_ylabel("PSNR (dB), per photo averaged")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=DEFAULT_BUNDLE)
    ap.add_argument("--photos", type=Path, default=Path(DEFAULT_PHOTOS), help="validation photos (never test)")
    ap.add_argument("--limit", type=int, default=20, help="the first this many photos (sorted by name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/photo-ceiling.json")
    args = ap.parse_args(argv)
    photos = _photos(args.photos, args.limit)
    t0 = time.perf_counter()
    rows = measure(args.bundle, photos, args.threads)
    report = {
        "meta": {"command": "python -m benchmarks.photo_ceiling " + shlex.join(sys.argv[1:] if argv is None else argv),
                 "bundle": args.bundle, "photos": [n for n, _ in photos], "git_commit": git_commit(),
                 "machine": machine_info(), "seconds": round(time.perf_counter() - t0, 1)},
        "levels": rows,
    }
    out = write_result(args.out, report)
    for r in rows:
        print(f"q{r['level']}: {r['bpp']:.4f} bpp, {r['psnr_db']:.2f} dB; unrounded {r['ceiling_db']:.2f} dB "
              f"(gap {r['gap_db']:.2f} dB)")
    png = plot(rows, out.with_suffix(".png"), f"{Path(args.bundle).name}: coded vs unrounded latent, "
                                              f"{len(photos)} validation photos")
    print(f"results: {out}" + (f", plot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
