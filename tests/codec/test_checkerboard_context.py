"""The checkerboard context of a hyperprior bundle (issue 23) on the tiny bundle, trained for real by
`latentwire train-context` and recalibrated as the shipped one is: stored and measured in the
manifest, every level round-trips, its deltas match an independent int64 evaluation and decode
alike in another process, and a later session resumes training from the bundle itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _exact_reference import read_exact
from _tiny_hyper import DECODE, LADDER, PHOTOS, tiny_photos, train_tiny_hyper
from latentwire.codec.codec import Codec
from latentwire.codec.errors import BundleError


@pytest.fixture(scope="module")
def hyper_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return train_tiny_hyper(tmp_path_factory.mktemp("hyper-bundle"))


@pytest.fixture(scope="module")
def context_bundle(hyper_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a checkerboard context trained for real by `latentwire train-context`, then
    recalibrated (as the shipped bundle is)."""
    import shutil

    from latentwire.codec import cli
    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.sources import load_source

    bundle = tmp_path_factory.mktemp("context") / "bundle"
    shutil.copytree(hyper_bundle, bundle)
    assert cli.main(["train-context", str(bundle), "--data", str(PHOTOS), "--val", str(PHOTOS), "--crops", "12",
                     "--crop", "32", "--minutes", "0.1", "--batch", "4", "--lr", "3e-3", "--threads", "1"]) == 0
    calibrate(bundle, load_source(PHOTOS, size=(64, 64), per_image=8), LADDER, threads=1)
    return bundle


def test_the_context_is_stored_measured_and_covered_by_the_model_id(hyper_bundle: Path, context_bundle: Path) -> None:
    from latentwire.codec.bundle import Bundle

    block = json.loads((context_bundle / "manifest.json").read_text())["latent"]["hyper"]["context"]
    assert block["kind"] == "checkerboard" and block["steps"] > 0
    assert block["command"].startswith("latentwire train-context ") and "--minutes 0.1" in block["command"]
    assert len(block["validation"]["levels"]) == 3 and block["seconds"] > 0
    spec, _ = read_exact((context_bundle / "hyper.npz").read_bytes())
    assert spec["hyper"]["version"] == 2 and len(spec["hyper"]["context"]["level_codes"]) == 3
    assert Bundle.load(context_bundle).model_id != Bundle.load(hyper_bundle).model_id
    codec = Codec.load(context_bundle, provider="cpu", threads=1)
    assert codec.hyper is not None and codec.hyper.has_context


def test_with_a_context_every_level_round_trips_and_non_anchors_get_new_codes(context_bundle: Path) -> None:
    from latentwire.codec.coding.exact_checkerboard import anchor_mask

    codec = Codec.load(context_bundle, provider="cpu", threads=1)
    assert codec.hyper is not None
    for photo in tiny_photos():
        sizes = [len(codec.encode(photo[None], quality=q)) for q in range(3)]
        assert sizes == sorted(sizes), sizes
        near = codec.decode(codec.encode(photo[None], quality=3))
        assert int(np.max(np.abs(near.astype(np.int64) - photo))) <= 4
        assert np.array_equal(codec.decode(codec.encode(photo[None], quality=4))[0], photo)
    photo = tiny_photos()[0][None]
    encoded = codec._encode_model(codec.manifest.normalization.to_model(photo))
    prior_mean, prior_scale = codec.hyper.prior_codes(encoded)
    latents = codec.hyper.quantize(encoded, 2)
    first = np.broadcast_to(anchor_mask(*prior_mean.shape[2:]), prior_mean.shape)
    assert np.array_equal(latents.mean_code[first], prior_mean[first])
    assert np.array_equal(latents.scale_code[first], prior_scale[first])
    assert np.any(latents.mean_code[~first] != prior_mean[~first])
    # (the lossless round trips above prove the receiver reached the sender's codes: its prediction, and
    # so every residual, depends on each refined mean)


def test_the_context_matches_an_independent_evaluation(context_bundle: Path) -> None:
    """Its inputs (the anchors' y_hat codes, in exact rationals) and its deltas (numpy int64, element by
    element) from code that shares nothing with the runtime; other batch sizes give the same."""
    from fractions import Fraction

    from _exact_reference import checkerboard_deltas
    from latentwire.codec.coding.exact_checkerboard import anchor_codes

    codec = Codec.load(context_bundle, provider="cpu", threads=1)
    assert codec.hyper is not None and codec.hyper.synthesis.context is not None
    photos = np.stack(tiny_photos())[:, :, :40, :48]
    encoded = codec._encode_model(codec.manifest.normalization.to_model(photos))
    mean_code, scale_code = codec.hyper.prior_codes(encoded)
    level = 1
    gain = codec.hyper.gains[level]
    symbols = codec.hyper.quantize(encoded, level).symbols
    x = codec.hyper.exact_input(codec.hyper.quantize(encoded, level), level)
    a = anchor_codes(x, gain)
    ref = np.empty_like(a)
    for idx in np.ndindex(*a.shape):
        ref[idx] = round(Fraction(float(Fraction(int(x[idx])) / Fraction(float(gain[idx[1]])))))
    assert np.array_equal(a, ref) and symbols.shape == a.shape
    spec, arrays = read_exact((context_bundle / "hyper.npz").read_bytes())
    got = codec.hyper.synthesis.context.deltas(a, mean_code, scale_code, level)
    want = checkerboard_deltas(spec["hyper"]["context"], arrays, a, mean_code, scale_code, level)
    assert np.array_equal(got, want) and np.any(got)
    assert np.array_equal(codec.hyper.synthesis.context.deltas(a[1:], mean_code[1:], scale_code[1:], level), got[1:])


