"""The photo decoder's exact integer network (issue 24 part 1): gdn2d's decoder.onnx in integers.

Why: a photo bundle's max-error levels, lossless included, take their residual against the
decoder's prediction; with the float graph a receiver whose kernels round differently
reconstructs another photo and fails the reconstruction CRC. quantize_exact.py does this for dense
and 1-D graphs; this module reads the 2-D one (transposed 5x5 convolutions, inverse GDN, the crop)
and builds the same kind of IntegerNetwork (layout channels_first_2d) with the ``igdn`` layer of
coding/exact_gdn.py.

The network takes the REFERENCE level's integer symbols (the level every residual is coded at):
that level's inverse gain is folded into the first layer's weights, so no fractional latent ever
enters it. Under a hyperprior (hyper2d) it takes y_hat * gain on the mean's grid instead
(coding/hyperprior.exact_input): the predicted mean is part of y_hat, and it is not an integer.
Post-training quantization as in quantize_exact.py (per-output-channel weights,
activation grids from the largest value seen on calibration crops times a margin; ranges are read
from onnxruntime with the intermediate tensors exposed); the inverse GDN's gamma takes one scale
for the whole matrix so its sum of squares lies on one grid. Each requant multiplier gets as many
bits as keep its int64 product below 2**62 (at most MULTIPLIER_BITS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..coding.exact import Conv2d, Dilate2d, Igdn, IntegerNetwork, Layer, Requant
from ..coding.exact_layers import accumulator_bound
from ..errors import InputError
from ..normalization import Normalization

MULTIPLIER_BITS = 24
DEFAULT_WEIGHT_BITS = 16  # 16/16/16 on bsds-gdn2d: 0.5 % of predicted values off the float graph's by one
DEFAULT_ACT_BITS = 16
DEFAULT_GAMMA_BITS = 16
HOLDOUT = 8  # crops that measure the agreement
RANGE_MARGIN = 1.25
INPUT_LIMIT = 1 << 15
REQUANT_LIMIT_BITS = 61  # product bits a requant may reach (int64, below the 2**62 the proof allows)


@dataclass(frozen=True)
class TConv:
    """A ConvTranspose of decoder.onnx: weight (in, out, kh, kw), pads (top, left, bottom, right)."""

    out: str
    inp: str
    weight: np.ndarray
    bias: np.ndarray
    pads: tuple[int, int, int, int]
    output_padding: tuple[int, int]
    stride: int


@dataclass(frozen=True)
class Gdn:
    """An inverse GDN: out = inp * sqrt(beta + gamma @ inp^2) over channels."""

    out: str
    inp: str
    gamma: np.ndarray  # (C, C) >= 0
    beta: np.ndarray  # (C,) > 0


Step2d = TConv | Gdn


def read_graph_2d(decoder_path: Path) -> list[Step2d]:
    """decoder.onnx of a gdn2d bundle as steps; any other operator pattern is refused."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(decoder_path)).graph
    const = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    square: dict[str, str] = {}  # x*x -> x
    sums: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}  # conv(x*x, gamma, beta) -> (x, gamma, beta)
    roots: dict[str, str] = {}  # sqrt(sum) -> sum
    steps: list[Step2d] = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        op, ins, out = node.op_type, list(node.input), node.output[0]
        if all(i in const for i in ins if i):  # a constant subgraph (GDN's reparametrized gamma)
            if op == "Clip":
                const[out] = np.maximum(const[ins[0]], const[ins[1]]) if len(ins) > 1 and ins[1] else const[ins[0]]
            elif op == "Mul":
                const[out] = const[ins[0]] * const[ins[1]]
            elif op == "Reshape":
                const[out] = const[ins[0]].reshape(const[ins[1]].astype(np.int64))
            else:
                raise InputError(f"{decoder_path}: constant {op} {node.name} is not handled by the 2-D exact quantizer")
        elif op == "ConvTranspose":
            w = const[ins[1]]
            b = const[ins[2]] if len(ins) > 2 else np.zeros(w.shape[1])
            strides = list(attrs.get("strides", [1, 1]))
            if w.ndim != 4 or attrs.get("group", 1) != 1 or list(attrs.get("dilations", [1, 1])) != [1, 1] \
                    or strides[0] != strides[1]:
                raise InputError(f"{decoder_path}: ConvTranspose {node.name} is not a plain 2-D transposed convolution")
            pads = tuple(int(p) for p in attrs.get("pads", [0, 0, 0, 0]))
            op_pad = tuple(int(p) for p in attrs.get("output_padding", [0, 0]))
            steps.append(TConv(out, ins[0], w, b, pads, op_pad, int(strides[0])))  # type: ignore[arg-type]
        elif op == "Mul" and ins[0] == ins[1]:
            square[out] = ins[0]
        elif op == "Conv" and ins[0] in square and ins[1] in const and list(attrs.get("kernel_shape", [])) == [1, 1]:
            g = const[ins[1]][:, :, 0, 0]
            sums[out] = (square[ins[0]], g, const[ins[2]] if len(ins) > 2 else np.zeros(g.shape[0]))
        elif op == "Sqrt" and ins[0] in sums:
            roots[out] = ins[0]
        elif op == "Mul" and (ins[1] in roots or ins[0] in roots):
            x, r = (ins[0], ins[1]) if ins[1] in roots else (ins[1], ins[0])
            src, gamma, beta = sums[roots[r]]
            if src != x:
                raise InputError(f"{decoder_path}: {node.name} multiplies by another tensor's normalizer")
            steps.append(Gdn(out, x, gamma, beta))
        elif op == "Slice":
            if ins[1] not in const or const[ins[1]].any():
                raise InputError(f"{decoder_path}: the exact path crops from position 0 only")
        else:
            raise InputError(f"{decoder_path}: operator {op} is not handled by the 2-D exact quantizer (it reads "
                             "gdn2d decoders: ConvTranspose, inverse GDN, the final crop)")
    if not steps or not isinstance(steps[-1], TConv) or any(
            isinstance(a, type(b)) for a, b in zip(steps, steps[1:], strict=False)):
        raise InputError(f"{decoder_path}: expected transposed convolutions alternating with inverse GDN")
    return steps


