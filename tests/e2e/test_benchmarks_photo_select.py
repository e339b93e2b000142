"""benchmarks/photo_select.py picks models on whole validation photos: exactly the photos a run's own
group split held out of training (rebuilt from its recorded command), never one it trained on."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.photo_select import validation_photos
from latentwire.codec.sources import load_source


def test_validation_photos_are_the_ones_the_runs_split_held_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / sub / f"{i}.png")
    (tmp_path / "test").mkdir()  # a folder the run never named: none of its photos may come back
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "test" / "x.png")
    options = ["--source-option", "subdirs=a,b", "--source-option", "size=32,32", "--source-option", "per_image=3"]
    command = shlex.join(["latentwire", "train", "--data", str(tmp_path), *options, "--val-fraction", "0.3",
                          "--family", "gdn2d", "--out", str(tmp_path / "run")])
    picked = validation_photos(command)
    # the training side of the same command: its crops, its split by photo
    source = load_source(str(tmp_path), subdirs=["a", "b"], size=[32, 32], per_image=3)
    train, val = source.split(0.3, seed=0)
    files = source.meta["files"]
    assert train.groups is not None and val.groups is not None
    held_out = {tmp_path / files[int(g)] for g in np.unique(val.groups)}
    trained = {tmp_path / files[int(g)] for g in np.unique(train.groups)}
    assert set(picked) == held_out and len(picked) == round(0.3 * 14)
    assert not set(picked) & trained
    assert all(p.parent.name in ("a", "b") for p in picked)
