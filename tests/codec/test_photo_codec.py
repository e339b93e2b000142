"""The photo codec (issue 11): the GDN family exports to ONNX with parity at two sizes, one
variable-rate model serves every level through per-channel gains, and the 2-D causal context
decodes bit-exactly in another process, at another batch size and another thread count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.codec import Codec
from latentwire.codec.coding.coder import StreamDecoder, StreamEncoder
from latentwire.codec.coding.context2d import LatentContext2D, diagonals
from latentwire.codec.coding.payload import ENTROPY_VERSION_RESIDUAL_CODING
from latentwire.codec.coding.tables import TableSet, table_from_counts
from latentwire.codec.sources import ImageFolder, sample_data_root

PHOTOS = sample_data_root() / "bsds"
RATE_LEVELS = "0.05,0.01,0.002"


def _photos() -> list[np.ndarray]:
    """The three shipped BSDS500 photos, cropped to 56 x 60 (off the 16-pixel grid: pad and crop run)."""
    return [img[:, :56, :60] for img in ImageFolder(PHOTOS).images()]


@pytest.fixture(scope="module")
def photo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gdn2d variable-rate bundle (3 levels), really trained on crops of the shipped photos."""
    pytest.importorskip("torch")
    import torch

    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.training import export, train

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("photo-bundle")
    opts = ["--source-option", "size=48,48", "--source-option", "per_image=24"]
    assert train.main([
        "--data", str(PHOTOS), *opts, "--source-option", "scale=0.7,1.0", "--val-fraction", "0.34",
        "--family", "gdn2d", "--layers", "8,8,8", "--code-size", "12", "--rate-levels", RATE_LEVELS,
        "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--augment", "flip", "--clip-grad", "1",
        "--out", str(work / "run"), "--no-progress", "--threads", "1",
    ]) == 0
    bundle = work / "bundle"
    assert export.main([str(work / "run"), "--out", str(bundle), "--name", "tiny-photo"]) == 0
    from latentwire.codec.sources import load_source

    calibrate(bundle, load_source(PHOTOS, size=(48, 48), per_image=24), threads=1)
    return bundle


def test_gdn_graphs_export_with_parity_at_two_sizes(photo_bundle: Path) -> None:
    import onnx
    import torch

    from latentwire.codec.training.export import PARITY_TOLERANCE, parity
    from latentwire.codec.training.train import load_checkpoint, model_from_checkpoint

    manifest = json.loads((photo_bundle / "manifest.json").read_text())
    # export itself checked the validation crops and a second, off-grid size
    assert manifest["metrics"]["parity_max_abs_diff"] <= PARITY_TOLERANCE
    ops = {n.op_type for n in onnx.load(str(photo_bundle / "decoder.onnx")).graph.node}
    assert {"ConvTranspose", "Sqrt", "Mul"} <= ops  # inverse GDN is plain ONNX, no custom op
    model = model_from_checkpoint(load_checkpoint(photo_bundle.parent / "run"))
    assert model.stride == 16 and model.levels == 3
    for photo in _photos()[:1]:
        for h, w in ((56, 60), (37, 45)):  # on and off the stride grid
            x = photo[None, :, :h, :w].astype(np.float32) / 255.0
            with torch.no_grad():
                assert parity(model, photo_bundle, x) <= PARITY_TOLERANCE


def test_one_model_serves_every_level_from_cheap_to_near_lossless(photo_bundle: Path) -> None:
    codec = Codec.load(photo_bundle, provider="cpu", threads=1)
    manifest = codec.manifest
    assert len(manifest.latent_levels) == 3
    assert [q.latent_level for q in codec.qualities] == [0, 1, 2, 2, 2, 2]
    assert [q.max_error for q in codec.qualities] == [None, None, None, 4, 2, 0]
    # packed tables, and the residual levels' colour-wavefront coding (coding/residual_colour.py)
    entropy = json.loads((photo_bundle / "entropy.json").read_text())
    assert entropy["version"] == ENTROPY_VERSION_RESIDUAL_CODING
    assert entropy["residual_coding"]["kind"] == "colour-wavefront" and "residual_context" not in entropy
    # with classical tables (frames sent without a latent, residual_classic.py) for every max error
    rc = entropy["residual_coding"]
    assert rc["version"] == 2 and [lv["max_error"] for lv in rc["classic"]["levels"]] == [0, 2, 4]
    photos = np.stack(_photos())
    sizes, errors = [], []
    for q in codec.qualities:
        out = codec.decode(codec.encode(photos, quality=q.index))
        assert out.shape == photos.shape and out.dtype == np.uint8
        sizes.append(len(codec.encode(photos, quality=q.index)))
        errors.append(float(np.mean((out.astype(np.float64) - photos) ** 2)))
        if q.max_error is not None:
            assert int(np.abs(out.astype(np.int64) - photos).max()) <= q.max_error
    # finer gains cost more bytes, level after level; the residual levels cost more again
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
    assert errors[-1] == 0.0 and errors[3] < errors[2]
    # the gains the levels apply are the trained ones, stored in the manifest (a decoding field)
    gains = [lv.gain for lv in manifest.latent_levels]
    assert np.all(gains[0] < gains[2])


