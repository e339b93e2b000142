"""Export to a bundle, then run it with onnxruntime only: real data, real sessions, no torch."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentwire.codec import bundle as bundle_mod  # noqa: E402
from latentwire.codec.bundle import Bundle, compute_model_id, finalize, read_manifest, write_manifest  # noqa: E402
from latentwire.codec.errors import BundleError, InputError  # noqa: E402
from latentwire.codec.normalization import psnr_db  # noqa: E402
from latentwire.codec.runtime import Decoder, Encoder  # noqa: E402
from latentwire.codec.sources import default_data_root, load_ecg_windows, load_mnist, sample_data_root  # noqa: E402
from latentwire.codec.training import export as export_mod  # noqa: E402
from latentwire.codec.training import train as train_mod  # noqa: E402
from latentwire.codec.training.export import export  # noqa: E402
from latentwire.codec.training.models import ModelConfig, build_model  # noqa: E402
from latentwire.codec.training.train import TrainOptions, load_checkpoint, train  # noqa: E402

torch.set_num_threads(1)


def _mnist_folder() -> tuple[Path, int]:
    """The full MNIST when ../shared is there (2500 training digits), else the shipped sample."""
    root = default_data_root()
    if root is not None and (root / "mnist").is_dir():
        return root / "mnist", 2500
    return sample_data_root() / "mnist", 1000


@pytest.fixture(scope="module")
def dense_bundle(tmp_path_factory) -> Path:
    """Trained and exported through the CLI entry points, as a user would."""
    work = tmp_path_factory.mktemp("dense")
    folder, n = _mnist_folder()
    rc = train_mod.main([
        "--data", str(folder), "--source-option", f"limit={n}", "--family", "dense", "--layers", "256",
        "--code-size", "24", "--epochs", str(max(4, 10_000 // n)), "--batch-size", "64", "--lr", "3e-3",
        "--rate-weight", "0.01",
        "--out", str(work / "run"), "--no-progress", "--threads", "1",
    ])
    assert rc == 0
    assert export_mod.main([str(work / "run"), "--out", str(work / "bundle"), "--name", "mnist-test"]) == 0
    return work / "bundle"


_NO_TORCH = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import numpy as np
    from latentwire.codec.bundle import Bundle
    from latentwire.codec.normalization import psnr_db
    from latentwire.codec.runtime import Decoder, Encoder
    from latentwire.codec.sources import load_mnist
    try:
        import torch
        raise SystemExit("torch is importable")
    except ImportError:
        pass
    bundle = Bundle.load(sys.argv[1])
    norm = bundle.manifest.normalization
    raw = load_mnist(sys.argv[2], split="test", limit=300).samples
    y = Encoder(bundle, provider="cpu", threads=1).encode(norm.to_model(raw))
    decoder = Decoder(bundle, provider="auto", threads=1)
    decoded = norm.to_raw(decoder.decode(np.rint(y)))
    assert decoded.shape == raw.shape and decoded.dtype == raw.dtype
    print(json.dumps({"psnr": psnr_db(raw, decoded, norm.peak), "provider": decoder.provider,
                      "symbols_per_sample": int(y[0].size)}))
    """
)


def test_end_to_end_runs_without_torch(dense_bundle: Path) -> None:
    folder, _ = _mnist_folder()
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(dense_bundle), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert result["symbols_per_sample"] == 24

    # What an untrained model of the same config and a "predict the mean digit" coder reach.
    manifest = Bundle.load(dense_bundle).manifest
    held_out = load_mnist(folder, split="test", limit=300)
    raw = held_out.samples
    x = torch.from_numpy(held_out.model_domain())
    untrained = build_model(ModelConfig.from_dict(manifest.config)).eval()
    with torch.no_grad():
        x_hat = untrained.decode(torch.round(untrained.encode(x))).numpy()
    norm = manifest.normalization
    untrained_psnr = psnr_db(raw, norm.to_raw(x_hat), norm.peak)
    mean_digit = np.broadcast_to(raw.mean(axis=0, keepdims=True), raw.shape)
    mean_psnr = psnr_db(raw, mean_digit, norm.peak)
    print(
        f"\nheld-out PSNR: trained {result['psnr']:.2f} dB, untrained {untrained_psnr:.2f} dB, "
        f"mean digit {mean_psnr:.2f} dB"
    )
    assert result["psnr"] > untrained_psnr + 3.5, (result["psnr"], untrained_psnr)
    assert result["psnr"] > mean_psnr + 1.5, (result["psnr"], mean_psnr)
    assert result["psnr"] > 13.5


