"""Reproduce the shipped convolutional bundles, then measure them on data they never saw.

    python -m benchmarks.train_bundles train  [ecg|bsds ...]   # latentwire train (CPU, niced, 1 thread)
    python -m benchmarks.train_bundles ship   [ecg|bsds ...]   # export + calibrate into codec/assets/
    python -m benchmarks.train_bundles calibrate [ecg|bsds ...] # re-calibrate the shipped bundle in place
    python -m benchmarks.train_bundles exact bsds              # its exact integer decoder (then calibrate)
    python -m benchmarks.train_bundles classic [bsds]           # add classical residual tables, nothing else
    python -m benchmarks.train_bundles hyper-tables bsds-hyper  # refit the hyperprior's latent tables, nothing else
    python -m benchmarks.train_bundles context bsds-hyper [--init STATE]  # add its checkerboard context, recalibrate
    python -m benchmarks.train_bundles eval   [ecg|bsds ...]   # held-out figures -> benchmarks/results/
    python -m benchmarks.train_bundles sample                  # codec/assets/ecg_heldout_sample.npz

Why a script: a shipped bundle is only as trustworthy as the commands that produced it. The
train commands below are recorded verbatim in each manifest's training.command (export copies
them from the checkpoint); the split is recorded in training.data so evaluators (benchmarks/rd.py
reads train_records / val_records / heldout_records) never score a bundle on what it learned from.

Splits:
- ECG (MIT-BIH, records 100-124 of the 100 series): trained on 100-116 BY RECORD (two of those,
  picked by the group split with seed 0, were the validation set), held out 117-124 entirely.
  One run of 30 epochs from scratch on windows overlapping by 3/4 (`stride=256`). A shipped run
  that was warm-started (`--init-from`) gets every earlier stage in its manifest's training.stages.
- BSDS500: random 128x128 RGB crops of train/ + val/ (300 photos; 10 % of the photos, picked by
  the group split, are the validation set); evaluated on whole test/
  photos (all 200, 481x321 and 321x481; --limit N for the first N): the
  conv graphs take any size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the package loads lazily here: `train` needs no onnxruntime session
    from latentwire.codec.codec import Codec, LatentGrid

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LATENTWIRE_DATA", REPO.parent / "shared" / "data"))
ASSETS = REPO / "codec" / "assets"
RESULTS = REPO / "benchmarks" / "results"

ECG_TRAIN_RECORDS = [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 111, 112, 113, 114, 115, 116]
ECG_HELDOUT_RECORDS = [117, 118, 119, 121, 122, 123, 124]

BUNDLES: dict[str, dict[str, Any]] = {
    "ecg": {
        # the shipped run: 6 epochs with augmentation (amplitude, baseline wander, noise), cosine lr
        # 3e-4 -> 0, started from the bundle of the recipe below (`latentwire train <recipe> --epochs 6
        # --lr 3e-4 --schedule cosine --clip-grad 1 --augment ecg --threads 1 --out runs/ecg-aug
        # --init-from codec/assets/ecg-conv1d`; both commands in the manifest's training.stages):
        # -2.0 % BD-rate on the validation records 102 and 112 (python -m benchmarks.ecg_select)
        "run": "runs/ecg-aug",
        "asset": "ecg-conv1d",
        "name": "mitdb-ecg-conv1d-8",
        # one run from scratch on windows that start every 256 samples (4x the windows, each beat
        # at four offsets); one residual block per stage; rate weight 0.0012. It beat the earlier
        # three-stage recipe (plain stages, 2,345 s) by ~4 % in CR at PRD 2.7 % on the validation
        # records 102 and 112 (never on the held-out ones) for about the same CPU time
        "train": [
            "--data", "../shared/data/mitdb",
            "--source-option", "records=" + ",".join(str(r) for r in ECG_TRAIN_RECORDS),
            "--source-option", "stride=256",
            "--family", "conv1d", "--layers", "32,64,64", "--blocks", "1", "--code-size", "8", "--activation", "gelu",
            "--rate-weight", "0.0012", "--epochs", "30", "--batch-size", "32", "--lr", "1e-3", "--patience", "0",
            "--threads", "2", "--seed", "0", "--out", "runs/ecg-blocks1", "--no-progress",
        ],
        # raw ADC units (11-bit, 5 uV per unit): latent only, then ever tighter residual bounds, lossless
        # last; dense around 16-8, where PRD crosses 2.7 % (the literature's diagnostic-quality bar)
        # then (issue 14) the transform residual, coarse to fine: the latent's residual as DCT
        # coefficients at these steps (raw units, snapped to the quarter-octave grid); appended, so
        # q0-q15 keep their meaning for existing senders
        "ladder": (None, 40, 24, 20, 16, 12, 10, 8, 7, 6, 5, 4, 3, 2, 1, 0,
                   "t64", "t45.3", "t32", "t26.9", "t22.6", "t19", "t16", "t13.5", "t11.3", "t9.51", "t8", "t6.73"),
        # the transform residual's basis: the CDF 9/7 wavelet codes the validation records' residual
        # 14.8 % smaller than the DCT over PRDN 1.4-4.2 % (benchmarks/ecg_basis.py, BENCHMARKS.md)
        "transform_basis": "cdf97",
    },
    "bsds": {
        # the shipped run: 3 more epochs (cosine from 1e-4) started from the 13-epoch bundle, itself
        # 7 epochs at a constant rate and two such 3-epoch cycles (cosine from 2e-4, then 1e-4):
        # `latentwire train <the recipe below, --lr 1e-4 --epochs 3 --schedule cosine --out
        # runs/bsds-gdn4> --init-from codec/assets/bsds-gdn2d` (training.stages holds all four commands)
        "run": "runs/bsds-gdn4",
        "asset": "bsds-gdn2d",
        "name": "bsds500-rgb-gdn2d-192-vr8",
        # issue 11: a Balle-style factorized-prior network (GDN / inverse GDN, 5x5 stride-2
        # convolutions, 4 downsamplings, 128 channels, a 192-channel latent) with eight learned
        # rate levels (per-level gain vectors) in one model, on 128x128 crops of train+val with
        # flips; checkpoints every 10 minutes (--resume on the same machine); a later session
        # continues from the shipped bundle with --init-from codec/assets/bsds-gdn2d and a new --out
        "train": [
            "--data", "../shared/data/bsds500", "--source-option", "subdirs=train,val",
            "--source-option", "size=128,128", "--source-option", "per_image=48", "--source-option", "scale=0.6,1.0",
            "--val-fraction", "0.1", "--val-limit", "192",
            "--family", "gdn2d", "--layers", "128,128,128", "--code-size", "192", "--kernel-size", "5",
            "--rate-levels", "0.0513,0.0256,0.0132,0.00689,0.00355,0.00185,0.000955,0.000495",
            "--batch-size", "8", "--lr", "2e-4", "--weight-decay", "0", "--schedule", "none", "--patience", "0",
            "--epochs", "1000", "--augment", "flip", "--clip-grad", "1", "--threads", "2",
            "--checkpoint-minutes", "10", "--out", "runs/bsds-gdn",
            # issue 23: bf16 autocast of the transforms on channels-last tensors, the fastest setting in every run
            # (median 1.3x the fp32 steps/s over 10 interleaved rounds on a shared machine, 2.0x over 60-step
            # runs) with validation PSNR and bpp within seed noise (benchmarks/train_speed.py, BENCHMARKS.md);
            # gdn2d's default since then, named here so the recorded command says so. Earlier stages: fp32.
            "--precision", "bf16", "--channels-last",
        ],
        # every learned level (latent only), then the finest with 8-bit max errors 4, 2, 0
        "ladder": ("l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l7+4", "l7+2", "l7+0"),
        # frames per onnxruntime call while calibrating: a 128-channel network holds ~50 MB of
        # activations per 320 x 320 crop and layer (1024 128 x 128 crops at once ran a 24 GB machine
        # out of memory)
        "calibrate_batch": 4,
        "calibrate_threads": 2,  # onnxruntime threads: ship runs after training, on an otherwise idle machine
        # custom max errors with context-coded tables too (issue 24: max error 1 is measured against JPEG-LS NEAR=1)
        "residual_max_errors": (1,),
        # residual levels predict from an exact integer copy of the decoder (issue 24 part 1)
        "exact": True,
    },
    "bsds-hyper": {
        # issue 23: the shipped factorized-prior network (bsds-gdn2d) warm-started into a mean-scale hyperprior
        # (family hyper2d: its analysis, synthesis and level gains kept, h_a, h_s and z's density fitted first on
        # cached latents). Stage 1 (runs/bsds-hyper): one epoch of 128 x 128 crops, 12 per photo, of BSDS500
        # train+val plus photos-train (Urban100, Sun-Hays80, an ImageNet sample). Its side networks saw 2 x 2 z
        # maps, all border, and mispredicted whole photos (BENCHMARKS.md "Photo hyperprior"), so stage 2
        # (runs/bsds-hyper256, below, --init-from stage 1's checkpoint) trains on 256 x 256 crops of the photos
        # at least 256 px on the short side: BSDS500 train+val and Urban100. A later session continues from the
        # shipped bundle: the command below with --init-from codec/assets/bsds-hyper2d and a new --out (h_a and
        # the transforms come back from the graphs, h_s and z's density are refitted first). Stages 3 and 4
        # (session 11) went on from stage 2 at lr 3e-5 (runs/bsds-hyper256-lr3e5), then 1e-5 (the run below):
        # -2.8 % BD-rate vs bsds-gdn2d on whole validation photos (benchmarks/photo_select.py). Shipped in
        # session 12, once its residual levels predicted exactly (BENCHMARKS.md "Photo hyperprior").
        "run": "runs/bsds-hyper256-lr1e5",
        "asset": "bsds-hyper2d",
        "name": "photos-rgb-hyper2d-192-vr8",
        "train": [
            "--data", "../shared/data",
            "--source-option", "subdirs=bsds500/train,bsds500/val,photos-train/urban100",
            "--source-option", "size=256,256", "--source-option", "per_image=8", "--source-option", "scale=0.6,1.0",
            "--val-fraction", "0.1", "--val-limit", "96",
            "--family", "hyper2d", "--layers", "128,128,128", "--code-size", "192", "--kernel-size", "5",
            "--rate-levels", "0.0513,0.0256,0.0132,0.00689,0.00355,0.00185,0.000955,0.000495",
            "--batch-size", "8", "--lr", "1e-4", "--weight-decay", "0", "--schedule", "none", "--patience", "0",
            "--epochs", "1000", "--augment", "flip", "--clip-grad", "1", "--threads", "2",
            "--checkpoint-minutes", "10", "--precision", "bf16", "--channels-last",
            "--out", "runs/bsds-hyper3", "--init-from", "codec/assets/bsds-hyper2d",
        ],
        "ladder": ("l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l7+4", "l7+2", "l7+0"),
        "calibrate_batch": 4,
        "calibrate_threads": 2,
        # the in-sample per-level figures on 48 of the 300 crops: each level re-runs both graphs on what it
        # measures (300 crops x 11 levels: ~15 min of 2 CPUs), and the held-out figures are what count
        "calibrate_measure": 48,
        "residual_max_errors": (1,),
        # residual levels predict from an exact integer copy of the decoder, fed y_hat * gain on the mean's grid
        "exact": True,
        # the sender's graph (10 MB with h_a) keeps its weights in float16: 5 MB less to download, y moves by
        # ~1e-4 of its size, and nothing a receiver computes changes (codec/training/half_encoder.py)
        "encoder_float16": True,
        # issue 23, session 15: a checkerboard context on the shipped latents (`context` stage, then calibrate),
        # trained on training photos only and measured on 30 bsds500/val photos
        "context": [
            "--data", "../shared/data/bsds500/train", "../shared/data/photos-train",
            "--val", "../shared/data/bsds500/val", "--val-photos", "30",
            "--crops", "2000", "--minutes", "35", "--threads", "2",
        ],
    },
}


def train_commands(key: str) -> list[list[str]]:
    """The train run of one bundle."""
    return [["nice", "-n", "10", str(REPO / ".venv" / "bin" / "latentwire"), "train", *BUNDLES[key]["train"]]]


def cmd_train(keys: Sequence[str]) -> None:
    for key in keys:
        for cmd in train_commands(key):
            print("+", shlex.join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)


# -- ship: export + calibrate -----------------------------------------------------------------------

def _ecg_split() -> dict[str, Any]:
    """The records on each side, recomputed exactly as `latentwire train` split them (seed 0)."""
    from latentwire.codec.sources import load_ecg_windows

    windows = load_ecg_windows(DATA / "mitdb", records=ECG_TRAIN_RECORDS)
    train, val = windows.split(0.1, seed=0)
    assert train.groups is not None and val.groups is not None, "ECG windows are grouped by record"
    return {
        "train_records": sorted(int(g) for g in np.unique(train.groups)),
        "val_records": sorted(int(g) for g in np.unique(val.groups)),
        "heldout_records": ECG_HELDOUT_RECORDS,
        "split": "by record: trained on 100-116 (val_records were its validation), 117-124 never seen",
        "window": 1024,
    }


def _bsds_split(key: str = "bsds") -> dict[str, Any]:
    if key == "bsds-hyper":
        return {
            "subdirs": ["bsds500/train", "bsds500/val", "photos-train/urban100"],
            "crop": [256, 256],
            "per_image": 8,
            "earlier_stage": {"subdirs": ["bsds500/train", "bsds500/val", "photos-train/urban100",
                                          "photos-train/sunhays80", "photos-train/imagenet-sample"],
                              "crop": [128, 128], "per_image": 12},
            "heldout": "bsds500/test (200 whole photos, never seen)",
            "split": "by photo: val photos of the training photos picked by the group split (seed 0)",
        }
    return {
        "subdirs": ["train", "val"],
        "crop": [128, 128],
        "per_image": 48,
        "heldout": "bsds500/test (200 whole photos, never seen)",
        "split": "by photo: val photos of train+val picked by the group split (seed 0)",
    }


def calibration_samples(key: str) -> np.ndarray:
    """Training-side samples only: calibration must not peek at the held-out set either."""
    from latentwire.codec.sources import ImageFolder, load_ecg_windows

    if key == "ecg":
        return load_ecg_windows(DATA / "mitdb", records=ECG_TRAIN_RECORDS).samples
    # one 320 x 320 crop per photo (latents 20 x 20): context tables fit on them code whole photos
    # ~1 % smaller than tables fit on four 128 x 128 crops (latents 8 x 8, a quarter of them on the
    # border), and as small as tables fit on whole photos (measured on bsds500/val, fit on train)
    crops = ImageFolder(DATA / "bsds500", subdirs=["train", "val"]).crops(size=(320, 320), per_image=1, seed=1)
    return crops.samples


def cmd_ship(keys: Sequence[str]) -> None:
    import torch

    from latentwire.codec.training.export import export
    from latentwire.codec.training.train import load_checkpoint

    torch.set_num_threads(1)
    for key in keys:
        spec = BUNDLES[key]
        run = REPO / spec["run"]
        ckpt = load_checkpoint(run)
        data = {**ckpt["data"], **(_ecg_split() if key == "ecg" else _bsds_split(key))}
        extra: dict[str, Any] = {"data": data}
        if ckpt.get("init_from"):  # warm-started: every earlier stage's command and seconds count too
            stages = _stages(run)
            extra["init_from"] = ckpt["init_from"]
            extra["stages"] = stages
            extra["seconds_total"] = round(sum(st["seconds"] for st in stages), 2)
        out = ASSETS / spec["asset"]
        export(run, out, name=spec["name"], training=extra, command=_command())
        if spec.get("exact"):
            cmd_exact([key])
        _calibrate(key, out)
        if spec.get("encoder_float16"):
            cmd_half([key])


def _command() -> str:
    """This script's own invocation, recorded by export and calibrate in the bundle's manifest."""
    return shlex.join(["python", "-m", "benchmarks.train_bundles", *sys.argv[1:]])


def _stages(run: Path) -> list[dict[str, Any]]:
    """The chain of warm-started runs behind ``run``, first stage first (each checkpoint names the
    run it started from; a run started from a shipped bundle ends the walk with the bundle's stages)."""
    from latentwire.codec.training import precision
    from latentwire.codec.training.train import load_checkpoint

    chain: list[dict[str, Any]] = []
    path: Path | None = run
    while path is not None:
        ck = load_checkpoint(path)
        chain.append({"run": str(path.relative_to(REPO)) if path.is_absolute() else str(path),
                      "command": ck.get("command", ""), "seconds": round(float(ck.get("seconds", 0.0)), 2),
                      "epochs": int(ck["epoch"]) + 1,
                      **precision.resolve(None, None, ck.get("options", {})).summary()})  # older runs: fp32
        init = ck.get("init_from")
        if init and init.get("bundle") is not None:  # started from a shipped bundle (warmstart.py): its own record
            # a bundle without stages was one run: named by the folder its command wrote, not the bundle's path
            chain += init["stages"][::-1] or [{"run": _out_of(init["command"]) or init["path"],
                                                   "command": init["command"], "seconds": init["seconds"],
                                                   "epochs": init["epochs"]}]
            break
        path = (
            None if not init else (REPO / init["path"] if not Path(init["path"]).is_absolute() else Path(init["path"]))
        )
    return chain[::-1]


def _out_of(command: str) -> str | None:
    """The ``--out`` folder of a recorded ``latentwire train`` command, if it names one."""
    words = shlex.split(command)
    for i, w in enumerate(words):
        if w == "--out" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--out="):
            return w.split("=", 1)[1]
    return None


def _calibrate(key: str, out: Path) -> None:
    from latentwire.codec.bundle import read_manifest
    from latentwire.codec.calibrate import calibrate

    report = calibrate(out, calibration_samples(key), quality_max_errors=BUNDLES[key]["ladder"],
                       threads=BUNDLES[key].get("calibrate_threads", 1),
                       batch_size=BUNDLES[key].get("calibrate_batch", 1024),
                       transform_basis=BUNDLES[key].get("transform_basis", "dct"),
                       measure_samples=BUNDLES[key].get("calibrate_measure", 2000),
                       residual_max_errors=BUNDLES[key].get("residual_max_errors", ()), command=_command())
    m = read_manifest(out)
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    print(f"{key}: {m['name']} id {m['model_id'][:12]} trained {m['training']['seconds']:.0f}s, "
          f"{m['training']['epochs']} epochs; files {sizes}")
    for lv in report.levels:
        print(f"  {lv.name} D={lv.max_error}: {lv.bytes_per_sample:.1f} B/sample, {lv.psnr_db:.2f} dB (in-sample)")


# -- eval on held-out data ----------------------------------------------------------------------------

def _load_codec(key: str):
    from latentwire.codec.codec import Codec

    return Codec.load(ASSETS / BUNDLES[key]["asset"], provider="cpu", threads=1)


def eval_ecg(stride_windows: int = 4) -> dict[str, Any]:
    """Every 4th held-out window (~1100), one packet per window (compact per-frame mode, as sent)."""
    from latentwire.codec.sources import load_ecg_windows

    codec = _load_codec("ecg")
    s = load_ecg_windows(DATA / "mitdb", records=ECG_HELDOUT_RECORDS)
    raw = s.samples[::stride_windows]
    x = raw.astype(np.float64)
    denom = float(((x - 1024.0) ** 2).sum())
    bits_raw = raw[0].size * 11
    levels = []
    for q in codec.qualities:
        t0 = time.perf_counter()
        sizes = np.empty(len(raw))
        dec = np.empty_like(raw)
        for i in range(len(raw)):
            packet = codec.encode(raw[i : i + 1], quality=q.index)
            sizes[i] = len(packet)
            dec[i] = codec.decode(packet)[0]
        joint = len(codec.encode(raw, quality=q.index)) / len(raw)
        err = x - dec.astype(np.float64)
        if q.max_error is not None:
            assert np.abs(err).max() <= q.max_error, (q, np.abs(err).max())
        row = {
            "level": q.name, "max_error": q.max_error, "bytes_per_window": float(sizes.mean()),
            "bytes_per_window_joint": joint, "cr": bits_raw / (8 * float(sizes.mean())),
            "cr_joint": bits_raw / (8 * joint),
            "prd_percent": 100 * math.sqrt(float((err**2).sum()) / denom),
            "max_abs_error": float(np.abs(err).max()), "seconds": time.perf_counter() - t0,
        }
        levels.append(row)
        print(f"  {row['level']} D={q.max_error}: {row['bytes_per_window']:.1f} B/window (joint {joint:.1f}), "
              f"CR {row['cr']:.1f} (joint {row['cr_joint']:.1f}), PRD {row['prd_percent']:.2f}%", flush=True)
    ok = [r for r in levels if r["prd_percent"] <= 2.7]
    best = max(ok, key=lambda r: r["cr"]) if ok else None
    return {"bundle": codec.manifest.raw["name"], "model_id": codec.model_id, "records": ECG_HELDOUT_RECORDS,
            "windows": int(len(raw)), "window_stride": stride_windows, "levels": levels,
            "best_at_prd_2.7": best}


def _interp(points: list[tuple[float, float]], bpp: float) -> float | None:
    """PSNR of a baseline at bpp by linear interpolation over its sorted (bpp, psnr) sweep."""
    pts = sorted(points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if bpp < xs[0] or bpp > xs[-1]:
        return None
    return float(np.interp(bpp, xs, ys))


def eval_bsds(limit: int | None = None, key: str = "bsds") -> dict[str, Any]:
    """Whole test photos (all 200, or the first `limit` by name), one packet per photo; PSNR per
    photo, averaged; JPEG and WebP on the same photos, interpolated to each level's bpp."""
    from latentwire.codec.baselines import image_roundtrip
    from latentwire.codec.normalization import psnr_db
    from latentwire.codec.sources import ImageFolder

    codec = _load_codec(key)
    images = ImageFolder(DATA / "bsds500" / "test").images(limit=limit)
    n_levels = len(codec.qualities)
    bits = np.zeros((len(images), n_levels))
    psnr = np.zeros((len(images), n_levels))
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        raw = img[None]
        pixels = img.shape[1] * img.shape[2]
        for q in codec.qualities:
            packet = codec.encode(raw, quality=q.index)
            rec = codec.decode(packet)  # what the receiver gets
            if q.max_error is not None:
                assert int(np.abs(rec.astype(int) - raw.astype(int)).max()) <= q.max_error
            bits[i, q.index] = len(packet) * 8 / pixels
            psnr[i, q.index] = psnr_db(raw, rec, 255.0)
        if i % 20 == 0:
            print(f"  image {i}/{len(images)} {time.perf_counter() - t0:.0f}s", flush=True)
    sweeps: dict[str, list[tuple[float, float]]] = {}
    for fmt, qs in (("jpeg", (5, 10, 20, 30, 50, 70, 85, 95, 100)), ("webp", (0, 10, 20, 30, 50, 70, 85, 95, 100))):
        pts = []
        for qual in qs:
            b, p = [], []
            for img in images:
                n, rec = image_roundtrip(img, fmt, qual)
                b.append(n * 8 / (img.shape[1] * img.shape[2]))
                p.append(psnr_db(img, rec, 255.0))
            pts.append((float(np.mean(b)), float(np.mean(p))))
        sweeps[fmt] = pts
    levels = []
    for q in codec.qualities:
        bpp = float(bits[:, q.index].mean())
        row = {"level": q.name, "max_error": q.max_error, "bpp": bpp, "psnr_db": float(psnr[:, q.index].mean()),
               "jpeg_psnr_db_at_bpp": _interp(sweeps["jpeg"], bpp), "webp_psnr_db_at_bpp": _interp(sweeps["webp"], bpp)}
        levels.append(row)
        print(f"  {row['level']} D={q.max_error}: {bpp:.3f} bpp, {row['psnr_db']:.2f} dB; JPEG "
              f"{row['jpeg_psnr_db_at_bpp']}, WebP {row['webp_psnr_db_at_bpp']}", flush=True)
    return {"bundle": codec.manifest.raw["name"], "model_id": codec.model_id, "images": len(images),
            "psnr": "mean of per-image PSNR (peak 255, RGB)", "levels": levels, "baseline_sweeps": sweeps}


def cmd_eval(keys: Sequence[str], limit: int | None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for key in keys:
        print(f"{key}: held-out evaluation", flush=True)
        result = eval_ecg() if key == "ecg" else eval_bsds(limit or None, key)
        path = RESULTS / f"heldout-{BUNDLES[key]['asset']}.json"
        path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")


def cmd_sample() -> None:
    """One window from each held-out record (records 117-124, window 100 of each): real ECG the
    shipped bundle never saw, small enough to ship (int16, 7 x 2 x 1024)."""
    from latentwire.codec.sources import load_ecg_windows

    s = load_ecg_windows(DATA / "mitdb", records=ECG_HELDOUT_RECORDS)
    take = [int(np.flatnonzero(s.groups == r)[100]) for r in ECG_HELDOUT_RECORDS]
    np.savez_compressed(ASSETS / "ecg_heldout_sample.npz", samples=s.samples[take],
                        records=np.asarray(ECG_HELDOUT_RECORDS, dtype=np.int16))
    print(f"wrote {ASSETS / 'ecg_heldout_sample.npz'}: {s.samples[take].shape}")


def cmd_exact(keys: Sequence[str]) -> None:
    """The shipped bundle's exact integer decoder (every residual level predicts from it), built on
    the training-side calibration crops; recalibrate afterwards, the residual tables follow it."""
    from latentwire.codec.training.quantize_exact import quantize_exact

    for key in keys:
        _, agreement = quantize_exact(ASSETS / BUNDLES[key]["asset"], calibration_samples(key),
                                      threads=BUNDLES[key].get("calibrate_threads", 1), command=_command())
        print(f"{key}: exact network, agreement with the float graph {agreement.to_dict()}")


def cmd_half(keys: Sequence[str]) -> None:
    """Store a shipped bundle's encoder weights in float16 (the model id stays: receivers are
    untouched), measured on 16 of the calibration crops."""
    from latentwire.codec.bundle import read_manifest
    from latentwire.codec.normalization import Normalization
    from latentwire.codec.training.half_encoder import halve_bundle_encoder

    for key in keys:
        out = ASSETS / BUNDLES[key]["asset"]
        norm = Normalization.from_dict(read_manifest(out)["input"]["normalization"])
        report = halve_bundle_encoder(out, norm.to_model(calibration_samples(key)[:16]), _command())
        print(f"{key}: encoder.onnx {report.bytes_before} -> {report.bytes_after} bytes ({report.tensors} tensors in "
              f"float16), largest change of y {report.max_relative_change:.1e} of its range")


def cmd_calibrate(keys: Sequence[str]) -> None:
    """New tables for the shipped graphs (e.g. after a coding change): same export, same ladder,
    same training-side samples; the model id changes with the tables."""
    for key in keys:
        _calibrate(key, ASSETS / BUNDLES[key]["asset"])


def cmd_classic(keys: Sequence[str]) -> None:
    """Fit the classical residual tables (photos: codec/coding/residual_classic.py; series: the
    model-free levels of residual_series.py) into a shipped bundle whose colour-wavefront or
    series-context residual_coding lacks them, on the samples calibrate uses, and nothing else:
    they involve no model, so this is what `calibrate` would add, while every latent level and every
    latent-mode table keep their bytes (only the model id changes, with entropy.json)."""
    import dataclasses

    from latentwire.codec.bundle import finalize, read_manifest, write_manifest
    from latentwire.codec.coding.payload import CodingTables
    from latentwire.codec.coding.residual_coding import with_classic
    from latentwire.codec.coding.residual_colour import ResidualColourContext
    from latentwire.codec.coding.residual_series import ResidualSeriesContext

    for key in keys:
        out = ASSETS / BUNDLES[key]["asset"]
        tables = CodingTables.load(out)
        coding = tables.residual_coding
        if not isinstance(coding, (ResidualColourContext, ResidualSeriesContext)) or tables.residual is None:
            raise SystemExit(f"{key}: no colour-wavefront or series-context residual_coding to add classical tables to")
        t0 = time.perf_counter()
        x = calibration_samples(key)
        zero = np.broadcast_to(np.float32(0), x.shape)
        coding = (with_classic(coding, tables.residual, x, zero) if isinstance(coding, ResidualColourContext)
                  else with_classic(coding, tables.residual, x, zero))  # one call per kind: a constrained TypeVar
        (out / "entropy.json").write_bytes(dataclasses.replace(tables, residual_coding=coding).dumps())
        m = read_manifest(out)
        m.setdefault("metrics", {}).setdefault("calibration", {})["classic"] = {
            "command": _command(), "seconds": round(time.perf_counter() - t0, 1)}
        write_manifest(out, m)
        fitted = [lv.max_error for lv in (coding.classic or coding).levels]
        print(f"{key}: classical tables for max errors {fitted}, model id {finalize(out)[:12]}")


def cmd_series(keys: Sequence[str]) -> None:
    """Fit the series-context residual coding (codec/coding/residual_series.py) into a shipped series
    bundle with an exact network, on the windows calibrate uses against the exact prediction it
    uses, for the ladder's max errors, and nothing else (the latent tables and residual model keep
    their bytes; only the model id changes, with entropy.json)."""
    import dataclasses

    from latentwire.codec.bundle import finalize, read_manifest, write_manifest
    from latentwire.codec.codec import Codec
    from latentwire.codec.coding.residual_series_fit import fit

    for key in keys:
        out = ASSETS / BUNDLES[key]["asset"]
        codec = Codec.load(out, threads=1)
        tables = codec.tables
        if codec.exact is None or tables.residual is None:
            raise SystemExit(f"{key}: series residual coding needs an exact network and a residual model")
        t0 = time.perf_counter()
        x = calibration_samples(key)
        ds = sorted({lv.max_error for lv in codec.qualities if lv.max_error is not None})
        coding = fit(tables.residual, x, _exact_prediction(codec, x, codec.residual_grid), ds, log=True)
        (out / "entropy.json").write_bytes(dataclasses.replace(tables, residual_coding=coding).dumps())
        m = read_manifest(out)
        m.setdefault("metrics", {}).setdefault("calibration", {})["series"] = {
            "command": _command(), "seconds": round(time.perf_counter() - t0, 1)}
        write_manifest(out, m)
        print(f"{key}: series residual coding for max errors {ds}, model id {finalize(out)[:12]}")


def _exact_prediction(codec: Codec, x: np.ndarray, grid: LatentGrid) -> np.ndarray:
    """The exact network's prediction of x on a latent grid (the max-error levels': residual_grid;
    the exact transform levels': reference_grid), in batches of 256 windows."""
    pred = []
    for i in range(0, len(x), 256):
        sym = codec.quantize_latents(codec._encode_model(codec.normalization.to_model(x[i : i + 256])), grid)
        pred.append(codec._residual_prediction(sym, grid, x.shape[1:]))
    return np.concatenate(pred)


def cmd_transform(keys: Sequence[str]) -> None:
    """Refit a shipped series bundle's wavelet transform tables against its exact network's
    prediction and mark them exact (transform.KIND_WAVELET_EXACT: the levels then reconstruct from
    that prediction and the integer inverse wavelet), on the windows calibrate uses, at the
    ladder's steps; every other table keeps its bytes (only the model id changes)."""
    import dataclasses

    from latentwire.codec.bundle import finalize, read_manifest, write_manifest
    from latentwire.codec.codec import Codec
    from latentwire.codec.coding.transform import TransformResidual

    for key in keys:
        out = ASSETS / BUNDLES[key]["asset"]
        codec = Codec.load(out, threads=1)
        tr = codec.tables.transform
        if codec.exact is None or tr is None or tr.basis != "cdf97":
            raise SystemExit(f"{key}: exact transform levels need an exact network and wavelet transform tables")
        t0 = time.perf_counter()
        x = calibration_samples(key)
        residual = x.astype(np.float64) - _exact_prediction(codec, x, codec.reference_grid)
        steps = [q.transform_step for q in codec.qualities if q.transform_step is not None]
        fitted = TransformResidual.fit([(residual, st) for st in steps], bands=tr.bands, steps=tr.steps,
                                       precision=tr.step_tables.precision, basis=tr.basis,
                                       alone=[(x, st) for st in steps] if tr.alone is not None else (),
                                       prediction=tr.alone.prediction if tr.alone is not None else 0.0, exact=True)
        (out / "entropy.json").write_bytes(dataclasses.replace(codec.tables, transform=fitted).dumps())
        m = read_manifest(out)
        m.setdefault("metrics", {}).setdefault("calibration", {})["exact_transform"] = {
            "command": _command(), "seconds": round(time.perf_counter() - t0, 1)}
        write_manifest(out, m)
        print(f"{key}: exact wavelet transform tables for {len(steps)} levels, model id {finalize(out)[:12]}")


def cmd_context(keys: Sequence[str], init: str | None) -> None:
    """Train a shipped hyperprior bundle's checkerboard context (`latentwire train-context`, which
    records itself in the manifest), then recalibrate the bundle: the latent tables follow the new
    symbols, and the residual levels' prediction moved with the refined means."""
    for key in keys:
        if "context" not in BUNDLES[key]:
            raise SystemExit(f"{key}: no checkerboard context is defined for it")
        out = ASSETS / BUNDLES[key]["asset"]
        cmd = [str(REPO / ".venv" / "bin" / "latentwire"), "train-context", str(out.relative_to(REPO)),
               *BUNDLES[key]["context"], *(["--init", init, "--save-state", init] if init else [])]
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
        _calibrate(key, out)


def cmd_hyper_tables(keys: Sequence[str]) -> None:
    """Refit a shipped hyperprior bundle's latent tables on the samples calibrate uses, as calibrate
    now does (calibrate_hyper.fit_tables), without re-running the rest of calibration: every other
    table keeps its bytes, and the sender's float16 encoder gives the symbols it will send."""
    import dataclasses

    from latentwire.codec.bundle import Bundle, finalize, read_manifest, write_manifest
    from latentwire.codec.calibrate_hyper import fit_tables, hyper_stage
    from latentwire.codec.codec import Codec
    from latentwire.codec.coding.hyper_latents import HyperInput

    for key in keys:
        out = ASSETS / BUNDLES[key]["asset"]
        codec = Codec.load(out, threads=BUNDLES[key].get("calibrate_threads", 1))
        shipped = codec.tables.hyper
        if codec.hyper is None or shipped is None:
            raise SystemExit(f"{key}: not a hyperprior bundle")
        t0 = time.perf_counter()
        stage = hyper_stage(Bundle.load(out), shipped.gaussian.precision)  # the model's tables: the prior
        if not np.array_equal(stage.coding.thresholds, shipped.thresholds):
            raise SystemExit(f"{key}: the stored thresholds differ from the model's; run calibrate instead")
        x = calibration_samples(key)
        step = BUNDLES[key].get("calibrate_batch", 1024)
        fitted = fit_tables(stage, (HyperInput(*codec.encoder.encode_with_side(codec.normalization.to_model(
            x[i : i + step]))) for i in range(0, len(x), step))).coding
        tables = dataclasses.replace(codec.tables, hyper=fitted, latent=fitted.z_tables)
        (out / "entropy.json").write_bytes(tables.dumps())
        m = read_manifest(out)
        m.setdefault("metrics", {}).setdefault("calibration", {})["hyper_tables"] = {
            "command": _command(), "seconds": round(time.perf_counter() - t0, 1), "samples": len(x)}
        write_manifest(out, m)
        print(f"{key}: hyperprior tables refit on {len(x)} crops, model id {finalize(out)[:12]}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_bundles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["train", "ship", "exact", "calibrate", "classic", "series", "transform",
                                      "half", "hyper-tables", "context", "eval", "sample"])
    p.add_argument("which", nargs="*", help="ecg, bsds and/or bsds-hyper (default: ecg and bsds)")
    p.add_argument("--limit", type=int, default=0, help="eval bsds: first N test photos only (0: all 200)")
    p.add_argument("--init", default=None, help="context: continue from this saved float state (updated in place)")
    args = p.parse_args(argv)
    keys = args.which or ["ecg", "bsds"]
    unknown = [k for k in keys if k not in BUNDLES]
    if unknown:
        p.error(f"unknown bundle(s) {unknown}; choose from {sorted(BUNDLES)}")
    if args.stage == "train":
        cmd_train(keys)
    elif args.stage == "ship":
        cmd_ship(keys)
    elif args.stage == "exact":
        cmd_exact(keys)
    elif args.stage == "calibrate":
        cmd_calibrate(keys)
    elif args.stage == "classic":
        cmd_classic(keys)
    elif args.stage == "series":
        cmd_series(keys)
    elif args.stage == "transform":
        cmd_transform(keys)
    elif args.stage == "half":
        cmd_half(keys)
    elif args.stage == "hyper-tables":
        cmd_hyper_tables(keys)
    elif args.stage == "context":
        cmd_context(keys, args.init)
    elif args.stage == "eval":
        cmd_eval(keys, args.limit)
    else:
        cmd_sample()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
