"""Fixtures shared across the suite: one tiny, really trained MNIST bundle per test session.

Training it takes seconds on the shipped 1000-digit sample; every transport and codec test then
runs real onnxruntime sessions on a real model instead of a stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from latentwire.codec.sources import load_mnist, sample_data_root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated dense MNIST bundle (784-128-16), trained 3 epochs on the shipped sample."""
    pytest.importorskip("torch")
    import torch

    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.training import export, train

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("tiny-bundle")
    folder = sample_data_root() / "mnist"
    assert train.main([
        "--data", str(folder), "--family", "dense", "--layers", "128", "--code-size", "16",
        "--epochs", "4", "--batch-size", "64", "--lr", "3e-3", "--rate-weight", "0.01",
        "--out", str(work / "run"), "--no-progress", "--threads", "1",
    ]) == 0
    bundle = work / "bundle"
    assert export.main([str(work / "run"), "--out", str(bundle), "--name", "tiny-mnist"]) == 0
    calibrate(bundle, load_mnist(folder, split="train"), threads=1)
    return bundle


def _redis(tmp: Path):
    import shutil

    from _redis import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed and could not be (the README's test command installs it)")
    # an append-only file fsynced once a second, as one would deploy Redis: servers started on it need
    # no --allow-volatile-store (tests of the volatile case start their own redis-server)
    server = RedisServer(tmp, persist=True, appendfsync="everysec").start()
    return server


@pytest.fixture()
def redis_server(tmp_path: Path):
    """A fresh redis-server on a free loopback port for one test."""
    server = _redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_module_server(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server shared by one test module."""
    server = _redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