def test_context2d_round_trip_on_wavefronts() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(-2, 3, size=(3, 4, 5, 7))
    symbols = (base + np.roll(base, 1, axis=3)).astype(np.int32)  # neighbours predict each other
    symbols[0, 0, 0, 0] = 40  # an escape, far outside every table
    counts = np.bincount(np.clip(symbols, -6, 6).ravel() + 6, minlength=13)
    fac = TableSet(tuple(table_from_counts(counts + 1, -6) for _ in range(4)))
    ctx = LatentContext2D.fit(symbols, fac)
    enc = StreamEncoder()
    ctx.write(enc, symbols)
    data = enc.finish()
    assert np.array_equal(ctx.read(StreamDecoder(data), symbols.shape), symbols)
    # one call per anti-diagonal, each neighbour on the diagonal before
    diag = diagonals(5, 7)
    assert len(diag) == 11 and all(np.all(r + c == d) for d, (r, c) in enumerate(diag))
    # fitted on them, the context tables beat the factorized ones on correlated latents
    plain = StreamEncoder()
    plain.encode(symbols.ravel(), np.tile(np.repeat(np.arange(4), 35), 3), fac)
    assert len(data) < len(plain.finish())


_DECODE_ELSEWHERE = """
import sys, numpy as np
from latentwire.codec.codec import Codec
codec = Codec.load(sys.argv[1], provider="cpu", threads=int(sys.argv[2]))
packets = [open(p, "rb").read() for p in sys.argv[4:]]
np.save(sys.argv[3], np.concatenate(codec.decode_many(packets)))
"""


def test_decodes_bit_exactly_in_another_process_batch_size_and_thread_count(photo_bundle: Path, tmp_path: Path) -> None:
    sender = Codec.load(photo_bundle, provider="cpu", threads=2)
    photos = np.stack(_photos())
    for level in (0, 2):
        joint = sender.encode(photos, quality=level)
        singles = [sender.encode(photos[i : i + 1], quality=level) for i in range(len(photos))]
        here = Codec.load(photo_bundle, provider="cpu", threads=1)
        reference = here.decode(joint)
        # per-photo packets, decoded together or one by one, give the joint packet's photos
        assert np.array_equal(np.concatenate(here.decode_many(singles)), reference)
        assert np.array_equal(np.concatenate([here.decode(p) for p in singles]), reference)
        files = []
        for i, p in enumerate([joint, *singles]):
            files.append(tmp_path / f"l{level}-{i}.lw")
            files[-1].write_bytes(p)
        for threads, chosen in ((2, files[:1]), (1, files[1:])):
            out = tmp_path / f"out-{level}-{threads}.npy"
            subprocess.run([sys.executable, "-c", _DECODE_ELSEWHERE, str(photo_bundle), str(threads), str(out),
                            *map(str, chosen)], check=True, timeout=120)
            assert np.array_equal(np.load(out), reference), (level, threads)


