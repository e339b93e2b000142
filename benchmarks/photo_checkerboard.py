"""How much a checkerboard context model would save on top of the shipped hyperprior (issue 23).

Why: bsds-hyper2d codes every latent element with the Gaussian its exact hyper-synthesis picks,
so neighbouring elements of y say nothing about each other. A checkerboard context (He et al.,
CVPR 2021) codes the "anchor" half of y (i + j even) as now, then predicts each other element's
mean and scale from its decoded anchor neighbours together with the hyperprior's; it needs two
coding passes and, to stay exact on every machine, one more integer network. Before building
that, this probe trains the context and entropy-parameter networks on the shipped bundle's FROZEN
latents (the encoder, h_s and the decoder stay as shipped, so nothing but y's rate can change)
and measures y's ideal code length on whole validation photos at every level, with and without
the context. Training only these small networks on cached latents costs minutes, not the days
the transforms took.

    python -m benchmarks.photo_checkerboard --data ../shared/data --minutes 20 \
        --out benchmarks/results/photo-checkerboard.json

Rates are the model's ideal bits (discretized Gaussians, the codec's symbols), which the codec's
fitted tables track within ~1-3 %; z's bits are the same in both columns and counted in bpp.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import git_commit, machine_info, write_result

CROP = 256


def _photos(root: Path, split: str) -> list[Path]:
    return sorted((root / "bsds500" / split).glob("*.jpg"))


def _load(path: Path) -> np.ndarray:
    from latentwire.codec.training.checkerboard import load_photo

    return load_photo(path)


def _latents(codec: Any, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(y, mu, log sigma) float32 (N, M, h, w), exactly what the codec codes y with; z's bits."""
    from latentwire.codec.coding.hyper_latents import HyperInput

    stage = codec.hyper
    encoded = HyperInput(*codec.encoder.encode_with_side(codec.normalization.to_model(raw)))
    h = stage.quantize(encoded, 0)  # z and the exact h_s's codes do not depend on the level
    syn = stage.synthesis
    z_bits = stage.coding.ideal_bits(h.z, h.symbols, h.scale_code, 0).z_bits
    return (np.asarray(encoded.y, dtype=np.float32), syn.means(h.mean_code).astype(np.float32),
            syn.log_scales(h.scale_code).astype(np.float32), int(round(z_bits)))


