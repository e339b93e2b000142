"""The exact network's inverse GDN: the photo decoder's normalizer in integers (issue 24 part 1).

Why: a photo bundle (family gdn2d) decodes through transposed convolutions and inverse GDN,
y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2) (Balle et al.). Its max-error levels take their
residual against the decoder's prediction, so the prediction must be the same integers on every
machine: the square root included. This layer computes, on a channels-last int64 tensor x whose
|x_j| the network has already bounded:

  acc_i = beta_i + sum_j gamma_ij * x_j^2      (integer gamma >= 0, beta >= 1; one float64 matmul
                                                on integer operands, every partial sum proved < 2**53)
  r_i   = isqrt(acc_i)                         (floor of the real square root: float64 sqrt, which
                                                IEEE 754 rounds correctly, then one integer
                                                correction step each way, so the result does not
                                                even rely on that)
  u_i   = clip(rounding_shift(rounding_shift(x_i * r_i, pre_shift) * multiplier_i, shift), lo, hi)

The last line is a requant onto the next layer's grid; the pre-shift keeps its int64 product
below 2**62 (proved in ``bound``). codec/FORMAT.md ("Exact prediction") lists it as kind ``igdn``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..errors import BundleError
from .exact_layers import FLOAT64_EXACT, INT64_SAFE, rounding_shift


def isqrt_int64(acc: np.ndarray) -> np.ndarray:
    """floor(sqrt(acc)) for int64 0 <= acc < 2**53, exactly: float64's correctly rounded sqrt lands
    within one of the answer, and one integer check each way settles it."""
    r = np.floor(np.sqrt(acc.astype(np.float64))).astype(np.int64)
    r -= (r * r > acc).astype(np.int64)
    r += ((r + 1) * (r + 1) <= acc).astype(np.int64)
    return r


@dataclass(frozen=True, eq=False)
class Igdn:
    """u = requant(x * isqrt(beta + gamma @ x^2)) per channel (the last axis); see the module docstring."""

    gamma: np.ndarray
    beta: np.ndarray
    multiplier: np.ndarray
    pre_shift: int
    shift: int
    lo: int
    hi: int
    _gt: np.ndarray = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)
    OP: ClassVar[str] = "igdn"
    ARRAYS: ClassVar[tuple[str, ...]] = ("gamma", "beta", "multiplier")
    SCALARS: ClassVar[tuple[str, ...]] = ("pre_shift", "shift", "lo", "hi")

    def __post_init__(self) -> None:
        g, b, m = np.asarray(self.gamma), np.asarray(self.beta), np.asarray(self.multiplier)
        c = b.shape[0] if b.ndim == 1 else -1
        if (g.ndim != 2 or g.shape != (c, c) or m.shape != (c,) or c < 1
                or any(a.dtype.kind != "i" for a in (g, b, m))):
            raise BundleError(f"exact igdn needs integer gamma (C, C), beta (C,) and multiplier (C,), got "
                              f"{g.shape} {g.dtype}, {b.shape} {b.dtype}, {m.shape} {m.dtype}")
        if g.min() < 0 or b.min() < 1:
            raise BundleError("exact igdn needs gamma >= 0 and beta >= 1 (a square root of a positive sum)")
        for k in self.SCALARS:
            object.__setattr__(self, k, int(getattr(self, k)))
        if not (0 <= self.pre_shift < 62 and 0 <= self.shift < 62 and self.lo <= self.hi):
            raise BundleError("exact igdn needs shifts in 0..61 and lo <= hi")
        object.__setattr__(self, "gamma", g.astype(np.int64))
        object.__setattr__(self, "beta", b.astype(np.int64))
        object.__setattr__(self, "multiplier", m.astype(np.int64))
        object.__setattr__(self, "_gt", np.ascontiguousarray(self.gamma.T, dtype=np.float64))
        object.__setattr__(self, "_b", self.beta.astype(np.float64))

    @property
    def channels(self) -> int:
        return int(self.beta.size)

    def bound(self, x_bound: list[int]) -> list[int]:
        """Refuses a network whose sum of squares could reach 2**53 or whose requant product 2**62."""
        if len(x_bound) != self.channels:
            raise BundleError(f"exact igdn takes {self.channels} channels, its input has {len(x_bound)}")
        sq = [int(b) * int(b) for b in x_bound]
        worst = 0
        for i, (row, beta) in enumerate(zip(self.gamma.tolist(), self.beta.tolist(), strict=True)):
            acc = sum(int(g) * s for g, s in zip(row, sq, strict=True)) + int(beta)
            if acc >= FLOAT64_EXACT:
                raise BundleError(f"exact igdn's sum of squares can reach {acc} >= 2**53: quantize with fewer "
                                  "activation or gamma bits")
            y = int(x_bound[i]) * math.isqrt(acc)
            worst = max(worst, ((y >> self.pre_shift) + 1) * abs(int(self.multiplier[i])))
        if worst + (1 << self.shift) >= INT64_SAFE:
            raise BundleError(f"exact igdn's requant product can reach {worst} >= 2**62: raise its pre-shift")
        return [max(abs(self.lo), abs(self.hi))] * self.channels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        sq = (x * x).astype(np.float64)
        acc = (sq.reshape(-1, self.channels) @ self._gt + self._b).astype(np.int64).reshape(x.shape)
        u = rounding_shift(rounding_shift(x * isqrt_int64(acc), self.pre_shift) * self.multiplier, self.shift)
        return np.clip(u, self.lo, self.hi, out=u)
