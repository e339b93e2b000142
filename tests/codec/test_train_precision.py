"""Training options --precision bf16 and --channels-last (issue 23): recorded, resumed, exported as float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from latentwire.codec.bundle import Bundle, read_manifest  # noqa: E402
from latentwire.codec.runtime import Decoder, Encoder  # noqa: E402
from latentwire.codec.sources import load_mnist, sample_data_root  # noqa: E402
from latentwire.codec.training import precision  # noqa: E402
from latentwire.codec.training.export import export  # noqa: E402
from latentwire.codec.training.models import ModelConfig, build_model  # noqa: E402
from latentwire.codec.training.train import TrainOptions, load_checkpoint, model_from_checkpoint, train  # noqa: E402

torch.set_num_threads(1)

needs_bf16 = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch build has no oneDNN CPU backend, which bf16 autocast needs")


def _data():
    data = load_mnist(sample_data_root() / "mnist", limit=160)
    return data.split(0.25, seed=0)


def _graph(path: Path) -> tuple[list[str], set[int]]:
    """(op types in order, element types of every initializer, input and output)"""
    g = onnx.load(str(path)).graph
    types = {t.data_type for t in g.initializer}
    types |= {v.type.tensor_type.elem_type for v in [*g.input, *g.output]}
    return [n.op_type for n in g.node], types


@needs_bf16
@pytest.mark.parametrize("family", ["conv2d", "gdn2d"])
def test_bf16_channels_last_trains_records_resumes_and_exports_float32(tmp_path: Path, family: str) -> None:
    tr, va = _data()
    config = ModelConfig(family, [1, None, None], 8, [8, 8], kernel_size=3)
    fast = train(config, tr, va, TrainOptions(epochs=1, batch_size=40, progress=False, threads=1,
                                              out=str(tmp_path / "fast"), precision="bf16", channels_last=True,
                                              command="pytest bf16"))
    ckpt = load_checkpoint(tmp_path / "fast")
    assert ckpt["options"]["precision"] == "bf16" and ckpt["options"]["channels_last"] is True
    assert fast.training_summary()["precision"] == "bf16" and fast.training_summary()["channels_last"] is True
    assert np.isfinite(fast.val_psnr_db) and fast.history[0]["train_steps"] == 3

    # a resume that names neither option keeps the checkpoint's; one that names them switches
    resumed = train(config, tr, va, TrainOptions(epochs=2, batch_size=40, progress=False, threads=1,
                                                 out=str(tmp_path / "fast"), resume=True))
    assert resumed.precision == precision.Precision("bf16", True)
    assert load_checkpoint(tmp_path / "fast")["options"]["precision"] == "bf16"

    # export from the checkpoint: float32 graphs, the same ops as an fp32-trained model's, torch parity
    bundle_dir = export(tmp_path / "fast", tmp_path / "bundle-fast", command="pytest export")
    training = read_manifest(bundle_dir)["training"]
    assert training["precision"] == "bf16" and training["channels_last"] is True
    plain = train(config, tr, va, TrainOptions(epochs=1, batch_size=40, progress=False, threads=1,
                                               precision="fp32", channels_last=False))
    assert plain.precision == precision.Precision("fp32", False)
    plain_dir = export(plain, tmp_path / "bundle-plain")
    for name in ("encoder.onnx", "decoder.onnx"):
        ops, types = _graph(bundle_dir / name)
        assert (ops, types) == _graph(plain_dir / name), name
        assert onnx.TensorProto.FLOAT in types and not types & {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
    model = model_from_checkpoint(load_checkpoint(tmp_path / "fast"))
    assert model.compute_dtype is None
    bundle = Bundle.load(bundle_dir)
    x = va.model_domain()[:4]
    y = Encoder(bundle, threads=1).encode(x)
    x_hat = Decoder(bundle, threads=1).decode(np.rint(y), out_size=(28, 28))
    with torch.no_grad():
        y_ref = model.encode(torch.from_numpy(x))
        x_ref = model.decode(torch.round(y_ref), (28, 28))
    assert y_ref.dtype == torch.float32
    assert np.max(np.abs(y - y_ref.numpy())) <= 1e-4 and np.max(np.abs(x_hat - x_ref.numpy())) <= 1e-4


@needs_bf16
def test_bf16_runs_the_transforms_only_and_hands_float32_on() -> None:
    model = build_model(ModelConfig("gdn2d", [3, None, None], 8, [8], kernel_size=3))
    precision.apply(model, precision.Precision("bf16", True), torch.device("cpu"))
    x = torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    out = model(x, quantize="mixed")
    assert out.y.dtype == out.x_hat.dtype == out.bits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the optimizer's state follows them
    ref = build_model(ModelConfig("gdn2d", [3, None, None], 8, [8], kernel_size=3)).eval()
    with torch.no_grad():
        diff = (model.eval().encode(x) - ref.encode(x)).abs().max()
    assert 0 < float(diff) < 0.1  # bf16 arithmetic really ran, within bf16's rounding


def test_channels_last_is_refused_for_1d_families_and_bad_precisions() -> None:
    model = build_model(ModelConfig("conv1d", [2, None], 4, [8]))
    with pytest.raises(ValueError, match="2-D convolutional"):
        precision.apply(model, precision.Precision("fp32", True), torch.device("cpu"))
    with pytest.raises(ValueError, match="not one of"):
        precision.resolve("fp16", None)
    assert precision.resolve(None, None, {"precision": "bf16"}) == precision.Precision("bf16", False)
    assert precision.resolve("fp32", None, {"precision": "bf16", "channels_last": True}) == precision.Precision(
        "fp32", True)
    # a checkpoint from before these options trained fp32, whatever the family's default is now
    assert precision.resolve(None, None, {}, "gdn2d") == precision.FP32
    assert precision.resolve(None, None, None, "dense") == precision.FP32
    cpu = torch.device("cpu")
    fast = precision.resolve(None, None, None, "gdn2d", cpu)  # the photo family's measured default
    assert fast == (precision.Precision("bf16", True) if precision.native_bf16(cpu) else precision.Precision(
        "fp32", True))
    assert precision.resolve("fp32", False, None, "gdn2d", cpu) == precision.FP32  # the command wins
