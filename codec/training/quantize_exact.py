"""`latentwire quantize-exact BUNDLE`: turn a bundle's float decoder into its exact integer network.

The network (codec/coding/exact.py) is what every residual level predicts from, so it is built
after training, from decoder.onnx's own initializers, and measured against the float graph on
real data before it is stored. Post-training quantization, no fine-tuning: the residual layer
codes whatever the prediction misses, so a slightly worse prediction costs a few bits, never
correctness; the measured cost is small (BENCHMARKS.md), which is why no fine-tuning step exists.

The graph is read as steps (Gemm, Conv, ConvTranspose as dilate + flipped conv, pointwise
activations, skip Adds, the final crop); activation ranges come from a float64 forward pass of the
same steps on the calibration latents. Layer by layer (s_a: the scale of the layer's integer
input, 1 for the latents):
  * weights per output channel j: s_w[j] = max|W_j| / (2**(weight_bits-1) - 1), W_q = round(W / s_w);
    bias b_q = round(b / (s_a * s_w[j])) (for the last layer the normalization's offset is folded in);
  * a hidden layer's pre-activation is requantized to the activation grid s = R / 2**(act_bits-1),
    R = margin * the largest |pre-activation| seen on the calibration data, and the activation is
    a table over that clipped grid mapping u to round(f(u * s) / s) (same grid in and out);
  * a branch that ends in a skip Add is requantized onto the skip's grid and added in integers;
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import DECODER, EXACT, Bundle, finalize, read_manifest, write_manifest
from ..coding.exact import Add, Conv1d, Dense, Dilate, IntegerNetwork, Layer, Lookup, Requant, Save
from ..errors import InputError
from ..normalization import psnr_db
from ..runtime import Decoder, Encoder

MULTIPLIER_BITS = 24
DEFAULT_WEIGHT_BITS = 16
DEFAULT_ACT_BITS = 16
DEFAULT_HOLDOUT = 5000
RANGE_MARGIN = 1.25  # default: activation grids reach this far past the largest calibration pre-activation
INPUT_LIMIT = 1 << 15  # latents are clipped to +-this (far beyond any coded symbol)

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    "Relu": lambda x: np.maximum(x, 0.0),
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": np.tanh,
}


@dataclass(frozen=True)
class Linear:
    """A Gemm, Conv or ConvTranspose of the float decoder as a stride-1 convolution on channels-last
    tensors: optional zero dilation, then weight (out, in, k) with pads (a Gemm is k = 1, no pad)."""

    out: str
    inp: str
    weight: np.ndarray  # float64 (out, in, k)
    bias: np.ndarray  # float64 (out,)
    pad_left: int = 0
    pad_right: int = 0
    dilate: int = 1


@dataclass(frozen=True)
class Pointwise:
    out: str
    inp: str
    function: str  # a key of ACTIVATIONS


@dataclass(frozen=True)
class Sum:
    out: str
    a: str
    b: str


Step = Linear | Pointwise | Sum


def read_graph(decoder_path: Path) -> tuple[list[Step], bool]:
    """decoder.onnx as steps in graph order, and whether it is a dense graph (Gemm) or a 1-D
    convolutional one (Conv/ConvTranspose, skip Adds, a final crop). Anything else is refused."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(decoder_path)).graph
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    steps: list[Step] = []
    dense = conv = False
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        op, ins, out = node.op_type, list(node.input), node.output[0]
        if op == "Gemm":
            if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                    or attrs.get("beta", 1.0) != 1.0:
                raise InputError(f"{decoder_path}: Gemm {node.name} has attributes the exact quantizer does not handle")
            steps.append(Linear(out, ins[0], init[ins[1]][:, :, None], init[ins[2]]))
            dense = True
        elif op in ("Conv", "ConvTranspose"):
            w, b = init[ins[1]], init[ins[2]] if len(ins) > 2 else np.zeros(init[ins[1]].shape[1 - (op == "Conv")])
            pads, stride = list(attrs.get("pads", [0, 0])), list(attrs.get("strides", [1]))[0]
            if w.ndim != 3 or attrs.get("group", 1) != 1 or list(attrs.get("dilations", [1])) != [1] \
                    or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise InputError(f"{decoder_path}: {op} {node.name} is not a plain 1-D convolution")
            if op == "Conv":
                if stride != 1:
                    raise InputError(f"{decoder_path}: strided Conv {node.name} is not handled by the exact quantizer")
                steps.append(Linear(out, ins[0], w, b, pads[0], pads[1]))
            else:  # dilate by the stride, then convolve with the flipped, transposed kernel
                k = w.shape[2]
                extra = list(attrs.get("output_padding", [0]))[0]
                steps.append(Linear(out, ins[0], w.transpose(1, 0, 2)[:, :, ::-1].copy(), b, k - 1 - pads[0],
                                    k - 1 - pads[1] + extra, stride))
            conv = True
        elif op in ACTIVATIONS:
            if op == "Gelu" and attrs.get("approximate", b"none") not in (b"none", "none"):
                raise InputError(f"{decoder_path}: tanh-approximated Gelu is not handled by the exact quantizer")
            steps.append(Pointwise(out, ins[0], op))
        elif op == "Add":
            steps.append(Sum(out, ins[0], ins[1]))
        elif op == "Slice" and conv and len(ins) >= 3 and not init.get(ins[1], np.ones(1)).any():
            continue  # the crop to out_size from position 0: predict() crops
        elif op != "Reshape":
            raise InputError(f"{decoder_path}: operator {op} is not (yet) supported by the exact path; it quantizes "
                             "dense and 1-D convolutional decoders (Gemm/Conv/ConvTranspose, pointwise activations, "
                             "skip additions)")
    if dense == conv or not steps or not isinstance(steps[-1], Linear):
        raise InputError(f"{decoder_path}: the exact path needs a dense or a 1-D conv decoder ending in a linear layer")
    return steps, dense


