"""`latentwire export`: a trained model -> a codec bundle (two ONNX graphs + manifest.json).

The encoder and decoder are separate graphs because senders and receivers each need only one.
Export is only trusted after a parity check: onnxruntime must reproduce torch's latents and
reconstructions on real validation samples (and, for conv families, at a second size that
exercises the pad/crop path), otherwise the export fails loudly with the measured difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from .. import bundle as bundle_mod
from ..errors import ExportError
from ..normalization import Normalization
from . import export_hyper, precision
from .models import Autoencoder, ModelConfig
from .models.hyper import HyperGdn2dAutoencoder
from .options import PARITY_TOLERANCE, add_export_parser
from .train import TrainResult, load_checkpoint, model_from_checkpoint

PMF_TAIL_MASS = 1e-9


class _EncoderGraph(torch.nn.Module):
    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)


class _HyperEncoderGraph(torch.nn.Module):
    """A hyperprior model's sender side in one graph: the latent y and the side latent z = h_a(y)
    (a sender always needs both; one onnxruntime call instead of two)."""

    def __init__(self, model: HyperGdn2dAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.model.encode(x)
        return y, self.model.hyper_analysis(y)


class _DecoderGraph(torch.nn.Module):
    """Decoder up to the padded size; the crop to out_size is appended as an ONNX Slice."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.model.decode_padded(y_hat)


def _export_graph(module: torch.nn.Module, example: torch.Tensor, in_name: str, out_name: str | list[str],
                  dynamic: dict[int, Any], path: Path) -> None:
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" and similar chatter
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    out_names = [out_name] if isinstance(out_name, str) else out_name
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), input_names=[in_name], output_names=out_names,
            dynamic_shapes={"x" if in_name == "x" else "y_hat": dynamic}, dynamo=True,
            external_data=False, verbose=False,
        )
    quiet.setLevel(level)
    assert program is not None
    program.save(str(path), external_data=False)
    # Weights must live inside the .onnx (a bundle is hashed file by file): re-embed if needed.
    model = onnx.load(str(path), load_external_data=True)
    side = [p for p in path.parent.glob(path.name + "*.data")]
    onnx.save(model, str(path), save_as_external_data=False)
    for p in side:
        p.unlink()


def _append_crop(path: Path, spatial_dims: int) -> None:
    """Add input out_size: int64 (k,) and crop the decoder output's trailing k axes to it."""
    model = onnx.load(str(path))
    g = model.graph
    (out,) = g.output
    padded = out.name + "_padded"
    for node in g.node:
        node.output[:] = [padded if o == out.name else o for o in node.output]
    axes = list(range(2, 2 + spatial_dims))
    g.initializer.extend([
        helper.make_tensor("crop_starts", TensorProto.INT64, [spatial_dims], [0] * spatial_dims),
        helper.make_tensor("crop_axes", TensorProto.INT64, [spatial_dims], axes),
    ])
    g.input.append(helper.make_tensor_value_info("out_size", TensorProto.INT64, [spatial_dims]))
    g.node.append(
        helper.make_node("Slice", [padded, "crop_starts", "out_size", "crop_axes"], [out.name], name="crop_to_out_size")
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path), save_as_external_data=False)


def _dynamic_spec(model: Autoencoder, latent: bool) -> dict[int, Any]:
    dim = torch.export.Dim
    spec: dict[int, Any] = {0: dim("batch", min=1, max=1 << 20)}
    for i in range(model.spatial_dims):
        spec[2 + i] = dim(f"{'l' if latent else 's'}{i}", min=1, max=1 << 20)
    return spec


