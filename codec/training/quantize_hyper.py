"""Quantize a trained hyper-synthesis h_s into its exact integer network (codec/coding/exact_hyper.py).

Post-training, like quantize_exact.py: the scales and means only choose tables and offsets, so a
slightly different prediction costs a few bits, never correctness, provided sender and receiver
compute the very same integers, which the exact network guarantees. h_s is read module by module
(ConvTranspose2d / Conv2d, each optionally followed by a ReLU); per layer (s_x: the scale of the
layer's integer input, 1 for z_hat):

  * a transposed convolution (stride s, padding p, output_padding q, kernel k) becomes ``dilate2d``
    by s, then a stride-1 convolution with the kernel flipped on both axes and its in/out axes
    swapped, padded k-1-p before and k-1-p+q after (so torch's 5/2/2/1 maps H to exactly 2H);
  * weights per output channel j: s_w[j] = max|W_j| / (2**(weight_bits-1) - 1), W_q = round(W / s_w);
    bias b_q = round(b / (s_x * s_w[j]));
  * a ReLU layer's output is requantized onto the unsigned grid s = R / (2**act_bits - 1), R =
    margin (HYPER_RANGE_MARGIN) * the largest pre-activation seen on the calibration z (a requant
    clipped at 0 IS the ReLU: rounding is monotone and keeps 0);
  * the last layer is requantized straight onto the fixed output grids: channels < M to mean codes
    (scale s_x * s_w[j] * 2**MEAN_FRAC_BITS), the rest to log-scale codes (2**SCALE_FRAC_BITS).

Each requant's multiplier takes up to MULTIPLIER_BITS, fewer where the layer's proved accumulator
bound needs it (|acc| * multiplier < 2**61: int64 with margin); IntegerNetwork proves the rest.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..coding.exact import IntegerNetwork
from ..coding.exact_hyper import MEAN_FRAC_BITS, MEAN_LIMIT, SCALE_FRAC_BITS, ExactHyperSynthesis, scale_code_range
from ..coding.exact_layers import INT64_SAFE, Conv2d, Dilate2d, Layer, Requant
from ..errors import InputError
from .models.hyper import HyperSynthesis
from .quantize_exact import DEFAULT_WEIGHT_BITS, INPUT_LIMIT, MULTIPLIER_BITS

MIN_MULTIPLIER_BITS = 12  # fewer would make a requant's scale coarser than the weights it follows
# ReLU grids reach this far past the largest calibration pre-activation. Wider than quantize_exact's
# 1.25: a photo unlike the calibration set clips otherwise (a 3-photo test set went 1.34x past);
# the two bits it spends are bought back by HYPER_ACT_BITS
HYPER_RANGE_MARGIN = 4.0
# ReLU activations: 18 bits (unsigned). Measured on a warm-up-trained h_s at the shipped size against its
# float self, on 20 held-out photos: max |log sigma error| 0.00272 at 16 bits, 0.00215 at 18 and 20 (the
# 16-bit weights' floor; 14-bit weights: 0.00264); partial sums then peak at 2**44, multipliers keep 17+ bits
HYPER_ACT_BITS = 18


@dataclass(frozen=True)
class ConvStep:
    """One layer of h_s as a stride-1 convolution: optional zero insertion, then weight (out, in, kh, kw)
    with zero pads (top, bottom, left, right); relu: a ReLU follows."""

    weight: np.ndarray  # float64
    bias: np.ndarray  # float64 (out,)
    pads: tuple[int, int, int, int]
    dilate: int
    relu: bool


def conv_steps(h_s: HyperSynthesis) -> list[ConvStep]:
    """h_s.net as ConvSteps; anything but plain convolutions and ReLUs is refused."""
    steps: list[ConvStep] = []
    for mod in h_s.net:
        if isinstance(mod, nn.ReLU):
            if not steps or steps[-1].relu:
                raise InputError("the hyper quantizer takes a ReLU only right after a convolution")
            steps[-1] = ConvStep(steps[-1].weight, steps[-1].bias, steps[-1].pads, steps[-1].dilate, True)
            continue
        if not isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)) or mod.groups != 1 \
                or tuple(mod.dilation) != (1, 1) or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise InputError(f"the hyper quantizer handles plain Conv2d / ConvTranspose2d and ReLU, not {mod}")
        w = mod.weight.detach().double().cpu().numpy()
        b = mod.bias.detach().double().cpu().numpy() if mod.bias is not None else np.zeros(mod.out_channels)
        (ph, pw), (sh, sw) = mod.padding, mod.stride
        kh, kw = mod.kernel_size
        if isinstance(mod, nn.Conv2d):
            if (sh, sw) != (1, 1):
                raise InputError(f"the hyper quantizer handles stride-1 Conv2d only, not {mod}")
            steps.append(ConvStep(w, b, (ph, ph, pw, pw), 1, False))
            continue
        oh, ow = mod.output_padding
        if sh != sw or kh - 1 - ph < 0 or kw - 1 - pw < 0:
            raise InputError(f"the hyper quantizer handles square-stride ConvTranspose2d with padding < kernel, "
                             f"not {mod}")
        flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        steps.append(ConvStep(flipped, b, (kh - 1 - ph, kh - 1 - ph + oh, kw - 1 - pw, kw - 1 - pw + ow), sh, False))
    if not steps or steps[-1].relu or any(not s.relu for s in steps[:-1]):
        raise InputError("the hyper quantizer needs convolutions each followed by a ReLU, the last one by nothing")
    if steps[-1].weight.shape[0] != 2 * h_s.m:
        raise InputError(f"h_s's last convolution must output 2M = {2 * h_s.m} channels (means, then log scales)")
    return steps


def relu_ranges(h_s: HyperSynthesis, z_samples: Sequence[np.ndarray], batch: int = 16) -> list[float]:
    """The largest pre-activation of each ReLU layer over the calibration z (float64 forward)."""
    net = copy.deepcopy(h_s.net).double().eval().cpu()
    top: list[float] = []
    with torch.no_grad():
        for group in z_samples:
            for i in range(0, len(group), batch):
                h = torch.from_numpy(np.asarray(group[i : i + batch], dtype=np.float64))
                k = 0
                for mod in net:
                    if isinstance(mod, nn.ReLU):
                        if k == len(top):
                            top.append(0.0)
                        top[k] = max(top[k], float(h.max()))
                        k += 1
                    h = mod(h)
    return top


def requant_for(scale: np.ndarray, lo: int, hi: int, acc_bound: int) -> Requant:
    """u = clip(round(acc * scale)) as a requant whose products stay below 2**61 for |acc| <= acc_bound."""
    bits = min(MULTIPLIER_BITS, int(math.floor(math.log2((INT64_SAFE // 2) / max(acc_bound, 1)))))
    if bits < MIN_MULTIPLIER_BITS:
        raise InputError(f"an accumulator bound of 2**{math.log2(acc_bound):.1f} leaves {bits} multiplier bits "
                         f"(< {MIN_MULTIPLIER_BITS}): use fewer weight or activation bits")
    shift = int(math.floor(math.log2((2**bits - 1) / float(scale.max()))))
    if not 0 <= shift <= 61:
        raise InputError(f"requant scale {float(scale.max()):g} does not fit a shift in 0..61: use other bit widths")
    return Requant(np.rint(scale * 2.0**shift).astype(np.int64), shift, lo, hi)


def quantize_hyper_synthesis(h_s: HyperSynthesis, z_samples: np.ndarray | Sequence[np.ndarray],
                             weight_bits: int = DEFAULT_WEIGHT_BITS,
                             act_bits: int = HYPER_ACT_BITS, margin: float = HYPER_RANGE_MARGIN,
                             input_limit: int = INPUT_LIMIT) -> ExactHyperSynthesis:
    """The exact integer network of h_s; ReLU ranges calibrated on z_samples: integer z_hat maps like the
    decoder sees (round(h_a(y)) on real photos), one array (S, N, hz, wz) or a sequence of them (photos
    of several sizes). z_hat is clipped to +-input_limit."""
    groups = [np.asarray(z_samples)] if isinstance(z_samples, np.ndarray) else [np.asarray(g) for g in z_samples]
    n = h_s.net[0].in_channels
    if not groups or any(g.ndim != 4 or not len(g) or g.shape[1] != n for g in groups):
        raise InputError(f"z_samples must be arrays (S, {n}, hz, wz) with S >= 1, got "
                         f"{[g.shape for g in groups]}")
    if not 2 <= weight_bits <= 24 or not 2 <= act_bits <= 24:
        raise InputError(f"weight and activation bits are 2..24, got {weight_bits} and {act_bits}")
    steps = conv_steps(h_s)
    ranges = relu_ranges(h_s, groups)
    wmax = 2 ** (weight_bits - 1) - 1
    top = 2**act_bits - 1
    s_x = 1.0  # z_hat is integer: grid 1
    x_bound = [int(input_limit)] * steps[0].weight.shape[1]
    layers: list[Layer] = []
    for k, st in enumerate(steps):
        s_w = np.abs(st.weight).max(axis=(1, 2, 3)) / wmax
        s_w[s_w == 0] = 1.0
        w_q = np.rint(st.weight / s_w[:, None, None, None]).astype(np.int64)
        b_q = np.rint(st.bias / (s_x * s_w)).astype(np.int64)
        if st.dilate > 1:
            layers.append(Dilate2d(st.dilate))
        conv = Conv2d(w_q, b_q, *st.pads)
        layers.append(conv)
        acc_bound = max(conv.bound(x_bound))
        if st.relu:
            s = margin * max(ranges[k], 1e-6) / top
            layers.append(requant_for(s_x * s_w / s, 0, top, acc_bound))
            s_x, x_bound = s, [top] * conv.weight.shape[0]
        else:
            m = h_s.m
            grid = np.concatenate([np.full(m, 2.0**MEAN_FRAC_BITS), np.full(m, 2.0**SCALE_FRAC_BITS)])
            limit = MEAN_LIMIT << MEAN_FRAC_BITS
            layers.append(requant_for(s_x * s_w * grid, -limit, limit, acc_bound))
    net = IntegerNetwork(-int(input_limit), int(input_limit), tuple(layers), (2 * h_s.m, None, None),
                         -(MEAN_LIMIT << MEAN_FRAC_BITS), MEAN_LIMIT << MEAN_FRAC_BITS, "channels_first_2d")
    return ExactHyperSynthesis(net, MEAN_FRAC_BITS, SCALE_FRAC_BITS, *scale_code_range(SCALE_FRAC_BITS))


@dataclass(frozen=True)
class HyperAgreement:
    """The exact h_s against the float one (as given, e.g. float32) on the same z_hat maps."""

    n_maps: int
    max_abs_mean: float  # max |mu_exact - mu_float|, in symbols
    max_abs_log_scale: float  # max |log sigma_exact - log sigma_float|
    mean_abs_mean: float
    mean_abs_log_scale: float
    scale_codes_differing: float  # fraction of scale codes != the float log sigma rounded onto the grid


def measure_hyper(h_s: HyperSynthesis, exact: ExactHyperSynthesis, z: np.ndarray,
                  size: tuple[int, int] | None = None, batch: int = 16) -> HyperAgreement:
    """Agreement over z (S, N, hz, wz); size: the latent's (h, w), default the full stride * (hz, wz)."""
    hw = size if size is not None else (z.shape[2] * exact.stride, z.shape[3] * exact.stride)
    dm, dl, off = [], [], []
    param = next(h_s.parameters())
    with torch.no_grad():
        for i in range(0, len(z), batch):
            zb = np.asarray(z[i : i + batch])
            mu, log_sigma = h_s(torch.from_numpy(zb.astype(np.float32)).to(param.device, param.dtype), hw)
            mean_code, scale_code = exact(zb, hw)
            mu_f, ls_f = mu.double().cpu().numpy(), log_sigma.double().cpu().numpy()
            dm.append(np.abs(exact.means(mean_code) - mu_f).ravel())
            dl.append(np.abs(exact.log_scales(scale_code) - ls_f).ravel())
            nearest = np.clip(np.rint(ls_f * (1 << exact.scale_frac_bits)), exact.scale_code_lo, exact.scale_code_hi)
            off.append((scale_code != nearest).ravel())
    m, ls, o = np.concatenate(dm), np.concatenate(dl), np.concatenate(off)
    return HyperAgreement(len(z), float(m.max()), float(ls.max()), float(m.mean()), float(ls.mean()), float(o.mean()))