def _linear_float(step: Linear, x: np.ndarray) -> np.ndarray:
    """The float reference of one Linear on (N, L, C) float64 (or (N, C) for dense)."""
    if x.ndim == 2:
        return x @ step.weight[:, :, 0].T + step.bias
    if step.dilate > 1:
        up = np.zeros((x.shape[0], (x.shape[1] - 1) * step.dilate + 1, x.shape[2]))
        up[:, :: step.dilate] = x
        x = up
    xp = np.pad(x, ((0, 0), (step.pad_left, step.pad_right), (0, 0)))
    k = step.weight.shape[2]
    n = xp.shape[1] - k + 1
    return sum(xp[:, j : j + n] @ step.weight[:, :, j].T for j in range(k)) + step.bias


def pre_activation_ranges(steps: list[Step], latents: np.ndarray, batch: int = 256) -> dict[str, float]:
    """max |value| of every Linear's output over the calibration latents (float64 forward)."""
    top: dict[str, float] = {}
    for i in range(0, len(latents), batch):
        x = latents[i : i + batch].astype(np.float64)
        values = {steps[0].inp: x if x.ndim == 2 else x.transpose(0, 2, 1)}  # type: ignore[union-attr]
        for st in steps:
            if isinstance(st, Linear):
                values[st.out] = v = _linear_float(st, values[st.inp])
                top[st.out] = max(top.get(st.out, 0.0), float(np.abs(v).max()))
            elif isinstance(st, Pointwise):
                values[st.out] = ACTIVATIONS[st.function](values[st.inp])
            else:
                values[st.out] = values[st.a] + values[st.b]
    return top


def _requant(scale: np.ndarray, lo: int, hi: int) -> Requant:
    shift = int(math.floor(math.log2((2**MULTIPLIER_BITS - 1) / float(scale.max()))))
    if shift < 0:
        raise InputError(f"requant scale {float(scale.max()):g} needs more than {MULTIPLIER_BITS} bits: "
                         "use fewer activation bits")
    return Requant(np.rint(scale * 2.0**shift).astype(np.int64), shift, lo, hi)


