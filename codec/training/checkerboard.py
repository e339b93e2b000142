"""Training a checkerboard context on a hyperprior bundle's frozen latents, and its exact form.

Why frozen: the encoder, h_s and the decoder stay as shipped, so only y's rate can move, and the
two small networks train on cached latents in minutes on a CPU instead of the days the transforms
took. Why straight-through: the coder codes rint(y*g - mu*g); trained on those rounded symbols
(rounded forward, identity backward) the context saved 2-7 % on validation photos, while the usual
uniform-noise proxy made it 1-2 % worse than no context at all (BENCHMARKS.md, session 14).

The float model (CheckerboardContext) is He et al.'s: the anchors keep h_s's (mu, log sigma); the
others get them from a 5 x 5 convolution over the decoded anchors plus h_s's parameters and the
level, through three 1 x 1 convolutions. ``quantize_context`` turns it into the exact networks of
codec/coding/exact_checkerboard.py: the 5 x 5 convolution's anchor taps become one dense layer over
the 12 gathered anchor vectors, the 1 x 1 convolutions dense layers, ReLUs requants clipped at 0,
and the last layer is requantized straight onto the mean and log-scale code grids.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..coding.exact import IntegerNetwork
from ..coding.exact_checkerboard import ANCHOR_TAPS, INPUT_LIMIT, KERNEL, ExactCheckerboard
from ..coding.exact_hyper import MEAN_FRAC_BITS, MEAN_LIMIT, SCALE_FRAC_BITS
from ..coding.exact_layers import Dense, Layer, Requant
from ..errors import InputError
from .models.hyper import gaussian_bits
from .quantize_hyper import requant_for

BALANCE_SWEEPS = 200  # balance_context: at most this many sweeps, until no unit rescales by more than
BALANCE_TOLERANCE = 1e-6  # this (log scale)
LOG_SCALE_CLAMP = (-4.0, 8.0)  # the float model's refined log sigma (the exact one clips to h_s's range)
# 8-bit weights (stored as int8: hyper.npz 3 MB smaller than at 12 bits, which keeps bsds-hyper2d under
# its 20 MB ceiling) coded 10 validation photos within +-0.03 % of 12-bit ones at every level; 7 bits: +0.1 %
CONTEXT_WEIGHT_BITS = 8
CONTEXT_ACT_BITS = 16
CONTEXT_RANGE_MARGIN = 2.0  # activation grids reach this far past the largest calibration value


def anchor_mask_t(t: torch.Tensor) -> torch.Tensor:
    """(1, 1, h, w) of t's dtype: 1 at the anchors ((i + j) even), as exact_checkerboard.anchor_mask."""
    h, w = t.shape[2:]
    ii = torch.arange(h, device=t.device).view(h, 1)
    jj = torch.arange(w, device=t.device).view(1, w)
    return ((ii + jj) % 2 == 0).to(t.dtype).view(1, 1, h, w)


