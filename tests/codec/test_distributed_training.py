"""`latentwire train` under torchrun (issue 13): two CPU processes (gloo) train one model with
DistributedDataParallel; only rank 0 writes the checkpoint, which exports and decodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _transport import free_port
from latentwire.codec.sources import load_mnist, sample_data_root

pytest.importorskip("torch")


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), "-m", "latentwire.codec.training.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_two_processes_train_one_model_that_exports_and_decodes(tmp_path: Path) -> None:
    import torch

    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.codec import Codec
    from latentwire.codec.training import export

    mnist = sample_data_root() / "mnist"
    done = _torchrun("--data", str(mnist), "--family", "dense", "--layers", "128", "--code-size", "16", "--epochs",
                     "8", "--batch-size", "16", "--lr", "3e-3", "--out", str(tmp_path / "run"), "--no-progress",
                     "--threads", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 8 epochs") == 1  # rank 0 reports, the other trained its share
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["data"]["processes"] == 2 and len(ckpt["history"]) == 8
    assert not list((tmp_path / "run").glob("*.tmp"))
    bundle = tmp_path / "bundle"
    assert export.main([str(tmp_path / "run"), "--out", str(bundle)]) == 0
    digits = load_mnist(mnist, split="test").samples[:200]
    calibrate(bundle, load_mnist(mnist, split="train").samples, threads=1)
    codec = Codec.load(bundle, provider="cpu", threads=1)
    out = codec.decode(codec.encode(digits, quality=0))
    mse = float(np.mean((out.astype(np.float64) - digits) ** 2))
    assert 10 * np.log10(255**2 / mse) > 13.5  # it learned digits: the mean digit alone gives 12.0 dB
    assert ckpt["history"][-1]["val_loss"] < ckpt["history"][0]["val_loss"]


def test_variants_that_bypass_the_forward_are_refused_across_processes(tmp_path: Path) -> None:
    done = _torchrun("--data", str(sample_data_root() / "mnist"), "--family", "dense", "--layers", "32",
                     "--code-size", "4", "--epochs", "1", "--variant", "vae", "--out", str(tmp_path / "run"),
                     "--no-progress", "--threads", "1", cwd=tmp_path)
    assert done.returncode != 0
    assert "across processes is not supported" in done.stderr