def training_latents(codec: Any, root: Path, crops: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random 256 x 256 crops of the training photos (bsds500 train + photos-train), encoded."""
    from latentwire.codec.training.checkerboard import crop_latents, photo_files

    def encode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _latents(codec, raw)[:3]

    files = photo_files([root / "bsds500" / "train", root / "photos-train"])
    return tuple(t.numpy() for t in crop_latents(encode, files, crops, CROP, seed))


def build_context(m: int, kind: str = "network") -> Any:
    """"network": He et al.'s (what `latentwire train-context` ships); "depthwise": each channel's own
    3 x 3 anchor neighbours, linearly (a context cheap to make exact: does the cross-channel network pay?)."""
    import torch
    from torch import nn

    from latentwire.codec.training.checkerboard import CheckerboardContext, anchor_mask_t

    class Depthwise(nn.Module):
        """Per channel: the mean moves by a 3 x 3 filter of the anchors' residuals (in symbols), the
        log-scale by one of their log-magnitudes."""

        def __init__(self) -> None:
            super().__init__()
            self.mean = nn.Conv2d(m, m, 3, padding=1, groups=m, bias=False)
            self.scale = nn.Conv2d(m, m, 3, padding=1, groups=m)
            for w in (self.mean.weight, self.scale.weight, self.scale.bias):
                assert w is not None
                nn.init.zeros_(w)

        def forward(self, y_hat: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                    gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            anchors = anchor_mask_t(y_hat)
            r = (y_hat - mu) * anchors * gain
            keep = anchors.bool()
            return (torch.where(keep, mu, mu + self.mean(r) / gain),
                    torch.where(keep, log_sigma, log_sigma + self.scale(torch.log1p(r.abs()))))

    if kind == "depthwise":
        return Depthwise()
    return CheckerboardContext(m)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Saving per level on the validation photos (and held-out crops), and the training curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (per_level, curve) = plt.subplots(1, 2, figsize=(11, 4))
    levels = [r["level"] for r in report["levels"]]
    per_level.bar([k - 0.2 for k in levels], [-100 * r["saving"] for r in report["levels"]], 0.4,
                  label=f"{report['validation_photos']} whole validation photos (y + z)")
    per_level.bar([k + 0.2 for k in levels], [-100 * v for v in report["held_out_y_saving"]], 0.4,
                  label="held-out crops (y only)")
    per_level.axhline(0, color="k", lw=0.8)
    per_level.set_xticks(levels, [f"q{k}" for k in levels])
    per_level.set_ylabel("bytes vs the hyperprior alone (%)")
    per_level.set_title("checkerboard context on frozen latents")
    per_level.legend(fontsize=8)
    pts = report["curve"]
    curve.plot([p["seconds"] / 60 for p in pts], [100 * p["train_saving"] for p in pts], ".", alpha=0.4)
    curve.set_xlabel("training minutes")
    curve.set_ylabel("y bits saved on the batch (%)")
    curve.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.photo_checkerboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="codec/assets/bsds-hyper2d")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--crops", type=int, default=600, help="training crops (256 x 256)")
    p.add_argument("--val", type=int, default=30, help="whole bsds500/val photos to measure on")
    p.add_argument("--minutes", type=float, default=20.0, help="training time")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=["ste", "noise"], default="ste", help="the training rate's quantization proxy")
    p.add_argument("--held-out", type=int, default=100, help="training-source crops kept out of training, measured")
    p.add_argument("--save", default="", help="write the trained context model's state here")
    p.add_argument("--context", choices=["network", "depthwise"], default="network")
    p.add_argument("--out", default="benchmarks/results/photo-checkerboard.json")
    args = p.parse_args(argv)

    import torch

    from latentwire.codec.codec import Codec

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    codec = Codec.load(args.bundle, threads=args.threads)
    if codec.hyper is None:
        raise SystemExit(f"{args.bundle} is not a hyperprior bundle")
    gains = [torch.tensor(lv.gain, dtype=torch.float32) for lv in codec.manifest.latent_levels]
    if not gains:
        raise SystemExit(f"{args.bundle} has no rate levels to measure")
    root = Path(args.data)
    t0 = time.perf_counter()
    y, mu, ls = (torch.from_numpy(a) for a in training_latents(codec, root, args.crops + args.held_out, 0))
    print(f"cached {len(y)} crops' latents in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    hy, hmu, hls = y[: args.held_out], mu[: args.held_out], ls[: args.held_out]
    y, mu, ls = y[args.held_out :], mu[args.held_out :], ls[args.held_out :]
    from latentwire.codec.training.checkerboard import context_bits, train_context

    model, points = train_context(y, mu, ls, gains, args.minutes, args.batch, args.lr, args.mode,
                                  model=build_context(int(y.shape[1]), args.context),
                                  log=lambda line: print("  " + line, file=sys.stderr, flush=True))
    curve = [vars(p) for p in points]
    step = points[-1].step if points else 0

    model.eval()
    per_level = [{"base_bits": 0.0, "context_bits": 0.0} for _ in gains]
    pixels = 0
    z_bits = 0
    with torch.no_grad():
        for f in _photos(root, "val")[: args.val]:
            img = _load(f)[None]
            vy, vmu, vls, zb = _latents(codec, img)
            pixels += img.shape[2] * img.shape[3]
            z_bits += zb
            for k, g in enumerate(gains):
                tvy, tvmu, tvls = (torch.from_numpy(a) for a in (vy, vmu, vls))
                base, ctx = context_bits(model, tvy, tvmu, tvls, g, "round")
                per_level[k]["base_bits"] += float(base.sum())
                per_level[k]["context_bits"] += float(ctx.sum())
        held = []
        for g in gains:
            base, ctx = context_bits(model, hy, hmu, hls, g, "round")
            held.append(float(1 - ctx.sum() / base.sum()))
        print("held-out training-source crops, y bits saved per level: " + ", ".join(f"{v:+.2%}" for v in held))
    if args.save:
        torch.save(model.state_dict(), args.save)
    rows = []
    for k, r in enumerate(per_level):
        rows.append({"level": k, "bpp_without": (r["base_bits"] + z_bits) / pixels,
                     "bpp_with": (r["context_bits"] + z_bits) / pixels,
                     "saving": 1 - (r["context_bits"] + z_bits) / (r["base_bits"] + z_bits)})
        print(f"q{k}: {rows[-1]['bpp_without']:.4f} -> {rows[-1]['bpp_with']:.4f} bpp ({-rows[-1]['saving']:+.2%})")
    report = {"benchmark": "photo_checkerboard", "bundle": args.bundle, "model_id": codec.model_id,
              "command": " ".join(["python -m benchmarks.photo_checkerboard", *(argv or sys.argv[1:])]),
              "training_crops": int(len(y)), "validation_photos": args.val, "steps": step,
              "train_minutes": args.minutes, "batch": args.batch, "lr": args.lr, "mode": args.mode,
              "context": args.context, "levels": rows,
              "held_out_y_saving": held, "curve": curve,
              "machine": machine_info(), "commit": git_commit()}
    print(f"wrote {write_result(args.out, report)} and {plot(report, Path(args.out).with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