class CheckerboardContext(nn.Module):
    """(y_hat, mu, log sigma, gain) -> refined (mu, log sigma); the anchors' are returned unchanged."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.m = m
        self.context = nn.Conv2d(m, 2 * m, KERNEL, padding=KERNEL // 2)
        self.params = nn.Sequential(
            nn.Conv2d(4 * m + 1, 3 * m, 1), nn.ReLU(), nn.Conv2d(3 * m, 3 * m, 1), nn.ReLU(),
            nn.Conv2d(3 * m, 2 * m, 1))

    def forward(self, y_hat: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anchors = anchor_mask_t(y_hat)
        ctx = self.context(y_hat * anchors)
        level = torch.log(gain.mean()).view(1, 1, 1, 1).expand(y_hat.shape[0], 1, *y_hat.shape[2:])
        d = self.params(torch.cat([ctx, mu, log_sigma, level], 1))
        new_mu = mu + d[:, : self.m]
        new_ls = (log_sigma + d[:, self.m :]).clamp(*LOG_SCALE_CLAMP)
        keep = anchors.bool()
        return torch.where(keep, mu, new_mu), torch.where(keep, log_sigma, new_ls)


def context_bits(model: nn.Module | None, y: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                 gain: torch.Tensor, mode: str = "round") -> tuple[torch.Tensor, torch.Tensor]:
    """(bits without the context, bits with it) per sample at one level's gain (M,): mode "round" (the
    coder's symbols), "ste" (the same, trainable) or "noise" (the uniform-noise proxy)."""
    g = gain.view(1, -1, 1, 1)

    def rate(m_: torch.Tensor, ls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = y * g - m_ * g
        if mode == "noise":
            sym = scaled + torch.empty_like(scaled).uniform_(-0.5, 0.5)
        else:  # "round", or "ste": rounded forward, identity backward
            sym = scaled + (torch.round(scaled) - scaled).detach()
        bits = gaussian_bits(sym, torch.exp(ls) * g).flatten(1).sum(1)
        return bits, (torch.round(scaled) + m_ * g) / g

    base, y_hat = rate(mu, log_sigma)
    if model is None:
        return base, base
    cm, cls = model(y_hat, mu, log_sigma, g)
    return base, rate(cm, cls)[0]


@dataclass(frozen=True)
class CurvePoint:
    step: int
    seconds: float
    train_saving: float  # y bits saved on the step's batch


def train_context(y: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, gains: Sequence[torch.Tensor],
                  minutes: float, batch: int = 16, lr: float = 3e-4, mode: str = "ste",
                  model: CheckerboardContext | None = None, seed: int = 1,
                  log: Callable[[str], None] | None = None) -> tuple[CheckerboardContext, list[CurvePoint]]:
    """Adam on the mean bits per pixel of random batches at a random level, for ``minutes``."""
    if not len(y) or not gains:
        raise InputError("training a checkerboard context needs latents and at least one level's gain")
    net = model if model is not None else CheckerboardContext(int(y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    curve: list[CurvePoint] = []
    t0 = time.perf_counter()
    step = 0
    pixels = y.shape[2] * y.shape[3] * 16 * 16
    while time.perf_counter() - t0 < minutes * 60:
        idx = torch.from_numpy(rng.integers(len(y), size=batch))
        level = int(rng.integers(len(gains)))
        base, ctx = context_bits(net, y[idx], mu[idx], log_sigma[idx], gains[level], mode)
        loss = ctx.mean() / pixels
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            curve.append(CurvePoint(step, round(time.perf_counter() - t0, 1),
                                    float(1 - ctx.detach().sum() / base.sum())))
            if log is not None:
                log(f"step {step}, {curve[-1].seconds:.0f} s: {curve[-1].train_saving:+.2%} of y's bits saved "
                    f"on this batch (level {level})")
    return net, curve


def _activation_ranges(model: CheckerboardContext, y: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                       gains: Sequence[torch.Tensor], batch: int = 16) -> list[float]:
    """max |context features|, then the two ReLUs' maxima, at the non-anchor elements, over every level."""
    top = [0.0, 0.0, 0.0]
    with torch.no_grad():
        for g in gains:
            gg = g.view(1, -1, 1, 1)
            for i in range(0, len(y), batch):
                yb, mb, lb = y[i : i + batch], mu[i : i + batch], log_sigma[i : i + batch]
                y_hat = (torch.round(yb * gg - mb * gg) + mb * gg) / gg
                others = anchor_mask_t(y_hat) == 0
                ctx = model.context(y_hat * anchor_mask_t(y_hat))
                level = torch.log(gg.mean()).view(1, 1, 1, 1).expand(yb.shape[0], 1, *yb.shape[2:])
                h = torch.cat([ctx, mb, lb, level], 1)
                top[0] = max(top[0], float(ctx.abs().amax(1, keepdim=True)[others.expand_as(ctx[:, :1])].max()))
                k = 1
                for layer in model.params:
                    h = layer(h)
                    if isinstance(layer, nn.ReLU):
                        top[k] = max(top[k], float(h.amax(1, keepdim=True)[others.expand_as(h[:, :1])].max()))
                        k += 1
    return top


def quantize_context(model: CheckerboardContext, y: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                     gains: Sequence[torch.Tensor], weight_bits: int = CONTEXT_WEIGHT_BITS,
                     act_bits: int = CONTEXT_ACT_BITS, margin: float = CONTEXT_RANGE_MARGIN) -> ExactCheckerboard:
    """The exact context of ``model``; activation ranges calibrated on (y, mu, log sigma) at every gain."""
    m = model.m
    ranges = _activation_ranges(model, y, mu, log_sigma, gains)
    wmax = 2 ** (weight_bits - 1) - 1
    half = 2 ** (act_bits - 1) - 1
    top = 2**act_bits - 1

    def dense(w: np.ndarray, b: np.ndarray, s_x: np.ndarray) -> tuple[Dense, np.ndarray]:
        """W (out, in) acting on integers of per-input scale s_x -> integer layer, accumulator scale (out,)."""
        eff = w * s_x[None, :]
        s_w = np.abs(eff).max(axis=1) / wmax
        s_w[s_w == 0] = 1.0
        return Dense(np.rint(eff / s_w[:, None]).astype(np.int64), np.rint(b / s_w).astype(np.int64)), s_w

    def bias(mod: nn.Conv2d) -> np.ndarray:
        return np.zeros(mod.out_channels) if mod.bias is None else mod.bias.detach().double().numpy()

    conv = model.context.weight.detach().double().numpy()  # (2M, M, k, k)
    c = KERNEL // 2
    w_anchor = np.stack([conv[:, :, c + di, c + dj] for di, dj in ANCHOR_TAPS], axis=1).reshape(2 * m, -1)
    grid = 2.0**-MEAN_FRAC_BITS  # anchors' y_hat codes
    layer, acc = dense(w_anchor, bias(model.context), np.full(w_anchor.shape[1], grid))
    s_ctx = margin * max(ranges[0], 1e-6) / half
    bound = max(layer.bound([INPUT_LIMIT] * layer.in_channels))
    anchor = IntegerNetwork(-INPUT_LIMIT, INPUT_LIMIT,
                            (layer, requant_for(acc / s_ctx, -half, half, bound)), (2 * m,), -half, half)

    s_x = np.concatenate([np.full(2 * m, s_ctx), np.full(m, 2.0**-MEAN_FRAC_BITS),
                          np.full(m, 2.0**-SCALE_FRAC_BITS), [2.0**-SCALE_FRAC_BITS]])
    convs = _param_convs(model)
    layers: list[Layer] = []
    x_bound = [INPUT_LIMIT] * len(s_x)
    limit = MEAN_LIMIT << MEAN_FRAC_BITS
    for k, mod in enumerate(convs):
        layer, acc = dense(mod.weight.detach().double().numpy()[:, :, 0, 0], bias(mod), s_x)
        bound = max(layer.bound(x_bound))
        layers.append(layer)
        if k < len(convs) - 1:
            s = margin * max(ranges[k + 1], 1e-6) / top
            layers.append(requant_for(acc / s, 0, top, bound))
            s_x, x_bound = np.full(layer.weight.shape[0], s), [top] * layer.weight.shape[0]
        else:
            out_grid = np.concatenate([np.full(m, 2.0**MEAN_FRAC_BITS), np.full(m, 2.0**SCALE_FRAC_BITS)])
            layers.append(requant_for(acc * out_grid, -limit, limit, bound))
    params = IntegerNetwork(-INPUT_LIMIT, INPUT_LIMIT, tuple(layers), (2 * m,), -limit, limit)
    codes = tuple(int(round(math.log(float(g.double().mean())) * 2**SCALE_FRAC_BITS)) for g in gains)
    return ExactCheckerboard(anchor, params, codes)


# ---------------------------------------------------------------------- data: crops of photos, encoded


def photo_files(folders: Sequence[str | Path]) -> list[Path]:
    """Every .jpg / .jpeg / .png under the folders (recursively), sorted per folder."""
    out: list[Path] = []
    for f in folders:
        root = Path(f)
        if not root.is_dir():
            raise InputError(f"{root} is not a folder of photos")
        out += sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not out:
        raise InputError(f"no photos under {', '.join(str(f) for f in folders)}")
    return out


def load_photo(path: Path) -> np.ndarray:
    """(3, H, W) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()


def crop_latents(encode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]], files: Sequence[Path],
                 crops: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mu, log sigma) float32 tensors of ``crops`` random size x size crops (photos smaller than that
    are skipped); ``encode`` maps one (1, 3, size, size) uint8 crop to the three arrays."""
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    tries = 0
    while len(parts) < crops:
        tries += 1
        if tries > 20 * crops + 100:
            raise InputError(f"only {len(parts)} of the photos are at least {size} x {size}")
        img = load_photo(files[int(rng.integers(len(files)))])
        _, h, w = img.shape
        if h < size or w < size:
            continue
        i, j = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        parts.append(encode(img[None, :, i : i + size, j : j + size]))
        if len(parts) % 100 == 0:
            print(f"  encoded {len(parts)}/{crops} crops", file=sys.stderr, flush=True)
    return tuple(torch.from_numpy(np.concatenate([p[k] for p in parts]).astype(np.float32))  # type: ignore[return-value]
                 for k in range(3))


def dequantize_context(exact: ExactCheckerboard) -> CheckerboardContext:
    """A float CheckerboardContext computing what ``exact`` computes, up to its rounding: how a later
    session resumes from a shipped bundle, whose float state stayed on the machine that trained it.

    The float model's hidden units are the integer network's (ReLU commutes with a positive scale, so
    any per-layer scale gives the same function); its inputs and outputs are fixed by the format:
    anchors and codes on the 2**-8 grids, deltas in symbols."""
    m = exact.channels
    model = CheckerboardContext(m)

    def pairs(net: IntegerNetwork) -> list[tuple[Dense, np.ndarray]]:
        """(dense layer, its requant's multiplier / 2**shift) per layer of a dense/requant stack."""
        lay = net.layers
        if len(lay) % 2 or not all(isinstance(a, Dense) and isinstance(b, Requant)
                                   for a, b in zip(lay[::2], lay[1::2], strict=True)):
            raise InputError("a checkerboard network is dense layers, each followed by its requant")
        out = []
        for a, b in zip(lay[::2], lay[1::2], strict=True):
            assert isinstance(a, Dense) and isinstance(b, Requant)  # checked above; for the type checker
            out.append((a, b.multiplier.astype(np.float64) / 2.0**b.shift))
        return out

    anchor, params = pairs(exact.anchor), pairs(exact.params)
    convs = _param_convs(model)
    if len(anchor) != 1 or len(params) != len(convs):
        raise InputError(f"a checkerboard context is 1 anchor layer and {len(convs)} parameter layers")
    (first, r), = anchor
    w = first.weight.astype(np.float64) * r[:, None] * 2.0**MEAN_FRAC_BITS  # per y_hat unit (codes: 2**-F)
    conv = np.zeros((2 * m, m, KERNEL, KERNEL))
    c = KERNEL // 2
    for k, (di, dj) in enumerate(ANCHOR_TAPS):
        conv[:, :, c + di, c + dj] = w[:, k * m : (k + 1) * m]
    # float inputs [features, mu, log sigma, level] -> the integers the exact network takes
    in_scale = np.concatenate([np.ones(2 * m), np.full(m, 2.0**MEAN_FRAC_BITS), np.full(m + 1, 2.0**SCALE_FRAC_BITS)])
    out_scale = np.concatenate([np.full(m, 2.0**-MEAN_FRAC_BITS), np.full(m, 2.0**-SCALE_FRAC_BITS)])
    with torch.no_grad():
        model.context.weight.copy_(torch.from_numpy(conv))
        _set_bias(model.context, first.bias.astype(np.float64) * r)
        for k, ((lay, rq), mod) in enumerate(zip(params, convs, strict=True)):
            if k == len(convs) - 1:
                rq = rq * out_scale
            wk = lay.weight.astype(np.float64) * rq[:, None] * (in_scale[None, :] if k == 0 else 1.0)
            mod.weight.copy_(torch.from_numpy(wk[:, :, None, None]))
            _set_bias(mod, lay.bias.astype(np.float64) * rq)
    return model


def balance_context(model: CheckerboardContext) -> None:
    """Rescale every hidden unit so its incoming and outgoing weights have equal norms; the function
    is unchanged (the context's features enter linearly, ReLU commutes with a positive scale).

    Why: the integer networks' units run at whatever scale their requants chose, so the float model
    dequantize_context rebuilds has weights from ~1e-5 to ~1e2 in consecutive layers. Adam moves every
    weight by about its learning rate per step, which wrecks the small ones: training resumed from
    the shipped bundle unbalanced spent ten times the bits of no context at all after 50 steps
    (balanced: it saved 6.9 %, as the bundle does). Only for training: requantized as it stands,
    the dequantized model reproduces the integer networks more closely."""
    convs = [model.context, *_param_convs(model)]
    with torch.no_grad():
        for _ in range(BALANCE_SWEEPS):  # a unit's out-weights are the next units' in-weights: sweep to a fixpoint
            worst = 0.0
            for into, out in pairwise(convs):
                units = into.weight.shape[0]
                w_in = into.weight.reshape(units, -1).norm(dim=1)
                w_out = out.weight[:, :units].reshape(out.weight.shape[0], units, -1).norm(dim=(0, 2))
                live = (w_in > 0) & (w_out > 0)
                s = torch.where(live, torch.sqrt(w_out / w_in.clamp_min(1e-30)), torch.ones_like(w_in))
                into.weight.mul_(s.view(-1, *([1] * (into.weight.dim() - 1))))
                if into.bias is not None:
                    into.bias.mul_(s)
                out.weight[:, :units].div_(s.view(1, -1, *([1] * (out.weight.dim() - 2))))
                worst = max(worst, float(torch.log(s).abs().max()))
            if worst < BALANCE_TOLERANCE:
                break


def _param_convs(model: CheckerboardContext) -> list[nn.Conv2d]:
    """The parameter network's convolutions, input side first (its ReLUs between them)."""
    return [mod for mod in model.params if isinstance(mod, nn.Conv2d)]


def _set_bias(mod: nn.Conv2d, value: np.ndarray) -> None:
    if mod.bias is None:
        raise InputError("the checkerboard's convolutions have biases")
    mod.bias.copy_(torch.from_numpy(value))
