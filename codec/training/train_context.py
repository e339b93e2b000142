"""``latentwire train-context``: add a checkerboard context to a hyperprior bundle (issue 23).

Trains checkerboard.CheckerboardContext on the bundle's frozen latents of random photo crops,
quantizes it into exact networks, measures what it saves on validation photos through the codec's
own integer path (ideal bits under the bundle's tables, z included, every level), and stores it in
the bundle's hyper.npz (version 2) with the command, time, steps and measurement in the manifest's
``latent.hyper.context`` block. The bundle's model id changes; re-run ``latentwire calibrate`` on
it afterwards, so the latent tables are refit on the symbols the context leaves.

    latentwire train-context codec/assets/bsds-hyper2d --data ../shared/data/bsds500/train \\
        ../shared/data/photos-train --val ../shared/data/bsds500/val --crops 2000 --minutes 25
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import HYPER, finalize, read_manifest, write_manifest
from ..codec import Codec
from ..coding.hyper_latents import HyperInput, HyperLatentPath
from ..errors import InputError

CROP = 256
CALIBRATION_CROPS = 200  # the exact networks' activation ranges: this many training crops, every level


@dataclass(frozen=True)
class LevelSaving:
    level: int
    bits_without: float  # y + z, ideal bits under the stored tables, all validation photos
    bits_with: float

    @property
    def saving(self) -> float:
        return 1.0 - self.bits_with / self.bits_without


def _encoder(codec: Codec) -> Callable[[np.ndarray], HyperInput]:
    def encode(raw: np.ndarray) -> HyperInput:
        return HyperInput(*codec.encoder.encode_with_side(codec.normalization.to_model(raw)))
    return encode


def measure(codec: Codec, without: HyperLatentPath, with_context: HyperLatentPath,
            photos: list[Path]) -> list[LevelSaving]:
    """Both stages' ideal bits per level on whole photos (the codec's symbols and tables)."""
    from .checkerboard import load_photo

    encode = _encoder(codec)
    totals = np.zeros((len(without.gains), 2))
    for f in photos:
        latents = encode(load_photo(f)[None])
        for col, stage in enumerate((without, with_context)):
            for k, h in enumerate(stage.quantize_levels(latents)):
                totals[k, col] += stage.coding.ideal_bits(h.z, h.symbols, h.scale_code, k).total
    return [LevelSaving(k, float(a), float(b)) for k, (a, b) in enumerate(totals)]


def add_parser(subparsers: Any, name: str = "train-context") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="add a checkerboard context to a hyperprior bundle (recalibrate after)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="a hyperprior bundle directory (changed in place)")
    p.add_argument("--data", nargs="+", required=True, help="folders of training photos (searched recursively)")
    p.add_argument("--val", required=True, help="a folder of validation photos (never the test set)")
    p.add_argument("--val-photos", type=int, default=30, help="measure on the first this many validation photos")
    p.add_argument("--crops", type=int, default=2000, help=f"random {CROP} x {CROP} training crops")
    p.add_argument("--crop", type=int, default=CROP)
    p.add_argument("--minutes", type=float, default=25.0, help="training time (0: only quantize --init)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--init", type=Path, default=None, help="start from this saved float state")
    p.add_argument("--init-from-bundle", action="store_true",
                   help="start from the bundle's own context, dequantized (a later session resumes so; the "
                        "manifest keeps the earlier stage)")
    p.add_argument("--save-state", type=Path, default=None, help="write the trained float state here")
    p.add_argument("--weight-bits", type=int, default=None, help="exact weights' bits (default: checkerboard.py's)")
    p.add_argument("--act-bits", type=int, default=None, help="exact activations' bits (default: checkerboard.py's)")
    p.add_argument("--range-margin", type=float, default=None,
                   help="activation grids reach this multiple of the largest calibration value (default: as above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from .checkerboard import (
        CONTEXT_ACT_BITS,
        CONTEXT_RANGE_MARGIN,
        CONTEXT_WEIGHT_BITS,
        CheckerboardContext,
        balance_context,
        crop_latents,
        dequantize_context,
        photo_files,
        quantize_context,
        train_context,
    )

    weight_bits = args.weight_bits or CONTEXT_WEIGHT_BITS
    act_bits = args.act_bits or CONTEXT_ACT_BITS
    margin = args.range_margin or CONTEXT_RANGE_MARGIN
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    codec = Codec.load(args.bundle, threads=args.threads)
    stage = codec.hyper
    if stage is None:
        raise InputError(f"{args.bundle} is not a hyperprior bundle: a checkerboard context refines h_s's codes")
    plain = stage.with_synthesis(replace(stage.synthesis, context=None))
    encode = _encoder(codec)
    frac = 2.0 ** plain.coding.mean_frac_bits

    def latents(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h = encode(raw)
        mean_code, scale_code = plain.prior_codes(h)
        return h.y, mean_code / frac, scale_code / 2.0 ** plain.coding.scale_frac_bits

    y, mu, ls = crop_latents(latents, photo_files(args.data), args.crops, args.crop, args.seed)
    print(f"encoded {len(y)} training crops in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    gains = [torch.from_numpy(g.astype(np.float32)) for g in plain.gains]
    model = CheckerboardContext(int(y.shape[1]))
    if args.init is not None and args.init_from_bundle:
        raise InputError("give --init or --init-from-bundle, not both")
    if args.init is not None:
        model.load_state_dict(torch.load(args.init, weights_only=True))
    earlier = None
    if args.init_from_bundle:
        if stage.synthesis.context is None:
            raise InputError(f"{args.bundle} has no checkerboard context to start from")
        model = dequantize_context(stage.synthesis.context)
        if args.minutes > 0:
            balance_context(model)
        earlier = read_manifest(args.bundle)["latent"]["hyper"].get("context")
    model, curve = train_context(y, mu, ls, gains, args.minutes, args.batch, args.lr, model=model,
                                 log=lambda s: print("  " + s, file=sys.stderr, flush=True))
    if args.save_state is not None:
        torch.save(model.state_dict(), args.save_state)
    model.eval()
    calib = slice(0, min(CALIBRATION_CROPS, len(y)))
    exact = quantize_context(model, y[calib], mu[calib], ls[calib], gains, weight_bits, act_bits, margin)
    synthesis = replace(plain.synthesis, context=exact)
    val = photo_files([args.val])[: args.val_photos]
    rows = measure(codec, plain, plain.with_synthesis(synthesis), val)
    (args.bundle / HYPER).write_bytes(synthesis.to_bytes())
    manifest = read_manifest(args.bundle)
    block = {"kind": "checkerboard", "crops": len(y), "crop": args.crop, "steps": curve[-1].step if curve else 0,
             "train_minutes": args.minutes,
             "init": "the bundle's own context" if args.init_from_bundle else str(args.init) if args.init else None,
             "weight_bits": weight_bits, "act_bits": act_bits, "range_margin": margin,
             "validation": {"photos": len(val), "folder": str(args.val),
                            "levels": [{**asdict(r), "saving": round(r.saving, 5)} for r in rows]},
             "curve": [asdict(c) for c in curve[:: max(1, len(curve) // 20)]],
             "command": getattr(args, "invocation", None) or shlex.join(["latentwire", *sys.argv[1:]]),
             "seconds": round(time.perf_counter() - t0, 1)}
    if earlier is not None:  # the stage this one continued from, without its curve
        block["earlier"] = {k: v for k, v in earlier.items() if k != "curve"}
    manifest["latent"]["hyper"]["context"] = block
    write_manifest(args.bundle, manifest)
    model_id = finalize(args.bundle)
    print(json.dumps({"bundle": str(args.bundle), "model_id": model_id,
                      "saving_per_level": [round(r.saving, 4) for r in rows],
                      "next": f"latentwire calibrate {args.bundle} (refit the tables on the new symbols)"}, indent=2))
    return 0