def test_manifest_follows_the_contract(dense_bundle: Path) -> None:
    raw = json.loads((dense_bundle / "manifest.json").read_text())
    # canonical: what write_manifest renders (sorted keys, indented, number lists on one line)
    assert (dense_bundle / "manifest.json").read_text() == write_manifest(dense_bundle.parent, raw).read_text()
    assert list(raw) == sorted(raw)
    assert raw["format_version"] == 1 and raw["family"] == "dense" and raw["name"] == "mnist-test"
    assert raw["input"]["sample_shape"] == [1, 28, 28] and raw["input"]["dtype"] == "float32"
    assert raw["input"]["normalization"]["scale"] == 255.0
    lat = raw["latent"]
    assert lat["shape"] == [24] and lat["stride"] == 1 and lat["channels"] == 24 and lat["channel_axis"] == 0
    assert len(lat["pmf"]["offsets"]) == 24 and len(lat["pmf"]["probs"]) == 24
    for p in lat["pmf"]["probs"]:
        assert abs(sum(p) - 1.0) < 1e-9 and min(p) >= 0.0
    assert raw["quality_levels"][0] == {"name": "q0", "max_error": None}
    assert raw["metrics"]["parity_max_abs_diff"] <= 1e-4 and raw["metrics"]["val_psnr_db"] > 10
    assert raw["training"]["data"]["n_train"] > 0 and raw["training"]["epochs"] >= 1
    assert (
        raw["training"]["command"].startswith("latentwire train --data")
        and "--rate-weight 0.01" in raw["training"]["command"]
    )
    assert sorted(p.name for p in dense_bundle.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    assert raw["model_id"] == compute_model_id(dense_bundle)
    ckpt = load_checkpoint(dense_bundle.parent / "run")
    assert ckpt["config"] == raw["config"]


def test_conv2d_bundle_takes_any_image_size(tmp_path: Path) -> None:
    data = load_mnist(sample_data_root() / "mnist", limit=400)
    tr, va = data.split(0.25, seed=0)
    config = ModelConfig("conv2d", [1, None, None], 8, [8, 16], kernel_size=3)
    result = train(config, tr, va, TrainOptions(epochs=1, batch_size=50, progress=False, threads=1))
    out = export(result, tmp_path / "conv2d")
    bundle = Bundle.load(out)
    assert bundle.manifest.latent_shape == (8, None, None) and bundle.manifest.latent_stride == 4
    enc, dec = Encoder(bundle, threads=1), Decoder(bundle, threads=1)
    rng = np.random.default_rng(0)
    for h, w in [(28, 28), (37, 53)]:
        x = rng.random((2, 1, h, w), dtype=np.float32)
        y = enc.encode(x)
        assert y.shape == (2, 8, math.ceil(h / 4), math.ceil(w / 4))
        x_hat = dec.decode(np.rint(y).astype(np.int32), out_size=(h, w))
        assert x_hat.shape == x.shape and x_hat.dtype == np.float32
        with torch.no_grad():
            ref = result.model.decode(torch.round(result.model.encode(torch.from_numpy(x))), (h, w)).numpy()
        assert np.max(np.abs(ref - x_hat)) <= 1e-4
    with pytest.raises(InputError, match="out_size"):
        dec.decode(np.rint(enc.encode(rng.random((1, 1, 28, 28), dtype=np.float32))))
    with pytest.raises(InputError, match="ceil"):
        dec.decode(np.zeros((1, 8, 7, 7), np.float32), out_size=(40, 28))


def test_conv1d_on_mitbih_windows_exports_with_parity(tmp_path: Path) -> None:
    ecg = load_ecg_windows(sample_data_root() / "mitdb", window=1024, limit_per_record=12)
    tr, va = ecg.split(0.25, seed=0)
    config = ModelConfig("conv1d", [2, None], 8, [16, 16, 16], kernel_size=5, blocks=1)
    result = train(
        config, tr, va, TrainOptions(epochs=2, batch_size=16, lr=3e-3, rate_weight=0.01, progress=False, threads=1)
    )
    out = export(result, tmp_path / "ecg")
    manifest = Bundle.load(out).manifest
    assert manifest.raw["metrics"]["parity_max_abs_diff"] <= 1e-4
    assert manifest.normalization.offset == 1024.0 and manifest.latent_stride == 8
    x = va.model_domain()[:3, :, :700]  # a length the export never saw
    y = Encoder(out, threads=1).encode(np.ascontiguousarray(x))
    assert y.shape == (3, 8, math.ceil(700 / 8))
    x_hat = Decoder(out, threads=1).decode(np.rint(y), out_size=(700,))
    with torch.no_grad():
        ref = result.model.decode(torch.round(result.model.encode(torch.from_numpy(x))), (700,)).numpy()
    assert x_hat.shape == x.shape and np.max(np.abs(ref - x_hat)) <= 1e-4


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_inputs_raise_helpful_errors(dense_bundle: Path) -> None:
    enc, dec = Encoder(dense_bundle, threads=1), Decoder(dense_bundle, threads=1)
    good = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(InputError, match=r"\(N, 1, 28, 28\).*axis 3 is 27"):
        enc.encode(np.zeros((2, 1, 28, 27), np.float32))
    with pytest.raises(InputError, match=r"batch axis"):
        enc.encode(np.zeros((1, 28, 28), np.float32))
    with pytest.raises(InputError, match=r"float32.*uint8.*Normalization"):
        enc.encode(good.astype(np.uint8))
    bad = good.copy()
    bad[1, 0, 3, 4] = np.nan
    bad[1, 0, 5, 6] = np.inf
    with pytest.raises(InputError, match=r"2 NaN/Inf.*\(1, 0, 3, 4\)"):
        enc.encode(bad)
    with pytest.raises(InputError, match=r"\(N, 24\)"):
        dec.decode(np.zeros((2, 23), np.float32))
    with pytest.raises(InputError, match="float64"):
        dec.decode(np.zeros((2, 24), np.float64))
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(InputError, match="onnxruntime-gpu"):
            Encoder(dense_bundle, provider="cuda")


def test_damaged_bundles_are_refused(dense_bundle: Path, tmp_path: Path) -> None:
    missing = _copy(dense_bundle, tmp_path / "missing")
    (missing / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"decoder\.onnx is missing"):
        Bundle.load(missing)
    with pytest.raises(BundleError, match=r"decoder\.onnx is missing"):
        Decoder(missing)

    tampered = _copy(dense_bundle, tmp_path / "tampered")
    raw = read_manifest(tampered)
    raw["input"]["normalization"]["scale"] = 128.0  # changes how every sample decodes
    write_manifest(tampered, raw)
    with pytest.raises(BundleError, match=r"manifest\.json: model_id .* does not match"):
        Bundle.load(tampered)
    assert Bundle.load(tampered, verify=False).manifest.normalization.scale == 128.0
    finalize(tampered)  # an intended edit is re-signed
    assert Bundle.load(tampered).model_id != Bundle.load(dense_bundle).model_id

    modified = _copy(dense_bundle, tmp_path / "modified")
    with open(modified / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"encoder\.onnx does not match its hash"):
        Bundle.load(modified)

    future = _copy(dense_bundle, tmp_path / "future")
    raw = read_manifest(future)
    raw["format_version"] = 2
    write_manifest(future, raw)
    with pytest.raises(BundleError, match="format_version 2 is not supported"):
        Bundle.load(future)

    garbled = _copy(dense_bundle, tmp_path / "garbled")
    (garbled / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        Bundle.load(garbled)

    with pytest.raises(BundleError, match="not a directory"):
        Bundle.load(tmp_path / "nowhere")


def test_entropy_file_is_part_of_the_model_id(dense_bundle: Path, tmp_path: Path) -> None:
    calibrated = _copy(dense_bundle, tmp_path / "calibrated")
    before = Bundle.load(calibrated).model_id
    (calibrated / bundle_mod.ENTROPY).write_text('{"tables": []}')
    new_id = finalize(calibrated)
    loaded = Bundle.load(calibrated)
    assert new_id != before and loaded.model_id == new_id
    assert loaded.manifest.raw["entropy"]["file"] == "entropy.json"
    (calibrated / bundle_mod.ENTROPY).write_text('{"tables": [1]}')
    with pytest.raises(BundleError, match=r"entropy\.json"):
        Bundle.load(calibrated)


def test_runtime_modules_do_not_import_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import latentwire.codec.runtime, latentwire.codec.bundle\n"
        "assert 'torch' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_export_cli_calibrates_when_asked(dense_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("latentwire.codec.calibrate")
    out = tmp_path / "calibrated"
    rc = export_mod.main([str(dense_bundle.parent / "run"), "--out", str(out),
                          "--calibrate-data", str(sample_data_root() / "mnist")])
    assert rc == 0
    bundle = Bundle.load(out)
    assert (out / "entropy.json").is_file() and bundle.manifest.raw["entropy"]["file"] == "entropy.json"
    assert len(bundle.manifest.quality_levels) >= 1 and bundle.manifest.quality_levels[0].max_error is None
    # Same weights, but the tables are part of the model id.
    assert bundle.model_id != Bundle.load(dense_bundle).model_id
    assert (out / "decoder.onnx").read_bytes() == (dense_bundle / "decoder.onnx").read_bytes()


def test_manifest_keeps_number_lists_on_one_line_and_round_trips(tmp_path: Path) -> None:
    """People read manifests, subscribers download them: lists of plain numbers (gains, pmfs) take
    one line instead of one line per number, and nothing else about the JSON changes."""
    manifest = {"latent": {"levels": [{"gain": [0.5, -1.25e-07, 3], "pmf": {"offsets": [-20, 13]}}],
                           "shape": [192, None, None]},
                "name": "x [1, 2]", "nested": [[1, 2], [3.5]], "anomaly": {"quantiles": {"0.9": 1.5}},
                "stages": [{"command": "latentwire train", "seconds": 1.0}]}
    text = write_manifest(tmp_path, manifest).read_text()
    assert json.loads(text) == manifest
    assert '"gain": [0.5, -1.25e-07, 3],' in text and '"shape": [192, null, null]' in text
    assert '"offsets": [-20, 13]' in text and "[1, 2]" in text and '"name": "x [1, 2]"' in text
    assert '"command": "latentwire train"' in text  # lists of objects stay indented
