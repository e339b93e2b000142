"""Training speed of the photo recipe (issue 23): the real loop's steps/s in fp32, channels-last and bf16.

Runs `latentwire train` with the shipped bsds-gdn2d recipe (benchmarks/train_bundles.py: GDN, 5x5
stride-2 convolutions, N=128, M=192, eight rate levels, batch 8 of 128x128 crops, 2 threads) through
the same train() the CLI calls, from one warm start (the shipped bundle via --init-from, density
refitted once on the loaded crops), for a fixed number of steps per setting. Settings run interleaved
(A, B, C, D, A, B, ...) because the machine is shared: each figure carries the 1-minute load
average it ran under, and the table reports medians. A step's time is the loop's own
history["train_step_seconds"] without its first step (oneDNN builds its kernels there).

Then the quality check: from the same start, the same steps (same batches, same seed) in fp32 and in
the fast settings, scored by the loop's own codec-faithful validation (rounded latents, every rate
level); a second fp32 run with another seed (other batch order and noise) gives run-to-run noise.

    python -m benchmarks.train_speed                      # ~15-25 min on 2 shared cores
    python -m benchmarks.train_speed --quality-steps 0 --repeats 5 --out benchmarks/results/train-speed-2.json
    python -m benchmarks.train_speed --steps 3 --repeats 1 --quality-steps 2 --val-limit 8 --per-image 1 \
        --density-warmup 20 --out /tmp/smoke.json                                   # smoke run, ~2 min
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import git_commit, machine_info, write_result
from benchmarks.train_bundles import BUNDLES, REPO

# name -> (--precision, --channels-last)
SETTINGS: dict[str, tuple[str, bool]] = {
    "fp32": ("fp32", False), "fp32 channels-last": ("fp32", True),
    "bf16": ("bf16", False), "bf16 channels-last": ("bf16", True),
}


def _with(argv: list[str], values: dict[str, str], source: dict[str, str]) -> list[str]:
    """The recipe's argv with some options' values (and --source-option KEY=...) replaced or added."""
    out = list(argv)
    for opt, value in values.items():
        if opt in out:
            out[out.index(opt) + 1] = value
        else:
            out += [opt, value]
    for i, word in enumerate(out):
        key = word.split("=", 1)[0]
        if i and out[i - 1] == "--source-option" and key in source:
            out[i] = f"{key}={source[key]}"
    return out


def _warm_start(config: Any, x: Any, base: Any, bundle: str, out: Path) -> str:
    import torch

    from latentwire.codec.training import warmstart
    from latentwire.codec.training.models import build_model
    from latentwire.codec.training.train import CHECKPOINT

    model = build_model(config)
    info = warmstart.load_bundle_weights(model, bundle)
    warmstart.fit_density(model, x, steps=base.density_warmup, batch_size=base.batch_size,
                          lr=base.lr * base.density_lr_factor, device=torch.device("cpu"), progress=False)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save({"config": config.to_dict(), "model": state, "best_model": state, "epoch": info["epochs"] - 1,
                "command": info["command"], "seconds": info["seconds"]}, out / CHECKPOINT)
    return str(out)


def _quality(history: dict[str, Any], levels: int, pixels: int) -> dict[str, Any]:
    return {
        "val_psnr_db": [round(history[f"val_psnr_db_q{lv}"], 4) for lv in range(levels)],
        "val_bpp": [round(history[f"val_bytes_per_sample_q{lv}"] * 8 / pixels, 5) for lv in range(levels)],
        "val_loss": history["val_loss"],
    }


def _quality_check(train: Any, config: Any, train_set: Any, val_set: Any, base: Any, fast: list[str], runs: Path,
                   pixels: int) -> dict[str, Any]:
    """fp32 and each fast setting from the same start, same batches and seed; fp32 with another seed for the noise."""
    levels = len(config.rate_levels)
    quality: dict[str, Any] = {}
    for label, (prec, cl), seed in (("fp32 seed 0", ("fp32", False), 0),
                                    *((f"{name} seed 0", SETTINGS[name], 0) for name in fast),
                                    ("fp32 seed 1", ("fp32", False), 1)):
        r = train(config, train_set, val_set, replace(
            base, precision=prec, channels_last=cl, seed=seed, out=str(runs / f"quality-{prec}-{int(cl)}-{seed}")))
        h = r.history[-1]
        quality[label] = {**_quality(h, levels, pixels), "load_1min": round(os.getloadavg()[0], 2),
                          "s_per_step": round(h["train_step_seconds"] / h["train_steps"], 4)}
        print(f"{label}: {quality[label]}", file=sys.stderr, flush=True)
    a, c = quality["fp32 seed 0"], quality["fp32 seed 1"]

    def max_abs(x: list[float], y: list[float]) -> float:
        return round(max(abs(u - v) for u, v in zip(x, y, strict=True)), 5)

    return {
        "levels": levels, "runs": quality,
        "vs_fp32_max_abs_psnr_db": {n: max_abs(quality[f"{n} seed 0"]["val_psnr_db"], a["val_psnr_db"]) for n in fast},
        "vs_fp32_max_abs_bpp": {n: max_abs(quality[f"{n} seed 0"]["val_bpp"], a["val_bpp"]) for n in fast},
        "seed_noise_max_abs_psnr_db": max_abs(c["val_psnr_db"], a["val_psnr_db"]),
        "seed_noise_max_abs_bpp": max_abs(c["val_bpp"], a["val_bpp"]),
    }


def main(argv: list[str] | None = None) -> int:
    from latentwire.codec.sources import load_source
    from latentwire.codec.training.options import add_train_parser
    from latentwire.codec.training.train import config_and_options, train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16, help="training steps per speed run (the first is not timed)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated settings to time (fp32 among them)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every setting")
    p.add_argument("--quality-steps", type=int, default=60, help="steps of each quality-check run (0: speed only)")
    p.add_argument("--quality-settings", default="fp32 channels-last,bf16 channels-last",
                   help="comma-separated settings the quality check compares with fp32")
    p.add_argument("--val-limit", type=int, default=96, help="validation crops of the quality check (every level)")
    p.add_argument("--per-image", type=int, default=4,
                   help="crops per photo loaded (the recipe's 48 fill 2.8 GB; a few hundred steps need few)")
    p.add_argument("--density-warmup", type=int, default=300,
                   help="steps refitting the bundle's density once for the common start (the recipe's 2000 cost "
                        "minutes; the comparison starts from the same density either way)")
    p.add_argument("--init-from", default=str(REPO / "codec" / "assets" / "bsds-gdn2d"))
    p.add_argument("--runs", type=Path, default=None, help="checkpoint folder (default: a temporary one)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train-speed.json")
    args = p.parse_args(argv)
    t_all = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="train-speed-") if args.runs is None else None
    runs = Path(tmp.name) if tmp is not None else args.runs

    changes = {"--epochs": "1", "--val-limit": "8", "--density-warmup": str(args.density_warmup),
               "--out": str(runs / "start"), "--checkpoint-minutes": "0"}
    recipe = _with(BUNDLES["bsds"]["train"], changes, {"per_image": str(args.per_image)}) + ["--no-progress"]
    parser = argparse.ArgumentParser(prog="latentwire")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    targs = parser.parse_args(["train", *recipe])
    targs.command_line = shlex.join(["latentwire", "train", *recipe])
    source = load_source(targs.data, **dict(targs.source_option))
    train_set, val_set = source.split(targs.val_fraction, seed=targs.seed)
    config, base = config_and_options(targs, list(source.sample_shape))
    batch = base.batch_size
    pixels = int(source.sample_shape[1]) * int(source.sample_shape[2])
    print(f"data: {len(train_set)} training crops, {len(val_set)} validation crops", file=sys.stderr)

    # the common start: the shipped bundle with its density refitted on the loaded crops (what --init-from
    # BUNDLE does before it trains), saved as a run every setting then starts from with --init-from RUN
    start = _warm_start(config, train_set.model_domain(), base, args.init_from, runs / "start")

    timed_settings = [name for name in args.settings.split(",") if name]
    if "fp32" not in timed_settings or any(name not in SETTINGS for name in timed_settings):
        p.error(f"--settings: fp32 and any of {list(SETTINGS)[1:]}, got {timed_settings}")
    speed: dict[str, list[dict[str, float]]] = {name: [] for name in timed_settings}
    speed_set = train_set.subset(slice(0, args.steps * batch))
    for rep in range(args.repeats):
        for name in timed_settings:
            prec, cl = SETTINGS[name]
            r = train(config, speed_set, val_set, replace(
                base, init_from=start, precision=prec, channels_last=cl, out=str(runs / f"speed-{rep}")))
            h = r.history[-1]
            timed = (h["train_step_seconds"] - h["first_step_seconds"]) / max(1, h["train_steps"] - 1)
            speed[name].append({"s_per_step": round(timed, 4), "first_step_s": round(h["first_step_seconds"], 3),
                                "load_1min": round(os.getloadavg()[0], 2)})
            print(f"{name}: {timed:.3f} s/step (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    fp32 = statistics.median(x["s_per_step"] for x in speed["fp32"])
    table = []
    for name, xs in speed.items():
        med = statistics.median(x["s_per_step"] for x in xs)
        table.append({"setting": name, "precision": SETTINGS[name][0], "channels_last": SETTINGS[name][1],
                      "s_per_step": round(med, 4), "steps_per_s": round(1 / med, 3),
                      "speedup_vs_fp32": round(fp32 / med, 3), "load_1min": [x["load_1min"] for x in xs],
                      "repeats": xs})

    fast = [name for name in args.quality_settings.split(",") if name]
    if unknown := [name for name in fast if name not in SETTINGS]:
        p.error(f"--quality-settings: {unknown} not among {list(SETTINGS)}")
    quality = None
    if args.quality_steps > 0:
        quality = _quality_check(train, config, train_set.subset(slice(0, args.quality_steps * batch)), val_set,
                                 replace(base, init_from=start, val_limit=args.val_limit), fast, runs, pixels)
        quality = {"steps": args.quality_steps, "val_crops": args.val_limit, **quality}

    report = {
        "benchmark": "train_speed",
        "issue": 23,
        "command": shlex.join(["python", "-m", "benchmarks.train_speed", *(sys.argv[1:] if argv is None else argv)]),
        "recipe": targs.command_line,
        "init_from": args.init_from,
        "steps_per_run": args.steps, "repeats": args.repeats, "batch_size": batch, "threads": base.threads,
        "speed": table,
        "quality": quality,
        "seconds": round(time.perf_counter() - t_all, 1),
        "machine": machine_info(),
        "git_commit": git_commit(),
    }
    print(f"wrote {write_result(args.out, report)}", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
