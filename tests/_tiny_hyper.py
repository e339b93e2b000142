"""The tiny hyperprior photo bundle the hyperprior and checkerboard-context tests share: trained
for real on the shipped BSDS500 sample photos, exported with its exact hyper-synthesis and exact
decoder, calibrated."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentwire.codec.sources import ImageFolder, sample_data_root
from latentwire.codec.training.quantize_exact import quantize_exact

PHOTOS = sample_data_root() / "bsds"
RATE_LEVELS = "0.05,0.01,0.002"
LADDER = ["l0", "l1", "l2", "l2+4", "l2+0"]
# decodes packets saved with np.savez in another process: argv = bundle, threads, packets.npz, out.npz
DECODE = """
import sys, numpy as np
from latentwire.codec.codec import Codec
codec = Codec.load(sys.argv[1], provider="cpu", threads=int(sys.argv[2]))
data = np.load(sys.argv[3])
out = [codec.decode(data[k].tobytes()) for k in sorted(data.files)]
np.savez(sys.argv[4], *out)
"""


def tiny_photos() -> list[np.ndarray]:
    """The three shipped BSDS500 photos (64 x 96 and 96 x 64), cropped to 61 x 63: off the 16-pixel
    grid of y and the 64-pixel grid of z, so both pads and crops run."""
    return [img[:, :61, :63] for img in ImageFolder(PHOTOS).images()]


def train_tiny_hyper(work: Path) -> Path:
    """The bundle directory, under work."""
    import torch

    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.sources import load_source
    from latentwire.codec.training import export, train

    torch.set_num_threads(1)
    opts = ["--source-option", "size=48,48", "--source-option", "per_image=64"]
    assert train.main([
        "--data", str(PHOTOS), *opts, "--val-fraction", "0.34",
        "--family", "hyper2d", "--layers", "8,8,8", "--code-size", "12", "--rate-levels", RATE_LEVELS,
        "--epochs", "10", "--batch-size", "8", "--lr", "3e-3", "--augment", "flip", "--clip-grad", "1",
        "--out", str(work / "run"), "--no-progress", "--threads", "1",
    ]) == 0
    bundle = work / "bundle"
    assert export.main([str(work / "run"), "--out", str(bundle), "--name", "tiny-hyper"]) == 0
    crops = load_source(PHOTOS, size=(64, 64), per_image=8)
    quantize_exact(bundle, crops.samples, holdout=2, threads=1, command="test")  # residual levels predict exactly
    calibrate(bundle, crops, LADDER, threads=1)
    return bundle
