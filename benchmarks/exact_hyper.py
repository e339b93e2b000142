"""The hyperprior's exact synthesis at the shipped size (N = 128, M = 192): agreement and speed.

Builds hyper2d with the config of codec/assets/bsds-gdn2d (or loads a hyper2d checkpoint's
"model" state), takes z_hat = round(h_a(y)) of real BSDS500 photos (y: the checkpoint's encoder,
or without one the shipped gdn2d encoder.onnx, whose weights a hyper2d run warm-starts from, and
the untrained h_a's output rescaled to --z-std),
quantizes h_s with ReLU ranges calibrated on the first --calibrate photos, and reports on the
others: max and mean |mu_exact - mu_float| and |log sigma_exact - log sigma_float| against the
float32 torch h_s, the fraction of scale codes off the float's nearest code; and the time of one
481x321 photo (z 6x8 -> a 21x31 latent), best of --repeats, on 1 and 2 BLAS threads (torch's
float h_s on as many threads alongside). Usage:

    python -m benchmarks.exact_hyper --photos ../shared/data/bsds500/val --out benchmarks/results/exact-hyper.json
    python -m benchmarks.exact_hyper --checkpoint runs/bsds-hyper --photos ../shared/data/bsds500/val
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from benchmarks.common import REPO, machine_info, write_result
from latentwire.codec.bundle import Bundle
from latentwire.codec.coding.exact_hyper import ExactHyperSynthesis
from latentwire.codec.runtime import Encoder
from latentwire.codec.sources import ImageFolder
from latentwire.codec.training.models.config import ModelConfig
from latentwire.codec.training.models.hyper import HyperGdn2dAutoencoder
from latentwire.codec.training.models.registry import build_model
from latentwire.codec.training.quantize_hyper import measure_hyper, quantize_hyper_synthesis

SHIPPED = REPO / "codec" / "assets" / "bsds-gdn2d"


def _model(checkpoint: Path | None) -> HyperGdn2dAutoencoder:
    if checkpoint is not None:
        from latentwire.codec.training.train import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        model = build_model(ModelConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    else:
        config = json.loads((SHIPPED / "manifest.json").read_text())["config"]
        model = build_model(ModelConfig(**{**config, "family": "hyper2d"}))
    if not isinstance(model, HyperGdn2dAutoencoder):
        raise SystemExit(f"{checkpoint} holds a {type(model).__name__}, not hyper2d")
    return model.eval()


def _z_maps(model: HyperGdn2dAutoencoder, photos: list[np.ndarray], own_encoder: bool,
            z_std: float | None) -> list[np.ndarray]:
    """z_hat (1, N, hz, wz) per photo. z_std: h_a's output rescaled to this spread before rounding (an
    untrained h_a's z is ~0 everywhere; rescaled, it keeps the photos' spatial structure)."""
    bundle = Bundle.load(SHIPPED)
    enc = Encoder(bundle, provider="cpu", threads=2)
    norm = bundle.manifest.normalization
    out = []
    with torch.no_grad():
        for img in photos:
            x = norm.to_model(img[None])
            y = model.encode(torch.from_numpy(x)) if own_encoder else torch.from_numpy(enc.encode(x))
            out.append(model.hyper_analysis(y).numpy())
    if z_std is not None:
        k = z_std / float(np.concatenate([z.ravel() for z in out]).std())
        out = [z * k for z in out]
    return [np.rint(z).astype(np.int64) for z in out]


def _timing(model: HyperGdn2dAutoencoder, exact: ExactHyperSynthesis, z: np.ndarray, size: tuple[int, int],
            repeats: int) -> dict[str, float]:
    out: dict[str, float] = {}
    zt = torch.from_numpy(z.astype(np.float32))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            runs = (("exact", lambda: exact(z, size)), ("float_torch", lambda: model.hyper_synthesis(zt, size)))
            for name, fn in runs:
                best = math.inf
                with torch.no_grad():
                    fn()  # warm-up
                    for _ in range(repeats):
                        t = time.perf_counter()
                        fn()
                        best = min(best, time.perf_counter() - t)
                out[f"{name}_ms_{threads}_threads"] = round(best * 1000, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, required=True, help="a folder of photos (BSDS500 val: 481x321 each)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a hyper2d run (its 'model' state); default: "
                   "random init with the shipped gdn2d encoder's latents")
    p.add_argument("--z-std", type=float, default=4.0, help="without --checkpoint: h_a's z rescaled to this "
                   "spread (an untrained h_a gives z ~ 0)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--calibrate", type=int, default=50, help="ReLU ranges from the first this many photos")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = _model(args.checkpoint)
    photos = ImageFolder(args.photos).images(args.limit)
    zs = _z_maps(model, photos, args.checkpoint is not None, None if args.checkpoint else args.z_std)
    sizes = [(-(-img.shape[1] // 16), -(-img.shape[2] // 16)) for img in photos]  # the latent's (h, w)
    t0 = time.perf_counter()
    exact = quantize_hyper_synthesis(model.hyper_synthesis, zs[: args.calibrate])
    quantize_s = time.perf_counter() - t0
    rows = [measure_hyper(model.hyper_synthesis, exact, z, size) for z, size in
            zip(zs[args.calibrate :], sizes[args.calibrate :], strict=True)]
    held = np.concatenate([z.ravel() for z in zs[args.calibrate :]])
    landscape = next(i for i, s in enumerate(sizes) if s[1] > s[0])
    report = {
        "benchmark": "exact_hyper", "machine": machine_info(),
        "model": str(args.checkpoint) if args.checkpoint else "hyper2d random init (seed 0), shipped gdn2d encoder, "
                                                              f"z rescaled to std {args.z_std}",
        "photos": str(args.photos), "calibration_photos": args.calibrate, "held_out_photos": len(rows),
        "z_abs_max": int(np.abs(held).max()), "z_std": round(float(held.std()), 3),
        "max_partial_sum_log2": round(math.log2(exact.network.max_partial_sum), 2),  # type: ignore[attr-defined]
        "file_bytes": len(exact.to_bytes()), "quantize_seconds": round(quantize_s, 2),
        "max_abs_mean": max(r.max_abs_mean for r in rows),
        "max_abs_log_scale": max(r.max_abs_log_scale for r in rows),
        "mean_abs_mean": float(np.mean([r.mean_abs_mean for r in rows])),
        "mean_abs_log_scale": float(np.mean([r.mean_abs_log_scale for r in rows])),
        "scale_codes_differing": float(np.mean([r.scale_codes_differing for r in rows])),
        "timing_photo": f"z {zs[landscape].shape[2]}x{zs[landscape].shape[3]} -> latent {sizes[landscape]}",
        **_timing(model, exact, zs[landscape], sizes[landscape], args.repeats),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        write_result(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
