"""The bundles shipped in codec/assets: intact, reproducibly described, and honest on real data.

A shipped bundle is a promise to every receiver that loads it by model id, so these tests load
each one exactly as users do (verified hashes), round-trip real samples the bundle never trained
on through `Codec` at every quality level, and hold it to its manifest: the max-error bound of
each level, and a ladder that really buys fidelity with bytes.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.bundle import Bundle, compute_model_id, read_manifest
from latentwire.codec.codec import Codec
from latentwire.codec.normalization import psnr_db
from latentwire.codec.sources import list_images, read_image, sample_data_root

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
# what a package download may carry per bundle: the ECG bundle is held to ~3 MB; the photo bundle
# (a 128-channel GDN network: 2 x 6 MB of float32 weights, and 2.8 MB of packed tables: eight rate
# levels of 2-D context tables, 192 channels x 81 contexts each) and the dense MNIST bundle only to a ceiling.
# The hyperprior photo bundle carries h_a in its encoder and h_s as integers (4 MB); it fits the photo
# ceiling because its encoder stores its weights in float16 (5.1 MB instead of 10.2; half_encoder.py)
MAX_BUNDLE_BYTES = {"ecg-conv1d": 3_000_000, "bsds-gdn2d": 20_000_000, "bsds-hyper2d": 20_000_000,
                    "mnist-dense": 10_000_000}


def _ecg_samples() -> list[np.ndarray]:
    """One window from each held-out MIT-BIH record (117-124), shipped next to the bundle."""
    with np.load(ASSETS / "ecg_heldout_sample.npz") as z:
        return [z["samples"]]


def _bsds_samples() -> list[np.ndarray]:
    """BSDS500 TEST photos (never trained on), one batch per photo since sizes differ; plus an
    odd-sized cut that is off the stride grid, so the pad/crop path is exercised."""
    images = [read_image(p) for p in list_images(sample_data_root() / "bsds")]
    return [img[None] for img in images] + [images[0][None, :, :61, :93]]


def _mnist_samples() -> list[np.ndarray]:
    with np.load(ASSETS / "mnist_test_sample.npz") as z:
        return [z["samples"][:64]]


# asset folder -> (family, loader of real samples the bundle never trained on)
SHIPPED = {
    "ecg-conv1d": ("conv1d", _ecg_samples),
    "bsds-gdn2d": ("gdn2d", _bsds_samples),
    "bsds-hyper2d": ("hyper2d", _bsds_samples),
    "mnist-dense": ("dense", _mnist_samples),
}


def _present(name: str) -> bool:
    return (ASSETS / name / "manifest.json").is_file()


@pytest.fixture(params=sorted(SHIPPED), scope="module")
def shipped(request: pytest.FixtureRequest) -> tuple[str, Codec]:
    name = request.param
    if not _present(name):  # a bundle the package promises must never go missing quietly
        pytest.fail(f"codec/assets/{name} is missing: run `python -m benchmarks.train_bundles ship`")
    return name, Codec.load(ASSETS / name, provider="cpu", threads=1)


def test_bundle_is_intact_and_identified(shipped: tuple[str, Codec]) -> None:
    name, codec = shipped
    path = ASSETS / name
    bundle = Bundle.load(path, verify=True)
    manifest = read_manifest(path)
    assert manifest["model_id"] == compute_model_id(path) == bundle.model_id == codec.model_id
    assert len(bundle.model_id) == 64 and int(bundle.model_id, 16) >= 0
    assert manifest["family"] == SHIPPED[name][0]
    assert manifest["name"] and manifest["entropy"]["file"] == "entropy.json"
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    assert size <= MAX_BUNDLE_BYTES[name], f"{name} is {size} bytes"
    ladder = manifest["quality_levels"]
    # transform-residual levels (ECG, issue 14) form a second ladder after the first: coarse to fine
    steps = [q["transform_step"] for q in ladder if q.get("transform_step") is not None]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == len(steps), f"transform steps {steps}"
    assert all(q.get("transform_step") is not None for q in ladder[len(ladder) - len(steps):])
    levels = [q["max_error"] for q in ladder[: len(ladder) - len(steps)]]
    assert levels[0] is None and len(levels) >= 3
    bounds = [e for e in levels if e is not None]  # latent-only levels (coarser latent steps) come first
    assert levels[: len(levels) - len(bounds)] == [None] * (len(levels) - len(bounds))
    assert bounds == sorted(bounds, reverse=True) and bounds[-1] == 0, f"ladder {levels} must tighten to lossless"


def test_training_block_records_how_it_was_made(shipped: tuple[str, Codec]) -> None:
    name, _ = shipped
    training = read_manifest(ASSETS / name)["training"]
    assert training["command"].startswith("latentwire train ")
    assert f"--family {SHIPPED[name][0]}" in training["command"]
    assert training["seconds"] > 0 and training["epochs"] >= 1
    data = training["data"]
    assert data["n_train"] > 0 and data["n_val"] > 0
    if name == "ecg-conv1d":
        seen = set(data["train_records"]) | set(data["val_records"])
        assert not seen & set(data["heldout_records"])
        assert set(data["heldout_records"]) == {117, 118, 119, 121, 122, 123, 124}
        assert "records=" + ",".join(str(r) for r in sorted(seen)) in training["command"]
    if name == "bsds-gdn2d":
        assert data["subdirs"] == ["train", "val"]  # test/ stays unseen
        assert "subdirs=train,val" in training["command"]
    if name == "bsds-hyper2d":  # bsds500/test stays unseen in every stage
        assert data["subdirs"] == ["bsds500/train", "bsds500/val", "photos-train/urban100"]
        assert all("test" not in st["command"] for st in training["stages"])
    # a warm-started bundle lists every stage behind it, each named by the run folder its command wrote
    stages = training.get("stages", [])
    for st in stages:
        assert st["command"].startswith("latentwire train ") and st["seconds"] > 0 and st["epochs"] >= 1
        assert f"--out {st['run']}" in st["command"], f"stage {st['run']} is not the run its command wrote"
    if stages:
        assert stages[-1]["command"] == training["command"]
        assert training["seconds_total"] == pytest.approx(sum(st["seconds"] for st in stages), abs=0.05)


def test_round_trip_every_level_on_unseen_samples(shipped: tuple[str, Codec]) -> None:
    name, codec = shipped
    batches = SHIPPED[name][1]()
    peak = codec.normalization.peak
    sizes, psnrs = [], []
    for q in codec.qualities:
        total, se, n = 0, 0.0, 0
        for raw in batches:
            packet = codec.encode(raw, quality=q.index)
            assert codec.header(packet).count == raw.shape[0]
            out = codec.decode(packet)
            assert out.shape == raw.shape and out.dtype == raw.dtype
            err = out.astype(np.int64) - raw.astype(np.int64)
            if q.max_error is not None:
                assert int(np.abs(err).max()) <= q.max_error, f"{name} {q.name}: bound {q.max_error} broken"
            if q.max_error == 0:
                assert np.array_equal(out, raw)
            total += len(packet)
            se += float((err.astype(np.float64) ** 2).sum())
            n += err.size
        sizes.append(total)
        psnrs.append(float("inf") if se == 0 else 10 * np.log10(peak**2 / (se / n)))
    # each ladder (max errors; then transform steps, where calibrated) buys fidelity with bytes:
    # never fewer bytes, never lower PSNR, one level to the next
    first = next((q.index for q in codec.qualities if q.transform_step is not None), len(sizes))
    for part in (slice(0, first), slice(first, len(sizes))):
        sz, ps = sizes[part], psnrs[part]
        assert all(b >= a for a, b in pairwise(sz)), f"{name} bytes per level {sizes}"
        assert all(b >= a - 1e-6 for a, b in pairwise(ps)), f"{name} PSNR per level {psnrs}"
    assert sizes[first - 1] > sizes[0] and psnrs[first - 1] == float("inf")  # the first ladder ends lossless
    raw_bytes = sum(r.nbytes for r in batches)
    assert sizes[0] < raw_bytes / 4, f"{name}: latent-only packets {sizes[0]} B vs {raw_bytes} B raw"


def test_ecg_bundle_reaches_diagnostic_fidelity_cheaply() -> None:
    """On held-out records, some level stays under PRD 2.7 % (the literature's diagnostic-quality
    bar) while compressing 11-bit samples well beyond lossless coding (CR ~2)."""
    if not _present("ecg-conv1d"):
        pytest.fail("codec/assets/ecg-conv1d is missing")
    codec = Codec.load(ASSETS / "ecg-conv1d", provider="cpu", threads=1)
    (raw,) = _ecg_samples()
    x = raw.astype(np.float64)
    denom = float(((x - 1024.0) ** 2).sum())
    best_cr = 0.0
    # max errors below 8 cost more bytes than max error 8 (the ladder is monotone, tested above), so
    # they cannot raise the best CR; each takes ~2 s of one-window packets (three series walks apiece)
    for q in [q for q in codec.qualities if q.max_error is None or q.max_error >= 8]:
        packets = codec.encode_frames(raw, quality=q.index)  # one packet per window, as streamed
        out = np.concatenate([codec.decode(p) for p in packets])
        prd = 100 * np.sqrt(float(((x - out) ** 2).sum()) / denom)
        cr = raw.size * 11 / (8 * sum(len(p) for p in packets))
        if prd <= 2.7:
            best_cr = max(best_cr, cr)
    # a regression floor (measured on these windows, one packet each: q7 (max_error 8) PRD 2.48 %
    # CR 10.3; q6 is just above the bar at 2.73 %), not the CR 32 target: see BENCHMARKS.md
    assert best_cr >= 9.0, f"best CR at PRD <= 2.7 % is {best_cr:.1f}"


def test_bsds_bundle_codes_any_photo_size() -> None:
    if not _present("bsds-gdn2d"):
        pytest.fail("codec/assets/bsds-gdn2d is missing")
    codec = Codec.load(ASSETS / "bsds-gdn2d", provider="cpu", threads=1)
    img = read_image(list_images(sample_data_root() / "bsds")[2])[None]  # portrait 64x96
    for h, w in ((img.shape[2], img.shape[3]), (33, 47), (17, 64)):
        raw = np.ascontiguousarray(img[:, :, :h, :w])
        out = codec.decode(codec.encode(raw, quality=0))
        assert out.shape == raw.shape
        assert psnr_db(raw, out, 255.0) > 18.0