def test_eval_measures_whole_photos_and_draws_every_level(photo_bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    from latentwire.codec import cli

    out, png = tmp_path / "eval.json", tmp_path / "levels.png"
    assert cli.main(["eval", "--bundle", str(photo_bundle), "--data", str(PHOTOS), "--out", str(out),
                     "--picture", str(png), "--picture-samples", "2", "--quality", "0", "--quality", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 3 and report["batch"] is None  # whole photos, one packet each
    first, last = report["levels"]
    assert first["bits_per_pixel"] < last["bits_per_pixel"] and first["prd_percent"] is None
    photos = ImageFolder(PHOTOS).images()
    assert first["bits_per_pixel"] == pytest.approx(
        first["bytes_per_sample"] * 8 * 3 / sum(p.shape[1] * p.shape[2] for p in photos))
    picture = Image.open(png)
    # 2 rows, original + 2 levels: each tile at least 96 pixels wide (the photos are 64-96)
    assert picture.width >= 3 * 96 and picture.height >= 2 * 64
    assert report["picture"] == str(png)


def test_a_long_run_continues_from_the_shipped_bundle_in_a_later_session(photo_bundle: Path, tmp_path: Path) -> None:
    """Checkpoints do not outlive a session's machine, the committed bundle does: --init-from BUNDLE
    recovers the network from the two graphs (folded GDN betas included), refits the density, and
    trains on with the bundle's provenance."""
    import torch

    from latentwire.codec.training import train, warmstart
    from latentwire.codec.training.models import ModelConfig, build_model
    from latentwire.codec.training.models.gdn import _BETA_MIN, _non_negative
    from latentwire.codec.training.train import load_checkpoint, model_from_checkpoint

    shipped = model_from_checkpoint(load_checkpoint(photo_bundle.parent / "run"))
    config = warmstart.bundle_config(photo_bundle)
    recovered = build_model(config)
    info = warmstart.load_bundle_weights(recovered, photo_bundle)  # checks both graphs itself
    own, ref = recovered.state_dict(), shipped.state_dict()
    for k in ref:
        if k.endswith((".beta", ".gamma")):  # clamped entries come back as an equivalent parameter
            minimum = _BETA_MIN if k.endswith(".beta") else 0.0
            assert torch.allclose(_non_negative(own[k], minimum), _non_negative(ref[k], minimum), atol=1e-6), k
        elif not k.startswith("density."):
            assert torch.allclose(own[k], ref[k], rtol=1e-5, atol=1e-6), k
    assert info["epochs"] == 3 and info["seconds"] > 0 and info["bundle"] == "tiny-photo"

    assert train.main([
        "--data", str(PHOTOS), "--source-option", "size=48,48", "--source-option", "per_image=24",
        "--val-fraction", "0.34", "--family", "gdn2d", "--layers", "8,8,8", "--code-size", "12",
        "--rate-levels", RATE_LEVELS, "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--clip-grad", "1",
        "--init-from", str(photo_bundle), "--density-warmup", "30",
        "--out", str(tmp_path / "more"), "--no-progress", "--threads", "1",
    ]) == 0
    ck = load_checkpoint(tmp_path / "more")
    assert ck["init_from"]["model_id"] and ck["init_from"]["epochs"] == 3
    # the refitted density prices the latents near what the original one did (a fresh one is far off)
    val = ck["history"][0]
    first = load_checkpoint(photo_bundle.parent / "run")["history"][-1]
    assert val["val_bytes_per_sample"] < 2.0 * first["val_bytes_per_sample"]

    other = build_model(ModelConfig.from_dict({**config.to_dict(), "code_size": 16}))
    with pytest.raises(ValueError, match="--init-from"):
        warmstart.load_bundle_weights(other, photo_bundle)


def test_a_hyperprior_model_warm_starts_from_a_factorized_bundle(photo_bundle: Path, tmp_path: Path) -> None:
    """hyper2d keeps a gdn2d bundle's analysis, synthesis and gains (issue 23: the weights already paid
    for), and the warm-up fits its fresh side networks so the rate is already below the fresh model's."""
    import torch

    from latentwire.codec.sources import load_source
    from latentwire.codec.training import train, warmstart
    from latentwire.codec.training.models import ModelConfig, build_model
    from latentwire.codec.training.train import load_checkpoint

    config = ModelConfig.from_dict({**warmstart.bundle_config(photo_bundle).to_dict(), "family": "hyper2d"})
    gdn = build_model(warmstart.bundle_config(photo_bundle))
    warmstart.load_bundle_weights(gdn, photo_bundle)
    hyper = build_model(config)
    warmstart.load_bundle_weights(hyper, photo_bundle)
    own = hyper.state_dict()
    for k, v in gdn.state_dict().items():
        if not k.startswith("density."):
            assert torch.equal(own[k], v), k
    assert any(k.startswith("hyper_synthesis.") for k in own)

    x = load_source(PHOTOS, size=(48, 48), per_image=8).model_domain()
    level = torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        fresh = float(hyper.warmup_bits(hyper.encode(torch.from_numpy(x)), level).mean())
    encoder_before = {k: v.clone() for k, v in own.items() if k.startswith("encoder.")}
    warmstart.fit_density(hyper, x, steps=150, batch_size=8, lr=1e-2, device=torch.device("cpu"), progress=False)
    with torch.no_grad():
        fitted = float(hyper.warmup_bits(hyper.encode(torch.from_numpy(x)), level).mean())
    assert fitted < 0.8 * fresh
    assert all(torch.equal(hyper.state_dict()[k], v) for k, v in encoder_before.items())  # the network stayed frozen
    assert all(p.requires_grad for p in hyper.parameters())

    assert train.main([
        "--data", str(PHOTOS), "--source-option", "size=48,48", "--source-option", "per_image=24",
        "--val-fraction", "0.34", "--family", "hyper2d", "--layers", "8,8,8", "--code-size", "12",
        "--rate-levels", RATE_LEVELS, "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--clip-grad", "1",
        "--init-from", str(photo_bundle), "--density-warmup", "30",
        "--out", str(tmp_path / "hyper"), "--no-progress", "--threads", "1",
    ]) == 0
    ck = load_checkpoint(tmp_path / "hyper")
    assert ck["config"]["family"] == "hyper2d" and ck["init_from"]["epochs"] == 3
    assert np.isfinite(ck["history"][0]["val_bytes_per_sample"])