def build_network(steps: list[Step], dense: bool, ranges: dict[str, float], sample_shape: tuple[int | None, ...],
                  norm_scale: float, norm_offset: float, raw_min: int, raw_max: int, weight_bits: int,
                  act_bits: int, margin: float = RANGE_MARGIN) -> IntegerNetwork:
    """The integer network for these float steps (ranges: each Linear output's max |value|)."""
    wmax = 2 ** (weight_bits - 1) - 1
    half = 2 ** (act_bits - 1)
    grid = {steps[0].inp: 1.0}  # type: ignore[union-attr]  # latents are integers: grid 1
    consumers: dict[str, list[Step]] = {}
    for st in steps:
        for name in ([st.inp] if not isinstance(st, Sum) else [st.a, st.b]):
            consumers.setdefault(name, []).append(st)
    slots: dict[str, int] = {}
    out: list[Layer] = []
    done: set[str] = set()
    for st in steps:
        if not isinstance(st, Linear):
            if st.out not in done:
                raise InputError(f"the exact quantizer cannot place {type(st).__name__} {st.out}: it handles "
                                 "activations and skip additions right after a linear layer")
            continue
        s_x = grid[st.inp]
        if any(isinstance(c, Sum) for c in consumers.get(st.inp, [])) and st.inp not in slots:
            slots[st.inp] = len(slots)
            out.append(Save(slots[st.inp]))
        if st.dilate > 1:
            out.append(Dilate(st.dilate))
        s_w = np.abs(st.weight).max(axis=(1, 2)) / wmax
        s_w[s_w == 0] = 1.0
        w_q = np.rint(st.weight / s_w[:, None, None]).astype(np.int64)
        nxt = consumers.get(st.out, [])
        last = not nxt
        bias = st.bias + (norm_offset / norm_scale if last else 0.0)
        b_q = np.rint(bias / (s_x * s_w)).astype(np.int64)
        out.append(Dense(w_q[:, :, 0], b_q) if dense else Conv1d(w_q, b_q, st.pad_left, st.pad_right))
        if last:
            out.append(_requant(s_x * s_w * norm_scale, raw_min, raw_max))
            break
        if len(nxt) != 1:
            raise InputError(f"the exact quantizer needs {st.out} to feed one activation or one addition")
        use = nxt[0]
        if isinstance(use, Pointwise):
            s = margin * ranges[st.out] / half
            out.append(_requant(s_x * s_w / s, -half, half - 1))
            u = np.arange(-half, half, dtype=np.float64)
            out.append(Lookup(np.rint(ACTIVATIONS[use.function](u * s) / s).astype(np.int64), -half))
            grid[use.out] = s
        elif isinstance(use, Sum):
            skip = use.a if use.b == st.out else use.b
            if skip not in slots:
                raise InputError(f"the exact quantizer needs the skip input {skip} saved before {st.out}")
            s = grid[skip]  # the branch joins the skip's grid
            lim = int(math.ceil(margin * ranges[st.out] / s))
            out.append(_requant(s_x * s_w / s, -lim, lim))
            out.append(Add(slots[skip]))
            grid[use.out] = s
        else:
            raise InputError(f"the exact quantizer cannot follow {st.out} with another linear layer")
        done.add(use.out)
    if dense:
        return IntegerNetwork(-INPUT_LIMIT, INPUT_LIMIT, tuple(out), sample_shape, raw_min, raw_max)
    return IntegerNetwork(-INPUT_LIMIT, INPUT_LIMIT, tuple(out), (sample_shape[0], None), raw_min, raw_max,
                          "channels_first")


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
    conv = net.layout == "channels_first"
    size = int(raw.shape[-1])
    batch = 128 if conv else 1024
    flt = np.concatenate([np.rint(norm.to_raw_float(dec.decode(latents[i : i + batch].astype(np.float32),
                                                               (size,) if conv else None)))
                          for i in range(0, len(latents), batch)]).astype(np.int64)
    ex = np.concatenate([net.predict(latents[i : i + batch], size if conv else None)
                         for i in range(0, len(latents), batch)])
    ex = ex.astype(np.int64).reshape(flt.shape)
    peak = norm.peak
    return Agreement(len(raw), float(np.mean(ex != flt)), int(np.abs(ex - flt).max()), psnr_db(flt, ex, peak),
                     psnr_db(raw, flt, peak), psnr_db(raw, ex, peak))


