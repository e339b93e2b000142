"""`latentwire quantize-exact BUNDLE`: turn a bundle's float decoder into its exact integer network.

The network (codec/coding/exact.py) is what every residual level predicts from, so it is built
after training, from decoder.onnx's own initializers, and measured against the float graph on
real data before it is stored. Post-training quantization, no fine-tuning: the residual layer
codes whatever the prediction misses, so a slightly worse prediction costs a few bits, never
correctness; the measured cost is small (BENCHMARKS.md), which is why no fine-tuning step exists.

Quantization, layer by layer (s_a: the scale of the layer's integer input, 1 for the latents):
  * weights per output channel j: s_w[j] = max|W_j| / (2**(weight_bits-1) - 1), W_q = round(W / s_w);
    bias b_q = round(b / (s_a * s_w[j])) (for the last layer the normalization's offset is folded in);
  * a hidden layer's pre-activation is requantized to the activation grid s = R / 2**(act_bits-1),
    R = margin * the largest |pre-activation| seen on the calibration data, and the activation is
    a table over that clipped grid mapping u to round(f(u * s) / s) (same grid in and out);
  * the last layer is requantized straight to raw units (scale: s_a * s_w[j] * normalization.scale)
    and clipped to the raw range: the integer prediction itself.
Each requant multiplier carries MULTIPLIER_BITS of precision. IntegerNetwork then proves the
2**53 bound from the stored numbers; bit widths that break it are refused there.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle import DECODER, EXACT, Bundle, finalize, read_manifest, write_manifest
from ..coding.exact import Dense, IntegerNetwork, Layer, Lookup, Requant
from ..errors import InputError
from ..normalization import psnr_db
from ..runtime import Decoder, Encoder

MULTIPLIER_BITS = 24
DEFAULT_WEIGHT_BITS = 16
DEFAULT_ACT_BITS = 16
RANGE_MARGIN = 1.25  # activation grids reach this far past the largest calibration pre-activation
INPUT_LIMIT = 1 << 15  # latents are clipped to +-this (far beyond any coded symbol)

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    "Relu": lambda x: np.maximum(x, 0.0),
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": np.tanh,
}


@dataclass(frozen=True)
class FloatLayer:
    """One Gemm of the float decoder and the activation after it (None for the last)."""

    weight: np.ndarray  # float64 (out, in)
    bias: np.ndarray  # float64 (out,)
    activation: str | None


def read_float_layers(decoder_path: Path) -> list[FloatLayer]:
    """decoder.onnx as a chain Gemm -> activation -> ... -> Gemm (-> Reshape); anything else is refused."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(decoder_path)).graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    layers: list[FloatLayer] = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                    or attrs.get("beta", 1.0) != 1.0:
                raise InputError(f"{decoder_path}: Gemm {node.name} has attributes the exact quantizer does not handle")
            layers.append(FloatLayer(init[node.input[1]], init[node.input[2]], None))
        elif node.op_type in ACTIVATIONS and layers and layers[-1].activation is None:
            if node.op_type == "Gelu" and attrs.get("approximate", b"none") not in (b"none", "none"):
                raise InputError(f"{decoder_path}: tanh-approximated Gelu is not handled by the exact quantizer")
            layers[-1] = FloatLayer(layers[-1].weight, layers[-1].bias, node.op_type)
        elif node.op_type != "Reshape":
            raise InputError(f"{decoder_path}: operator {node.op_type} is not (yet) supported by the exact path; "
                             "it quantizes dense decoders (Gemm and pointwise activations)")
    if not layers or layers[-1].activation is not None:
        raise InputError(f"{decoder_path}: the exact path needs a decoder ending in a linear Gemm")
    return layers


def float_forward(layers: list[FloatLayer], latents: np.ndarray) -> list[np.ndarray]:
    """Every layer's pre-activation (float64) for the calibration latents."""
    pre, h = [], latents.astype(np.float64)
    for layer in layers:
        z = h @ layer.weight.T + layer.bias
        pre.append(z)
        h = ACTIVATIONS[layer.activation](z) if layer.activation else z
    return pre


def _requant(scale: np.ndarray, lo: int, hi: int) -> Requant:
    shift = int(math.floor(math.log2((2**MULTIPLIER_BITS - 1) / float(scale.max()))))
    if shift < 0:
        raise InputError(f"requant scale {float(scale.max()):g} needs more than {MULTIPLIER_BITS} bits: "
                         "use fewer activation bits")
    return Requant(np.rint(scale * 2.0**shift).astype(np.int64), shift, lo, hi)


def build_network(layers: list[FloatLayer], pre: list[np.ndarray], sample_shape: tuple[int, ...], norm_scale: float,
                  norm_offset: float, raw_min: int, raw_max: int, weight_bits: int, act_bits: int) -> IntegerNetwork:
    """The integer network for these float layers (pre: their calibration pre-activations)."""
    wmax = 2 ** (weight_bits - 1) - 1
    half = 2 ** (act_bits - 1)
    s_a = 1.0
    out: list[Layer] = []
    for k, layer in enumerate(layers):
        last = k == len(layers) - 1
        s_w = np.abs(layer.weight).max(axis=1) / wmax
        s_w[s_w == 0] = 1.0
        w_q = np.rint(layer.weight / s_w[:, None]).astype(np.int64)
        bias = layer.bias + (norm_offset / norm_scale if last else 0.0)
        out.append(Dense(w_q, np.rint(bias / (s_a * s_w)).astype(np.int64)))
        if last:
            out.append(_requant(s_a * s_w * norm_scale, raw_min, raw_max))
            break
        s = RANGE_MARGIN * float(np.abs(pre[k]).max()) / half
        out.append(_requant(s_a * s_w / s, -half, half - 1))
        u = np.arange(-half, half, dtype=np.float64)
        act = ACTIVATIONS[layer.activation or ""]
        out.append(Lookup(np.rint(act(u * s) / s).astype(np.int64), -half))
        s_a = s
    return IntegerNetwork(-INPUT_LIMIT, INPUT_LIMIT, tuple(out), sample_shape, raw_min, raw_max)