def _sessions(out_dir: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    return (ort.InferenceSession(str(out_dir / bundle_mod.ENCODER), opts, providers=cpu),
            ort.InferenceSession(str(out_dir / bundle_mod.DECODER), opts, providers=cpu))


@torch.no_grad()
def parity(model: Autoencoder, out_dir: Path, x: np.ndarray) -> float:
    """Max |torch - onnxruntime| over y and x_hat on batch x (decoder fed torch's rounded y)."""
    enc, dec = _sessions(out_dir)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y = model.encode(xt)
    y_hat = torch.round(y)
    size = tuple(x.shape[2:]) if model.spatial_dims else None
    x_hat = model.decode(y_hat, size)
    outs = enc.run(["y", "z"] if isinstance(model, HyperGdn2dAutoencoder) else ["y"], {"x": xt.numpy()})
    y_ort = outs[0]
    z_diff = 0.0
    if isinstance(model, HyperGdn2dAutoencoder):
        z_diff = float(np.max(np.abs(outs[1] - model.hyper_analysis(y).numpy())))
    feeds = {"y_hat": y_hat.numpy()}
    if size is not None:
        feeds["out_size"] = np.asarray(size, dtype=np.int64)
    x_ort = dec.run(["x_hat"], feeds)[0]
    if y_ort.shape != tuple(y.shape) or x_ort.shape != tuple(x_hat.shape):
        raise ExportError(f"onnxruntime shapes y {y_ort.shape}, x_hat {x_ort.shape} differ from torch's "
                          f"{tuple(y.shape)}, {tuple(x_hat.shape)} for input {x.shape}")
    return max(float(np.max(np.abs(y_ort - y.numpy()))), float(np.max(np.abs(x_ort - x_hat.numpy()))), z_diff)


def _second_size(x: np.ndarray) -> np.ndarray:
    """The batch edge-padded by 3 along every spatial axis: an odd size, off the stride grid."""
    pad = [(0, 0), (0, 0)] + [(0, 3)] * (x.ndim - 2)
    return np.pad(x, pad, mode="edge")


def _pmf(model: Autoencoder, gains: np.ndarray | None = None) -> dict[str, Any]:
    offsets, probs = model.density.pmf_tables(tail_mass=PMF_TAIL_MASS, gains=gains)
    return {"offsets": [int(o) for o in offsets], "probs": [[float(v) for v in p] for p in probs]}


def _levels(model: Autoencoder) -> list[dict[str, Any]]:
    """manifest latent.levels of a variable-rate model: per level the gains the codec applies and
    the density integrated over that level's bins (float64, so calibration needs no torch)."""
    gains, inverse = model.level_tables()
    return [
        {"gain": [float(v) for v in g], "inverse_gain": [float(v) for v in ig], "pmf": _pmf(model, g),
         "rate_weight": w}
        for g, ig, w in zip(gains, inverse, model.config.rate_levels, strict=True)
    ]


def _latent_tables(model: Autoencoder, out: Path, x: np.ndarray) -> dict[str, Any]:
    """manifest latent.pmf and .levels; a hyperprior model instead gets latent.hyper (z's pmf and the
    exact hyper-synthesis it writes to hyper.npz) and gain-only levels: its latent's tables are
    Gaussians chosen per element (coding/gaussian.py), not one pmf per channel."""
    if not isinstance(model, HyperGdn2dAutoencoder):
        return {"pmf": _pmf(model), **({"levels": _levels(model)} if model.levels else {})}
    gains, inverse = model.level_tables()
    levels = [{"gain": [float(v) for v in g], "inverse_gain": [float(v) for v in ig], "rate_weight": w}
              for g, ig, w in zip(gains, inverse, model.config.rate_levels, strict=True)]
    return {"levels": levels, "hyper": export_hyper.write_hyper(model, out, x, _pmf(model))}


def export(
    checkpoint_or_model: str | Path | Autoencoder | TrainResult,
    out_dir: str | Path,
    sample_batch: np.ndarray | None = None,
    *,
    normalization: Normalization | None = None,
    name: str | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    command: str | None = None,
) -> Path:
    """Write a finalized bundle to out_dir and return its path.

    checkpoint_or_model: a checkpoint file/dir (everything else is read from it), a TrainResult,
    or a bare Autoencoder (then normalization and sample_batch are required). sample_batch is
    model-domain float32 (N, *sample_shape) validation data for the parity check. The export's own
    command (``command``, default the CLI's argv) and seconds go into manifest training.export: every stage that made a
    bundle is recorded in it.
    """
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if isinstance(checkpoint_or_model, Autoencoder):
        model = checkpoint_or_model
    elif isinstance(checkpoint_or_model, TrainResult):
        r = checkpoint_or_model
        model = r.model
        normalization = normalization or r.normalization
        sample_batch = r.val_batch if sample_batch is None else sample_batch
        info = {"training": r.training_summary(), "metrics": r.metrics(), "data": r.data}
    else:
        ckpt = load_checkpoint(checkpoint_or_model)
        model = model_from_checkpoint(ckpt)
        normalization = normalization or Normalization.from_dict(ckpt["normalization"])
        sample_batch = ckpt.get("val_batch") if sample_batch is None else sample_batch
        best = ckpt.get("best_metrics", {})
        info = {
            "training": {
                "command": ckpt.get("command", ""), "seconds": round(float(ckpt.get("seconds", 0.0)), 2),
                "device": ckpt.get("device", "cpu"), "data": ckpt.get("data", {}), "epochs": int(ckpt["epoch"]) + 1,
                "rate_weight": ckpt.get("options", {}).get("rate_weight"),
                **precision.resolve(None, None, ckpt.get("options", {})).summary(),
            },
            "metrics": {"val_psnr_db": best.get("val_psnr_db"),
                        "val_bytes_per_sample_estimate": best.get("val_bytes_per_sample")},
            "data": ckpt.get("data", {}),
        }
    if normalization is None:
        raise ExportError("exporting a bare model needs its normalization (the manifest records it)")
    if sample_batch is None or len(sample_batch) == 0:
        raise ExportError("export needs a validation sample batch (model domain) for the parity check")
    model = model.to("cpu", torch.float32).eval()
    # however it trained (training/precision.py), the graphs are float32 and contiguous: the runtime never sees bf16
    model.compute_dtype = None
    if model.spatial_dims == 2:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # stubs omit it
    config: ModelConfig = model.config
    x = np.ascontiguousarray(sample_batch, dtype=np.float32)
    if x.shape[0] < 2:  # a batch of 1 would let the exporter fix the batch axis
        x = np.concatenate([x, x])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (bundle_mod.ENTROPY, bundle_mod.MANIFEST, bundle_mod.HYPER):
        (out / stale).unlink(missing_ok=True)

    xt = torch.from_numpy(x)
    with torch.no_grad():
        y_example = torch.round(model.encode(xt))
    if isinstance(model, HyperGdn2dAutoencoder):
        _export_graph(_HyperEncoderGraph(model), xt, "x", ["y", "z"], _dynamic_spec(model, latent=False),
                      out / bundle_mod.ENCODER)
    else:
        _export_graph(_EncoderGraph(model), xt, "x", "y", _dynamic_spec(model, latent=False), out / bundle_mod.ENCODER)
    _export_graph(
        _DecoderGraph(model), y_example, "y_hat", "x_hat", _dynamic_spec(model, latent=True), out / bundle_mod.DECODER
    )
    if model.spatial_dims:
        _append_crop(out / bundle_mod.DECODER, model.spatial_dims)

    diff = parity(model, out, x)
    if model.spatial_dims:
        diff = max(diff, parity(model, out, _second_size(x)))
    if not diff <= tolerance:
        raise ExportError(
            f"ONNX parity check failed: max |torch - onnxruntime| = {diff:.3g} > {tolerance:g} on "
            f"{x.shape[0]} validation samples; the bundle in {out} must not be used"
        )
    data = info.get("data", {})
    default_name = f"{data.get('dataset') or data.get('source') or 'model'}-{config.family}-{config.code_size}"
    manifest: dict[str, Any] = {
        "format_version": bundle_mod.FORMAT_VERSION,
        "model_id": "",
        "name": name or default_name,
        "family": config.family,
        "config": config.to_dict(),
        "input": {
            "sample_shape": list(config.sample_shape),
            "dtype": "float32",
            "normalization": normalization.to_dict(),
        },
        "latent": {
            "shape": model.latent_shape(),
            "stride": model.stride,
            "channels": config.code_size,
            "channel_axis": 0,
            **_latent_tables(model, out, x),
        },
        "quality_levels": [{"name": "q0", "max_error": None}],
        "files": {},
        "training": {
            **info.get("training", {}),
            **(training or {}),
            "export": {
                "command": command if command is not None else shlex.join(["latentwire", *sys.argv[1:]]),
                "seconds": round(time.perf_counter() - t0, 2),
            },
        },
        "metrics": {**info.get("metrics", {}), **(metrics or {}), "parity_max_abs_diff": diff},
    }
    bundle_mod.write_manifest(out, manifest)
    bundle_mod.finalize(out)
    return out


# -- CLI ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = export(args.checkpoint, args.out, name=args.name, tolerance=args.tolerance)
    manifest = bundle_mod.read_manifest(out)
    print(f"exported {manifest['name']} to {out} (model id {manifest['model_id'][:12]}, "
          f"parity {manifest['metrics']['parity_max_abs_diff']:.2g})")
    if args.calibrate_data:
        _calibrate(out, args.calibrate_data)
    return 0


def _calibrate(out: Path, data: str) -> None:
    try:
        from ..calibrate import calibrate
    except ImportError:
        raise ExportError("--calibrate-data: codec/calibrate.py is not available in this install; "
                          f"run `latentwire calibrate {out} ...` once it is") from None
    from ..sources import load_source

    calibrate(out, load_source(data))
    print(f"calibrated {out} on {data}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentwire")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    return run(parser.parse_args(["export", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["export", "parity", "run", "main", "PARITY_TOLERANCE"]
