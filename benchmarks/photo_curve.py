"""A photo run's learning curve against the shipped bundle, on the run's own validation crops (issue 23).

Why: a long run spans sessions, and the next session must know whether more steps or a better model
is the lever. The run's checkpoint holds its validation figures per epoch (every rate level: PSNR and
the rate estimate under its own entropy model, on rounded latents); this script scores the shipped
bundle through the real codec (packet bytes, one packet per crop) on the SAME validation crops,
rebuilt exactly as `latentwire train` split them, and reports both, with a plot: PSNR against bpp
per epoch and for the bundle, and the validation loss against wall time.

    python -m benchmarks.photo_curve runs/bsds-hyper --reference codec/assets/bsds-gdn2d
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import git_commit, machine_info, write_result


def train_args(command: str) -> argparse.Namespace:
    """A run's recorded `latentwire train` command, parsed as `latentwire train` parsed it."""
    from latentwire.codec.training.options import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    argv = shlex.split(command)
    return parser.parse_args(argv[argv.index("train"):])


def validation_crops(command: str) -> np.ndarray:
    """The run's validation crops (raw uint8), from its recorded `latentwire train` command."""
    from latentwire.codec.sources import load_source

    args = train_args(command)
    source = load_source(args.data, **dict(args.source_option))
    _, val = source.split(args.val_fraction, seed=args.seed)
    raw = val.samples
    if args.val_limit is not None and args.val_limit < raw.shape[0]:
        raw = raw[np.linspace(0, raw.shape[0] - 1, args.val_limit).round().astype(np.int64)]
    return raw


def bundle_points(bundle: str, raw: np.ndarray, threads: int) -> list[dict[str, float]]:
    """Every latent-only level of the bundle: bpp from real packets, PSNR over the whole set."""
    from latentwire.codec.codec import Codec

    codec = Codec.load(bundle, provider="cpu", threads=threads)
    pixels = raw.shape[2] * raw.shape[3]
    points = []
    for q in [lv.index for lv in codec.qualities if lv.max_error is None and lv.transform_step is None]:
        nbytes, se = 0, 0.0
        for frame in raw:
            packet = codec.encode(frame[None], quality=q)
            nbytes += len(packet)
            se += float(np.sum((codec.decode(packet)[0].astype(np.float64) - frame) ** 2))
        mse = se / raw.size
        points.append({"quality": q, "bpp": 8.0 * nbytes / (len(raw) * pixels),
                       "psnr_db": float(10 * np.log10(255.0**2 / mse))})
    return points


def run_points(history: list[dict[str, Any]], pixels: int) -> list[dict[str, Any]]:
    out = []
    for h in history:
        levels = sorted(int(k.rsplit("q", 1)[1]) for k in h if k.startswith("val_psnr_db_q"))
        out.append({"epoch": int(h["epoch"]), "seconds": float(h["seconds"]), "val_loss": float(h["val_loss"]),
                    "levels": [{"level": lv, "psnr_db": float(h[f"val_psnr_db_q{lv}"]),
                                "bpp": 8.0 * float(h[f"val_bytes_per_sample_q{lv}"]) / pixels} for lv in levels]})
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rd, curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    ref = result["reference"]["points"]
    rd.plot([p["bpp"] for p in ref], [p["psnr_db"] for p in ref], "k-o", label=f"{result['reference']['name']} "
            "(codec bytes)")
    for e in result["run"]["epochs"]:
        rd.plot([p["bpp"] for p in e["levels"]], [p["psnr_db"] for p in e["levels"]], ".-", alpha=0.8,
                label=f"epoch {e['epoch'] + 1} ({e['seconds'] / 3600:.1f} h, estimate)")
    rd.set_xlabel("bits per pixel")
    rd.set_ylabel("PSNR (dB)")
    rd.set_title("validation crops")
    rd.grid(alpha=0.3)
    rd.legend(fontsize=7)
    curve.plot([e["seconds"] / 3600 for e in result["run"]["epochs"]], [e["val_loss"] for e in result["run"]["epochs"]],
               "o-")
    curve.set_xlabel("training hours (this run, warm start excluded)")
    curve.set_ylabel("validation loss (all levels)")
    curve.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the training run's --out folder (its checkpoint.pt)")
    p.add_argument("--reference", default="codec/assets/bsds-gdn2d", help="bundle scored on the same crops")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/photo-curve.json")
    args = p.parse_args(argv)
    import torch

    ckpt = torch.load(Path(args.run) / "checkpoint.pt", map_location="cpu", weights_only=False)
    raw = validation_crops(str(ckpt["command"]))
    pixels = raw.shape[2] * raw.shape[3]
    print(f"{len(raw)} validation crops of {raw.shape[2]}x{raw.shape[3]}", file=sys.stderr)
    result: dict[str, Any] = {
        "run": {"path": args.run, "command": ckpt["command"], "config": ckpt["config"],
                "init_from": ckpt.get("init_from"), "epochs": run_points(ckpt["history"], pixels)},
        "reference": {"name": Path(args.reference).name, "points": bundle_points(args.reference, raw, args.threads)},
        "validation_crops": int(len(raw)),
        "machine": machine_info(), "git": git_commit(),
        "command": shlex.join(["python", "-m", "benchmarks.photo_curve", *(argv or sys.argv[1:])]),
    }
    out = Path(args.out)
    write_result(out, result)
    plot(result, out.with_suffix(".png"))
    for e in result["run"]["epochs"]:
        print(f"epoch {e['epoch'] + 1}: " + ", ".join(f"{p['bpp']:.3f} bpp {p['psnr_db']:.2f} dB"
                                                        for p in e["levels"]))
    print("reference: " + ", ".join(f"{p['bpp']:.3f} bpp {p['psnr_db']:.2f} dB" for p in result["reference"]["points"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