def test_context_streams_decode_identically_in_another_process(context_bundle: Path, tmp_path: Path) -> None:
    codec = Codec.load(context_bundle, provider="cpu", threads=1)
    packets = {f"p{i}_{q}": np.frombuffer(codec.encode(p[None], quality=q), dtype=np.uint8)
               for i, p in enumerate(tiny_photos()) for q in (0, 2, 4)}
    np.savez(tmp_path / "packets.npz", **packets)
    mine = [codec.decode(packets[k].tobytes()) for k in sorted(packets)]
    out = tmp_path / "out.npz"
    subprocess.run([sys.executable, "-c", DECODE, str(context_bundle), "2", str(tmp_path / "packets.npz"), str(out)],
                   check=True, env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    theirs = np.load(out)
    for k, a in enumerate(mine):
        assert np.array_equal(theirs[f"arr_{k}"], a)


def test_a_context_block_that_disagrees_with_its_version_is_refused(context_bundle: Path) -> None:
    from latentwire.codec.coding.exact import write_npz
    from latentwire.codec.coding.exact_hyper import ExactHyperSynthesis

    spec, arrays = read_exact((context_bundle / "hyper.npz").read_bytes())
    assert ExactHyperSynthesis.from_bytes(write_npz(spec, arrays)).context is not None
    spec["hyper"]["version"] = 1
    with pytest.raises(BundleError, match="disagree"):
        ExactHyperSynthesis.from_bytes(write_npz(spec, arrays))
    spec["hyper"]["version"] = 2
    spec["hyper"]["context"]["level_codes"] = spec["hyper"]["context"]["level_codes"][:1] + [1.5]
    with pytest.raises(BundleError, match="level codes"):
        ExactHyperSynthesis.from_bytes(write_npz(spec, arrays))


def test_a_later_session_resumes_the_context_from_the_bundle(context_bundle: Path, tmp_path: Path) -> None:
    """The float state stays on the machine that trained it; --init-from-bundle dequantizes the shipped
    integer networks instead, and requantized at the same bits they compute (almost) the same codes."""
    import shutil

    from latentwire.codec import cli
    from latentwire.codec.coding.exact_checkerboard import anchor_codes

    again = tmp_path / "again"
    shutil.copytree(context_bundle, again)
    assert cli.main(["train-context", str(again), "--init-from-bundle", "--data", str(PHOTOS), "--val", str(PHOTOS),
                     "--crops", "12", "--crop", "32", "--minutes", "0", "--threads", "1"]) == 0
    block = json.loads((again / "manifest.json").read_text())["latent"]["hyper"]["context"]
    assert block["init"] == "the bundle's own context" and block["earlier"]["steps"] > 0
    old, new = (Codec.load(b, provider="cpu", threads=1).hyper for b in (context_bundle, again))
    assert old is not None and new is not None and old.synthesis.context and new.synthesis.context
    photos = np.stack(tiny_photos())
    encoded = Codec.load(context_bundle, provider="cpu", threads=1)._encode_model(
        Codec.load(context_bundle).manifest.normalization.to_model(photos))
    mean_code, scale_code = old.prior_codes(encoded)
    a = anchor_codes(old.exact_input(old.quantize(encoded, 1), 1), old.gains[1])
    d_old = old.synthesis.context.deltas(a, mean_code, scale_code, 1)
    d_new = new.synthesis.context.deltas(a, mean_code, scale_code, 1)
    assert np.mean(np.abs(d_old - d_new) > 2) < 0.05 and np.any(d_old)


def test_a_resumed_context_is_balanced_for_training_without_changing_it(context_bundle: Path) -> None:
    """dequantize_context keeps the integer networks' unit scales (weights ~1e-5 next to ~1e2), which
    Adam's per-weight steps wreck; balance_context equalizes each hidden unit's in and out norms and
    computes the same function."""
    import torch

    from latentwire.codec.training.checkerboard import balance_context, dequantize_context

    stage = Codec.load(context_bundle, provider="cpu", threads=1).hyper
    assert stage is not None and stage.synthesis.context is not None
    model = dequantize_context(stage.synthesis.context).double()
    balanced = dequantize_context(stage.synthesis.context).double()
    balance_context(balanced)
    m = model.m
    torch.manual_seed(0)
    y, mu, ls = torch.randn(2, m, 6, 6).double() * 3, torch.randn(2, m, 6, 6).double(), torch.randn(2, m, 6, 6).double()
    gain = torch.full((m,), 2.0).double()
    for a, b in zip(model(y, mu, ls, gain), balanced(y, mu, ls, gain), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9) and not torch.equal(a, mu)
    convs = [balanced.context, *(c for c in balanced.params if isinstance(c, torch.nn.Conv2d))]
    for into, out in zip(convs, convs[1:], strict=False):
        units = into.weight.shape[0]
        w_in = into.weight.reshape(units, -1).norm(dim=1)
        w_out = out.weight[:, :units].reshape(out.weight.shape[0], units, -1).norm(dim=(0, 2))
        live = (w_in > 0) & (w_out > 0)
        assert live.any() and torch.allclose(w_in[live], w_out[live], rtol=1e-5)

    def spread(net: torch.nn.Module) -> float:  # largest over smallest layer's mean |weight|
        means = [float(c.weight.detach().abs().mean()) for c in [net.context, *net.params]
                 if isinstance(c, torch.nn.Conv2d)]
        return max(means) / min(means)

    assert spread(balanced) < spread(model) / 10
