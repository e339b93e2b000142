"""The checkerboard context of a hyperprior's latent, as exact integer networks (issue 23).

Why: under the hyperprior alone every element of y is coded with the Gaussian that h_s predicts
from z, so neighbouring elements of y say nothing about each other. He et al.'s checkerboard
context (CVPR 2021) splits y into two halves: the "anchors" (latent row + column even) are coded
as before; then, from the decoded anchors, each other element's mean and scale are predicted
again, and those elements are coded with the sharper Gaussian. On bsds-hyper2d's frozen latents
that saves 2-7 % of the bytes (benchmarks/photo_checkerboard.py). The prediction picks tables,
so sender and receiver must compute it identically: both networks here are IntegerNetworks
(exact.py), and every input they get is an integer both sides hold.

For every non-anchor element (b, i, j), with F = the mean grid's fractional bits:

1. a[b, c, i, j] = clip(rint(x / g_c), +-INPUT_LIMIT) at the anchors, where x = exact_input(...),
   the anchor's y_hat * g on the 2**-F grid (hyperprior.exact_input) and g the level's gain:
   y_hat on the 2**-F grid (one IEEE division, correctly rounded, then rint: the same everywhere);
2. the 12 anchors of its 5 x 5 neighbourhood (the taps (di, dj) with di + dj odd, ANCHOR_TAPS
   order, zero outside the map), channel vectors concatenated: 12 * M integers -> ``anchor``
   (dense + requant) -> 2M context features;
3. [features, clip(mean_code, +-INPUT_LIMIT), scale_code, level_codes[level]] (4M + 1 integers)
   -> ``params`` (three dense layers, ReLU requants between) -> 2M integers d;
4. mean_code += d[:M], clipped to the mean's limit; scale_code = clip(scale_code + d[M:], the
   hyper-synthesis' scale range).

The anchors keep h_s's codes. Only integers leave this module, so the table choice stays a
function of integers, as with h_s alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .exact import IntegerNetwork

CONTEXT_VERSION = 1
KERNEL = 5
# the anchor neighbours of a non-anchor element: offsets (di, dj) in the 5 x 5 window with di + dj odd
ANCHOR_TAPS: tuple[tuple[int, int], ...] = tuple(
    (di, dj) for di in range(-(KERNEL // 2), KERNEL // 2 + 1) for dj in range(-(KERNEL // 2), KERNEL // 2 + 1)
    if (di + dj) % 2)
INPUT_LIMIT = 1 << 15  # |y_hat| and |mu| below 128 on the 2**-8 grid; beyond, both sides clip alike


def anchor_mask(h: int, w: int) -> np.ndarray:
    """(h, w) bool: True where (i + j) is even, the anchors (coded first, with h_s's tables)."""
    return (np.add.outer(np.arange(h), np.arange(w)) % 2) == 0


@dataclass(frozen=True, eq=False)
class ExactCheckerboard:
    """anchor: 12 M -> 2 M features; params: 4 M + 1 -> 2 M code deltas (both flat IntegerNetworks).
    level_codes: the level input, one integer per latent level (log of the level's mean gain on the
    2**-8 grid, stored so no machine evaluates a logarithm)."""

    anchor: IntegerNetwork
    params: IntegerNetwork
    level_codes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_codes", tuple(int(v) for v in self.level_codes))
        m = self.channels
        if self.anchor.layout != "flat" or self.params.layout != "flat":
            raise BundleError("a checkerboard context's networks are flat")
        if self.anchor.n_in != len(ANCHOR_TAPS) * m or m < 1:
            raise BundleError(f"the checkerboard's anchor network takes {len(ANCHOR_TAPS)} x M inputs, got "
                              f"{self.anchor.n_in} for M = {m}")
        width = int(np.prod([d or 0 for d in self.anchor.out_shape]))
        if self.params.n_in != width + 2 * m + 1 or int(np.prod([d or 0 for d in self.params.out_shape])) != 2 * m:
            raise BundleError(f"the checkerboard's parameter network maps {width} + 2M + 1 inputs to 2M = {2 * m} "
                              f"deltas, got {self.params.n_in} -> {self.params.out_shape}")
        if not self.level_codes:
            raise BundleError("a checkerboard context needs one level code per latent level")
        if (self.params.in_lo, self.params.in_hi) != (-INPUT_LIMIT, INPUT_LIMIT) or (
                self.anchor.in_lo, self.anchor.in_hi) != (-INPUT_LIMIT, INPUT_LIMIT):
            raise BundleError(f"a checkerboard context's networks take inputs in +-{INPUT_LIMIT}")
        if any(abs(v) > INPUT_LIMIT for v in self.level_codes):
            raise BundleError(f"checkerboard level codes beyond +-{INPUT_LIMIT}")

    @property
    def channels(self) -> int:
        """M: the latent's channels."""
        return int(self.params.out_shape[0] or 0) // 2

    def deltas(self, anchors: np.ndarray, mean_code: np.ndarray, scale_code: np.ndarray,
               level: int) -> np.ndarray:
        """d (B, 2M, h, w) int64, zero at the anchors: anchors (B, M, h, w) integer y_hat codes (step 1),
        zero or anything at the non-anchors (ignored); mean_code, scale_code: h_s's codes."""
        a = np.asarray(anchors)
        b, m, h, w = a.shape
        if m != self.channels or np.shape(mean_code) != a.shape or np.shape(scale_code) != a.shape:
            raise InputError(f"the checkerboard takes (B, {self.channels}, h, w) anchors and codes, got {a.shape}, "
                             f"{np.shape(mean_code)}, {np.shape(scale_code)}")
        if not 0 <= level < len(self.level_codes):
            raise InputError(f"latent level {level} has no checkerboard level code (0..{len(self.level_codes) - 1})")
        out = np.zeros((b, 2 * m, h, w), dtype=np.int64)
        rows, cols = np.nonzero(~anchor_mask(h, w))
        if not rows.size:
            return out
        pad = KERNEL // 2
        grid = np.zeros((b, h + 2 * pad, w + 2 * pad, m), dtype=np.int64)
        grid[:, pad : pad + h, pad : pad + w] = np.where(anchor_mask(h, w), np.clip(a, -INPUT_LIMIT, INPUT_LIMIT),
                                                         0).transpose(0, 2, 3, 1)
        taps = np.stack([grid[:, rows + pad + di, cols + pad + dj] for di, dj in ANCHOR_TAPS], axis=2)
        features = self.anchor.predict(taps.reshape(b * rows.size, -1)).reshape(b * rows.size, -1)
        mc = np.asarray(mean_code)[:, :, rows, cols].transpose(0, 2, 1).reshape(b * rows.size, m)
        sc = np.asarray(scale_code)[:, :, rows, cols].transpose(0, 2, 1).reshape(b * rows.size, m)
        x = np.concatenate([features.astype(np.int64), np.clip(mc, -INPUT_LIMIT, INPUT_LIMIT), sc,
                            np.full((b * rows.size, 1), self.level_codes[level], dtype=np.int64)], axis=1)
        d = self.params.predict(x).reshape(b, rows.size, 2 * m)
        out[:, :, rows, cols] = d.transpose(0, 2, 1)
        return out

    # ---- storage: a "context" block inside hyper.npz's spec, arrays under "context.<net>."

    def to_spec(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        spec: dict[str, Any] = {"version": CONTEXT_VERSION, "kernel": KERNEL, "level_codes": list(self.level_codes)}
        arrays: dict[str, np.ndarray] = {}
        for name, net in (("anchor", self.anchor), ("params", self.params)):
            s, a = net.to_spec()
            for layer in s["layers"]:
                for k, v in layer.items():
                    if isinstance(v, str) and v in a:
                        layer[k] = f"context.{name}.{v}"
            arrays.update({f"context.{name}.{k}": v for k, v in a.items()})
            spec[name] = s
        return spec, arrays

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str) -> ExactCheckerboard:
        if spec.get("version") != CONTEXT_VERSION or spec.get("kernel") != KERNEL:
            raise BundleError(f"{where}: checkerboard context version {spec.get('version')!r} (kernel "
                              f"{spec.get('kernel')!r}) is not supported; upgrade latentwire")
        codes = spec["level_codes"]
        if not isinstance(codes, list) or any(not isinstance(v, int) or isinstance(v, bool) for v in codes):
            raise BundleError(f"{where}: checkerboard level codes must be integers")
        return cls(IntegerNetwork.from_spec(spec["anchor"], arrays, where),
                   IntegerNetwork.from_spec(spec["params"], arrays, where), tuple(codes))


def anchor_codes(exact_input: np.ndarray, gain: Sequence[float] | np.ndarray) -> np.ndarray:
    """Step 1: y_hat on the 2**-F grid from exact_input's y_hat * g on it, rint(x / g) per channel."""
    x = np.asarray(exact_input, dtype=np.float64)
    g = np.asarray(gain, dtype=np.float64).reshape(1, -1, 1, 1)
    return np.rint(x / g).astype(np.int64)