def tensor_ranges(decoder_path: Path, steps: list[Step2d], latent_values: np.ndarray, out_size: tuple[int, int],
                  batch: int = 4) -> dict[str, float]:
    """max |value| of every step's output over the calibration latents, read from onnxruntime with
    those tensors added as graph outputs (ranges only: nothing exact depends on them)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(decoder_path))
    names = [st.out for st in steps]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    top = dict.fromkeys(names, 0.0)
    for i in range(0, len(latent_values), batch):
        feeds = {"y_hat": latent_values[i : i + batch].astype(np.float32),
                 "out_size": np.asarray(out_size, dtype=np.int64)}
        for name, value in zip(names, sess.run(names, feeds), strict=True):
            top[name] = max(top[name], float(np.abs(value).max()))
    return top


def _multiplier(real: np.ndarray, product_bits: int) -> tuple[np.ndarray, int]:
    """Integer multipliers m and shift s with m / 2**s ~ real, m below 2**bits where bits leaves an
    int64 product of a (product_bits)-bit value below 2**REQUANT_LIMIT_BITS."""
    bits = min(MULTIPLIER_BITS, REQUANT_LIMIT_BITS - product_bits)
    if bits < 12:
        raise InputError(f"a requant input of {product_bits} bits leaves too few multiplier bits: quantize with "
                         "fewer weight or activation bits")
    shift = int(math.floor(math.log2((2**bits - 1) / float(real.max()))))
    if shift < 0:
        raise InputError(f"requant scale {float(real.max()):g} is too large for {bits} multiplier bits")
    return np.rint(real * 2.0**shift).astype(np.int64), shift


def build_network_2d(steps: list[Step2d], ranges: dict[str, float], inverse_gain: np.ndarray, norm: Normalization,
                     channels: int, weight_bits: int = DEFAULT_WEIGHT_BITS, act_bits: int = DEFAULT_ACT_BITS,
                     gamma_bits: int = DEFAULT_GAMMA_BITS, margin: float = RANGE_MARGIN,
                     input_frac_bits: int = 0) -> IntegerNetwork:
    """The integer network for these steps, taking integers x whose latent values are
    x * inverse_gain / 2**input_frac_bits (symbols, or a hyperprior's fixed-point y_hat * gain)."""
    wmax = 2 ** (weight_bits - 1) - 1
    half = 2 ** (act_bits - 1)
    s_x = 1.0  # the grid of the current integer tensor (the input's: 1)
    inverse_gain = inverse_gain / float(1 << input_frac_bits)
    in_limit = INPUT_LIMIT << input_frac_bits  # the same range of latent values either way
    x_bound = [in_limit] * int(inverse_gain.size)
    layers: list[Layer] = []
    for i, st in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(st, TConv):
            w = st.weight * (inverse_gain[:, None, None, None] if i == 0 else 1.0)  # (in, out, kh, kw)
            wc = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # as a convolution after zero insertion
            s_w = np.abs(wc).max(axis=(1, 2, 3)) / wmax
            s_w[s_w == 0] = 1.0
            w_q = np.rint(wc / s_w[:, None, None, None]).astype(np.int64)
            bias = st.bias + (norm.offset / norm.scale if last else 0.0)
            b_q = np.rint(bias / (s_x * s_w)).astype(np.int64)
            kh, kw = wc.shape[2:]
            top, left, bottom, right = st.pads
            conv = Conv2d(w_q, b_q, kh - 1 - top, kh - 1 - bottom + st.output_padding[0], kw - 1 - left,
                          kw - 1 - right + st.output_padding[1])
            acc_bits = max(accumulator_bound(w_q.reshape(*w_q.shape[:2], -1), b_q, x_bound)).bit_length()
            if st.stride > 1:
                layers.append(Dilate2d(st.stride))
            layers.append(conv)
            if last:
                m, sh = _multiplier(s_x * s_w * norm.scale, acc_bits)
                layers.append(Requant(m, sh, int(norm.raw_min), int(norm.raw_max)))
                break
            s_a = margin * ranges[st.out] / half
            m, sh = _multiplier(s_x * s_w / s_a, acc_bits)
            layers.append(Requant(m, sh, -half, half - 1))
            s_x, x_bound = s_a, [half] * w_q.shape[0]
        else:
            gamma = np.maximum(st.gamma, 0.0)
            s_g = float(gamma.max()) / (2**gamma_bits - 1) if gamma.max() > 0 else 1.0
            g_q = np.rint(gamma / s_g).astype(np.int64)
            b_q = np.maximum(np.rint(st.beta / (s_x * s_x * s_g)), 1).astype(np.int64)
            s_o = margin * ranges[st.out] / half
            acc_max = max(int(row.sum()) * half * half + int(b) for row, b in zip(g_q, b_q, strict=True))
            y_bits = (half * math.isqrt(acc_max)).bit_length()
            real = np.full(g_q.shape[0], s_x * s_x * math.sqrt(s_g) / s_o)
            pre = max(0, y_bits + MULTIPLIER_BITS - REQUANT_LIMIT_BITS)
            m, sh = _multiplier(real * 2.0**pre, y_bits - pre)
            layers.append(Igdn(g_q, b_q, m, pre, sh, -half, half - 1))
            s_x = s_o
    return IntegerNetwork(-in_limit, in_limit, tuple(layers), (channels, None, None), int(norm.raw_min),
                          int(norm.raw_max), "channels_first_2d")


def quantize_exact_2d(bundle_dir: str | Path, raw: np.ndarray, weight_bits: int = DEFAULT_WEIGHT_BITS,
                      act_bits: int = DEFAULT_ACT_BITS, gamma_bits: int = DEFAULT_GAMMA_BITS, holdout: int = HOLDOUT,
                      threads: int | None = None, margin: float = RANGE_MARGIN,
                      batch: int = 4) -> tuple[IntegerNetwork, dict[str, object]]:
    """A gdn2d bundle's exact network for its reference (finest) level, built from raw[:-holdout]
    (equal-size RGB crops) and measured against the float graph on raw[-holdout:]: the network and
    the manifest's `exact` block (quantize_exact.quantize_exact writes both)."""
    from ..bundle import DECODER
    from ..normalization import psnr_db
    from ..runtime import Decoder

    d = Path(bundle_dir)
    bundle = Bundle.load(d)
    m = bundle.manifest
    if m.family not in ("gdn2d", "hyper2d") or not m.latent_levels or not m.normalization.is_integer:
        raise InputError("the 2-D exact path quantizes variable-rate gdn2d and hyper2d bundles with integer raw "
                         "samples")
    ref = len(m.latent_levels) - 1
    off = [q.name for q in m.quality_levels if q.max_error is not None and q.latent_level != ref]
    if off:
        raise InputError(f"levels {off} take a residual at another latent level than the reference l{ref}: the "
                         "exact network predicts from the reference level only")
    if raw.ndim != 4 or len(raw) <= holdout:
        raise InputError(f"need more than {holdout} equal-size image crops (N, C, H, W); got {raw.shape}")
    size = (int(raw.shape[2]), int(raw.shape[3]))
    inputs, values, frac_bits = _reference_inputs(bundle, raw, ref, batch, threads)
    steps = read_graph_2d(d / DECODER)
    ranges = tensor_ranges(d / DECODER, steps, values[:-holdout], size, batch)
    net = build_network_2d(steps, ranges, m.latent_levels[ref].inverse_gain.astype(np.float64).ravel(),
                           m.normalization, int(raw.shape[1]), weight_bits, act_bits, gamma_bits, margin, frac_bits)
    dec = Decoder(bundle, provider="cpu", threads=threads)
    norm = m.normalization
    held = raw[-holdout:]
    flt = np.concatenate([np.rint(np.clip(norm.to_raw_float(dec.decode(values[-holdout:][i : i + batch], size)),
                                          norm.raw_min, norm.raw_max)) for i in range(0, holdout, batch)])
    ex = np.concatenate([net.predict_maps(inputs[-holdout:][i : i + batch], size) for i in range(0, holdout, batch)])
    agreement = {"n_samples": holdout, "values_differing": round(float(np.mean(ex != flt)), 5),
                 "max_abs_difference": int(np.abs(ex - flt).max()),
                 "psnr_exact_vs_float_db": round(psnr_db(flt, ex, norm.peak), 3),
                 "psnr_float_db": round(psnr_db(held, flt, norm.peak), 4),
                 "psnr_exact_db": round(psnr_db(held, ex, norm.peak), 4)}
    block: dict[str, object] = {"weight_bits": weight_bits, "act_bits": act_bits, "gamma_bits": gamma_bits,
                                "latent_level": ref, "range_samples": len(raw) - holdout, "crop": list(size),
                                "range_margin": margin, "agreement": agreement}
    if m.has_hyper:  # the codec checks the input grid it builds against this
        block["input_frac_bits"] = frac_bits
    return net, block


def _reference_inputs(bundle: Bundle, raw: np.ndarray, ref: int, batch: int,
                      threads: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The exact network's integer inputs for raw at level ref, the latent values decoder.onnx takes
    for the same crops, and the inputs' fractional bits: symbols (0), or under a hyperprior the
    fixed-point y_hat * gain of hyperprior.exact_input, which carries the predicted mean (computed
    by the hyperprior stage calibration builds, as the sender and receiver will)."""
    from ..calibrate_hyper import hyper_stage
    from ..coding.hyper_latents import HyperInput
    from ..coding.quantize import dequantize_scaled, quantize_scaled
    from ..coding.tables import DEFAULT_PRECISION
    from ..runtime import Encoder

    m = bundle.manifest
    enc = Encoder(bundle, provider="cpu", threads=threads)
    chunks = [m.normalization.to_model(raw[i : i + batch]) for i in range(0, len(raw), batch)]
    if not m.has_hyper:
        level = m.latent_levels[ref]
        symbols = np.concatenate([quantize_scaled(enc.encode(x), gain=level.gain.reshape(1, -1, 1, 1))
                                  for x in chunks]).astype(np.int64)
        return symbols, dequantize_scaled(symbols, inverse_gain=level.inverse_gain.reshape(1, -1, 1, 1)), 0
    hyper = hyper_stage(bundle, DEFAULT_PRECISION)  # exact_input and values do not depend on the tables
    inputs, values = [], []
    for x in chunks:
        latents = hyper.quantize(HyperInput(*enc.encode_with_side(x)), ref)
        inputs.append(hyper.exact_input(latents, ref))
        values.append(hyper.values(latents, ref))
    return np.concatenate(inputs), np.concatenate(values), hyper.input_frac_bits