@dataclass(frozen=True)
class Agreement:
    """The exact prediction against the float graph's rint(clip(output)) on held-out samples."""

    n_samples: int
    values_differing: float  # fraction of predicted values that differ
    max_abs_difference: int
    psnr_exact_vs_float_db: float
    psnr_float_db: float  # each prediction against the real samples
    psnr_exact_db: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in self.__dict__.items()}


def _latents(bundle: Bundle, raw: np.ndarray, threads: int | None, batch: int = 1024) -> np.ndarray:
    enc = Encoder(bundle, provider="cpu", threads=threads)
    norm = bundle.manifest.normalization
    return np.concatenate([np.rint(enc.encode(norm.to_model(raw[i : i + batch]))).astype(np.int64)
                           for i in range(0, len(raw), batch)])


def measure(bundle: Bundle, net: IntegerNetwork, raw: np.ndarray, latents: np.ndarray,
            threads: int | None) -> Agreement:
    norm = bundle.manifest.normalization
    dec = Decoder(bundle, provider="cpu", threads=threads)
    flt = np.concatenate([np.rint(norm.to_raw_float(dec.decode(latents[i : i + 1024].astype(np.float32))))
                          for i in range(0, len(latents), 1024)]).astype(np.int64)
    ex = np.concatenate([net.predict(latents[i : i + 1024]) for i in range(0, len(latents), 1024)]).astype(np.int64)
    peak = norm.peak
    return Agreement(len(raw), float(np.mean(ex != flt)), int(np.abs(ex - flt).max()), psnr_db(flt, ex, peak),
                     psnr_db(raw, flt, peak), psnr_db(raw, ex, peak))


def quantize_exact(bundle_dir: str | Path, raw: np.ndarray, weight_bits: int = DEFAULT_WEIGHT_BITS,
                   act_bits: int = DEFAULT_ACT_BITS, holdout: int = 5000, threads: int | None = None,
                   command: str | None = None, write: bool = True) -> tuple[IntegerNetwork, Agreement]:
    """Build, measure and (write) store the bundle's exact network: ranges from raw[:-holdout],
    agreement measured on raw[-holdout:]. Recalibrate afterwards: the residual tables follow the
    prediction they are taken against."""
    t0 = time.perf_counter()
    raw = np.asarray(getattr(raw, "samples", raw))  # a SampleSet or an array
    d = Path(bundle_dir)
    bundle = Bundle.load(d)
    m = bundle.manifest
    norm = m.normalization
    if m.spatial_dims or m.latent_levels or not norm.is_integer:
        raise InputError("the exact path quantizes dense decoders of fixed-rate bundles with integer raw samples")
    if len(raw) <= holdout:
        raise InputError(f"need more than {holdout} samples (ranges on the rest, agreement on the last {holdout})")
    layers = read_float_layers(d / DECODER)
    latents = _latents(bundle, raw, threads)
    fit, held = latents[:-holdout], latents[-holdout:]
    net = build_network(layers, float_forward(layers, fit), tuple(int(v) for v in m.sample_shape),  # type: ignore[arg-type]
                        norm.scale, norm.offset, int(norm.raw_min), int(norm.raw_max), weight_bits, act_bits)
    agreement = measure(bundle, net, raw[-holdout:], held, threads)
    if write:
        (d / EXACT).write_bytes(net.to_bytes())
        manifest = read_manifest(d)
        manifest["exact"] = {
            "file": EXACT, "weight_bits": weight_bits, "act_bits": act_bits,
            "max_partial_sum_log2": round(math.log2(max(net.max_partial_sum, 1)), 2),  # type: ignore[attr-defined]
            "agreement": agreement.to_dict(),
            "command": command if command is not None else shlex.join(["latentwire", *sys.argv[1:]]),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_manifest(d, manifest)
        finalize(d)
    return net, agreement


def add_parser(subparsers: Any, name: str = "quantize-exact") -> argparse.ArgumentParser:
    from ..sources import source_option

    p = subparsers.add_parser(name, help="store a bundle's exact integer decoder (residual levels predict from it)")
    p.add_argument("bundle", type=Path, help="a bundle directory (changed in place; recalibrate it afterwards)")
    p.add_argument("--data", required=True, help="raw samples like the training data (any source latentwire reads)")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE")
    p.add_argument("--weight-bits", type=int, default=DEFAULT_WEIGHT_BITS)
    p.add_argument("--act-bits", type=int, default=DEFAULT_ACT_BITS)
    p.add_argument("--holdout", type=int, default=5000, help="the last this many samples measure the agreement")
    p.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    p.add_argument("--threads", type=int, default=None)
    return p


def run(args: argparse.Namespace) -> int:
    from ..sources import load_source

    raw = load_source(args.data, **dict(args.source_option)).samples[: args.limit]
    net, agreement = quantize_exact(args.bundle, raw, args.weight_bits, args.act_bits, args.holdout, args.threads)
    print(json.dumps({"bundle": str(args.bundle), "model_id": Bundle.load(args.bundle).model_id,
                      "agreement": agreement.to_dict()}, indent=2))
    return 0