def quantize_exact(bundle_dir: str | Path, raw: np.ndarray, weight_bits: int | None = None,
                   act_bits: int | None = None, holdout: int | None = None, threads: int | None = None,
                   command: str | None = None, write: bool = True,
                   range_samples: int | None = None,
                   margin: float = RANGE_MARGIN) -> tuple[IntegerNetwork, Agreement]:
    """Build, measure and (write) store the bundle's exact network: ranges from raw[:-holdout]
    (at most range_samples of them, evenly spread), agreement measured on raw[-holdout:].
    Recalibrate afterwards: the residual tables follow the prediction they are taken against.
    """
    t0 = time.perf_counter()
    raw = np.asarray(getattr(raw, "samples", raw))  # a SampleSet or an array
    d = Path(bundle_dir)
    bundle = Bundle.load(d)
    m = bundle.manifest
    norm = m.normalization
    if m.spatial_dims == 2:  # photos: quantize_exact2d.py (weight and activation bits default there)
        from .quantize_exact2d import DEFAULT_ACT_BITS as DEFAULT_ACT_BITS_2D
        from .quantize_exact2d import DEFAULT_WEIGHT_BITS as DEFAULT_WEIGHT_BITS_2D
        from .quantize_exact2d import HOLDOUT as HOLDOUT_2D
        from .quantize_exact2d import quantize_exact_2d

        net2, block = quantize_exact_2d(d, raw, weight_bits=weight_bits or DEFAULT_WEIGHT_BITS_2D,
                                        act_bits=act_bits or DEFAULT_ACT_BITS_2D, holdout=holdout or HOLDOUT_2D,
                                        threads=threads, margin=margin)
        if write:
            _store(d, net2, {**block, "max_partial_sum_log2": round(math.log2(max(net2.max_partial_sum, 1)), 2)},  # type: ignore[attr-defined]
                   command, t0)
        return net2, Agreement(**block["agreement"])  # type: ignore[arg-type]
    weight_bits = weight_bits or DEFAULT_WEIGHT_BITS
    act_bits = act_bits or DEFAULT_ACT_BITS
    holdout = holdout or DEFAULT_HOLDOUT
    if m.spatial_dims > 1 or m.latent_levels or not norm.is_integer:
        raise InputError("the exact path quantizes dense and 1-D conv decoders of fixed-rate bundles with integer "
                         "raw samples")
    if len(raw) <= holdout:
        raise InputError(f"need more than {holdout} samples (ranges on the rest, agreement on the last {holdout})")
    steps, dense = read_graph(d / DECODER)
    latents = _latents(bundle, raw, threads)
    fit, held = latents[:-holdout], latents[-holdout:]
    if range_samples is not None and len(fit) > range_samples:
        fit = fit[np.linspace(0, len(fit) - 1, range_samples).astype(np.int64)]
    net = build_network(steps, dense, pre_activation_ranges(steps, fit), tuple(m.sample_shape), norm.scale,
                        norm.offset, int(norm.raw_min), int(norm.raw_max), weight_bits, act_bits, margin)
    agreement = measure(bundle, net, raw[-holdout:], held, threads)
    if write:
        _store(d, net, {"weight_bits": weight_bits, "act_bits": act_bits, "range_samples": len(fit),
                        "range_margin": margin,
                        "max_partial_sum_log2": round(math.log2(max(net.max_partial_sum, 1)), 2),  # type: ignore[attr-defined]
                        "agreement": agreement.to_dict()}, command, t0)
    return net, agreement


def _store(d: Path, net: IntegerNetwork, block: dict[str, Any], command: str | None, t0: float) -> None:
    """exact.npz and the manifest's `exact` block (the model id then covers the network)."""
    (d / EXACT).write_bytes(net.to_bytes())
    manifest = read_manifest(d)
    manifest["exact"] = {"file": EXACT, **block,
                         "command": command if command is not None else shlex.join(["latentwire", *sys.argv[1:]]),
                         "seconds": round(time.perf_counter() - t0, 2)}
    write_manifest(d, manifest)
    finalize(d)


def add_parser(subparsers: Any, name: str = "quantize-exact") -> argparse.ArgumentParser:
    from ..sources import source_option

    p = subparsers.add_parser(name, help="store a bundle's exact integer decoder (residual levels predict from it)")
    p.add_argument("bundle", type=Path, help="a bundle directory (changed in place; recalibrate it afterwards)")
    p.add_argument("--data", required=True, help="raw samples like the training data (any source latentwire reads)")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE")
    p.add_argument("--weight-bits", type=int, default=None,
                   help=f"default {DEFAULT_WEIGHT_BITS} (photos: quantize_exact2d.py's default)")
    p.add_argument("--act-bits", type=int, default=None, help=f"default {DEFAULT_ACT_BITS} (photos: as above)")
    p.add_argument("--holdout", type=int, default=None,
                   help=f"the last this many samples measure the agreement (default {DEFAULT_HOLDOUT}; photos 8)")
    p.add_argument("--range-margin", type=float, default=RANGE_MARGIN,
                   help="activation grids span this multiple of the largest pre-activation seen (wider: rarer "
                        "clipping on unseen data, coarser grid)")
    p.add_argument("--range-samples", type=int, default=None,
                   help="activation ranges from at most this many samples (default: all but the holdout)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    p.add_argument("--threads", type=int, default=None)
    return p


def run(args: argparse.Namespace) -> int:
    from ..sources import load_source

    raw = load_source(args.data, **dict(args.source_option)).samples[: args.limit]
    net, agreement = quantize_exact(args.bundle, raw, args.weight_bits, args.act_bits, args.holdout, args.threads,
                                    range_samples=args.range_samples, margin=args.range_margin)
    print(json.dumps({"bundle": str(args.bundle), "model_id": Bundle.load(args.bundle).model_id,
                      "agreement": agreement.to_dict()}, indent=2))
    return 0
