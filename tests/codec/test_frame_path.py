"""The one-frame fast path (codec/frame.py) writes and reads exactly the general path's bytes,
and declines everything it does not cover, so errors keep their explanations (issue 15)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.codec import Codec
from latentwire.codec.errors import ChecksumMismatch, InputError
from latentwire.codec.sources import load_mnist, sample_data_root

SAMPLE = Path(__file__).resolve().parents[2] / "codec" / "assets" / "mnist_test_sample.npz"


def _digits(n: int) -> np.ndarray:
    with np.load(SAMPLE) as z:
        return z["samples"][:n]


def _general(bundle: str | Path) -> Codec:
    """The same bundle with the fast path switched off: every call takes the general path."""
    codec = Codec.load(bundle, provider="cpu", threads=1)
    codec.frames.levels, codec.frames.by_header = {}, {}
    return codec


@pytest.fixture(scope="module")
def vr_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dense variable-rate bundle: its levels quantize with per-channel gains."""
    pytest.importorskip("torch")
    import torch

    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.training import export, train

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("vr-dense")
    folder = sample_data_root() / "mnist"
    assert train.main(["--data", str(folder), "--family", "dense", "--layers", "64", "--code-size", "8",
                       "--rate-levels", "0.05,0.01,0.002", "--epochs", "2", "--batch-size", "64", "--lr", "3e-3",
                       "--out", str(work / "run"), "--no-progress", "--threads", "1"]) == 0
    assert export.main([str(work / "run"), "--out", str(work / "bundle"), "--name", "vr-dense"]) == 0
    calibrate(work / "bundle", load_mnist(folder, split="train"), threads=1)
    return work / "bundle"


@pytest.mark.parametrize("which", ["default", "vr"])
def test_same_bytes_and_samples_as_the_general_path(which: str, request: pytest.FixtureRequest) -> None:
    bundle = "default" if which == "default" else request.getfixturevalue("vr_bundle")
    fast, general = Codec.load(bundle, provider="cpu", threads=1), _general(bundle)
    covered = sorted(fast.frames.levels)
    latent_only = [q.index for q in fast.qualities if q.max_error is None and q.transform_step is None]
    assert covered == latent_only and covered  # every latent-only level of a dense bundle is covered
    if which == "vr":
        assert any(fast.qualities[q].latent_level is not None for q in covered)  # gains are exercised
    x = _digits(120)
    for q in covered:
        for i in range(x.shape[0]):
            packet = fast.encode(x[i : i + 1], quality=q)
            assert packet == general.encode(x[i : i + 1], quality=q)
            assert np.array_equal(fast.decode(packet), general.decode(packet))


def _finest_latent_only(codec: Codec) -> int:
    """The default bundle's finest latent-only level (the fast path's)."""
    return max(q.index for q in codec.qualities if q.max_error is None and q.transform_step is None)


def test_what_it_declines_takes_the_general_path(tmp_path: Path) -> None:
    codec = Codec.load("default", provider="cpu", threads=1)
    x = _digits(3)
    residual = codec.default_quality
    assert codec.qualities[residual].max_error is not None and residual not in codec.frames.levels
    assert codec.frames.encode(x[:1], residual) is None
    latent = _finest_latent_only(codec)
    assert latent in codec.frames.levels
    assert codec.frames.encode(x[:2], latent) is None  # a batch
    assert codec.frames.encode(x[:1].astype(np.int16), latent) is None  # another dtype: the general path explains
    with pytest.raises(InputError, match="integer raw samples|uint8"):
        codec.encode(x[:1].astype(np.float32), quality=latent)
    packet = codec.encode(x[:1], quality=latent)
    assert codec.frames.decode(memoryview(packet)) is None
    damaged = bytearray(packet)
    damaged[-6] ^= 0x01
    assert codec.frames.decode(bytes(damaged)) is None
    with pytest.raises(ChecksumMismatch):
        codec.decode(bytes(damaged))
    assert codec.frames.decode(packet + b"\0") is None  # trailing bytes: the general path names them
    assert np.array_equal(codec.decode(codec.encode(x[:1], quality=residual)).shape, (1, 1, 28, 28))


def test_threads_keep_their_own_buffers() -> None:
    codec = Codec.load("default", provider="cpu", threads=1)
    x = _digits(64)
    latent = _finest_latent_only(codec)
    expected = [codec.encode(x[i : i + 1], quality=latent) for i in range(64)]
    got: dict[int, list[bytes]] = {}
    decoded: dict[int, bool] = {}

    def work(t: int) -> None:
        got[t] = [codec.encode(x[i : i + 1], quality=latent) for i in range(64)]
        decoded[t] = all(np.array_equal(codec.decode(p), codec.decode_many([p])[0]) for p in got[t])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(got[t] == expected for t in range(4)) and all(decoded.values())
