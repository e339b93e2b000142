"""Bjøntegaard delta rate and PSNR between two rate-distortion curves.

One number per comparison ("test needs X % fewer bytes than reference at equal PSNR, averaged over
an interval") is what codec papers quote, so latentwire's claims are stated the same way.

Method (Bjøntegaard, VCEG-M33, with the piecewise cubic interpolation later adopted by JVET
common test conditions instead of one global cubic fit): each curve is reduced to its Pareto
front, log10(rate) is interpolated as a function of PSNR by a shape-preserving piecewise cubic
Hermite (PCHIP, Fritsch-Carlson slopes as in scipy's PchipInterpolator), both interpolants are
integrated exactly over the PSNR interval, and

    BD-rate = 10 ** (mean(log10 r_test) - mean(log10 r_ref)) - 1     (x 100 %).

BD-PSNR swaps the axes (PSNR interpolated over log10 rate). Everything is numpy; no scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latentwire.codec.errors import InputError

ArrayLike = Sequence[float] | np.ndarray


def pareto_front(rates: ArrayLike, psnrs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The operating points no other point beats (fewer or equal bytes AND higher PSNR), sorted by
    rate with strictly increasing PSNR. Lossless points (PSNR inf) and empty rates are dropped: an
    RD curve is interpolated over finite PSNR only."""
    r = np.asarray(rates, dtype=np.float64)
    p = np.asarray(psnrs, dtype=np.float64)
    if r.shape != p.shape or r.ndim != 1:
        raise InputError(f"rates and psnrs must be 1-D of equal length, got {r.shape} and {p.shape}")
    keep = np.isfinite(r) & np.isfinite(p) & (r > 0)
    r, p = r[keep], p[keep]
    order = np.lexsort((-p, r))  # by rate, best PSNR first among equal rates
    front_r: list[float] = []
    front_p: list[float] = []
    for ri, pi in zip(r[order], p[order], strict=True):
        if not front_p or pi > front_p[-1]:
            if front_r and ri == front_r[-1]:
                continue
            front_r.append(ri)
            front_p.append(pi)
    return np.asarray(front_r), np.asarray(front_p)


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson derivatives at the knots (monotone data stays monotone between knots)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    n = x.size
    d = np.zeros(n)
    if n == 2:
        d[:] = delta[0]
        return d
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] > 0:
            w1 = 2 * h[k] + h[k - 1]
            w2 = h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    d[0] = _end_slope(h[0], h[1], delta[0], delta[1])
    d[-1] = _end_slope(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3 * m0):
        return 3 * m0
    return float(d)


@dataclass(frozen=True)
class Pchip:
    """A PCHIP interpolant y(x) over strictly increasing knots x."""

    x: np.ndarray
    y: np.ndarray
    d: np.ndarray

    @classmethod
    def fit(cls, x: ArrayLike, y: ArrayLike) -> Pchip:
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64)
        if xa.ndim != 1 or xa.shape != ya.shape or xa.size < 2:
            raise InputError(f"interpolation needs >= 2 points, got x {xa.shape}, y {ya.shape}")
        if np.any(np.diff(xa) <= 0):
            raise InputError("interpolation knots must be strictly increasing (take the Pareto front first)")
        return cls(xa, ya, pchip_slopes(xa, ya))

    def eval(self, t: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(value, derivative) at t; t must lie within [x[0], x[-1]]."""
        ta = np.atleast_1d(np.asarray(t, dtype=np.float64))
        if ta.size and (ta.min() < self.x[0] - 1e-12 or ta.max() > self.x[-1] + 1e-12):
            raise InputError(f"t outside the interpolation range [{self.x[0]:g}, {self.x[-1]:g}]")
        k = np.clip(np.searchsorted(self.x, ta, side="right") - 1, 0, self.x.size - 2)
        h = self.x[k + 1] - self.x[k]
        s = (ta - self.x[k]) / h
        y0, y1, d0, d1 = self.y[k], self.y[k + 1], self.d[k] * h, self.d[k + 1] * h
        s2, s3 = s * s, s * s * s
        val = (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * d0 + (-2 * s3 + 3 * s2) * y1 + (s3 - s2) * d1
        der = ((6 * s2 - 6 * s) * y0 + (3 * s2 - 4 * s + 1) * d0 + (-6 * s2 + 6 * s) * y1 + (3 * s2 - 2 * s) * d1) / h
        return val, der

    def __call__(self, t: ArrayLike) -> np.ndarray:
        return self.eval(t)[0]

    def integral(self, lo: float, hi: float) -> float:
        """Exact integral over [lo, hi]: on each cubic piece, the end-corrected trapezoid rule
        (h/2 (f(a)+f(b)) + h^2/12 (f'(a)-f'(b))) is exact for cubics."""
        inner = self.x[(self.x > lo) & (self.x < hi)]
        pts = np.concatenate([[lo], inner, [hi]])
        f, df = self.eval(pts)
        w = np.diff(pts)
        return float(np.sum(w * (f[:-1] + f[1:]) / 2 + w * w * (df[:-1] - df[1:]) / 12))


@dataclass(frozen=True)
class BDResult:
    """A Bjøntegaard delta over [lo, hi] (dB for BD-rate; log10 bytes for BD-PSNR).

    clipped: the requested interval was wider than both curves cover and was cut to the overlap.
    """

    value: float
    lo: float
    hi: float
    clipped: bool = False

    def to_dict(self) -> dict[str, float | bool]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "clipped": self.clipped}


def _interval(a: np.ndarray, b: np.ndarray, lo: float | None, hi: float | None) -> tuple[float, float, bool]:
    olo, ohi = max(a[0], b[0]), min(a[-1], b[-1])
    want_lo = olo if lo is None else float(lo)
    want_hi = ohi if hi is None else float(hi)
    use_lo, use_hi = max(want_lo, olo), min(want_hi, ohi)
    if not use_lo < use_hi:
        raise InputError(
            f"the curves do not overlap on [{want_lo:g}, {want_hi:g}] (one spans [{a[0]:g}, {a[-1]:g}], "
            f"the other [{b[0]:g}, {b[-1]:g}]): no Bjøntegaard delta exists there"
        )
    return float(use_lo), float(use_hi), bool(use_lo > want_lo or use_hi < want_hi)


def bd_rate(
    ref_rates: ArrayLike,
    ref_psnrs: ArrayLike,
    test_rates: ArrayLike,
    test_psnrs: ArrayLike,
    lo: float | None = None,
    hi: float | None = None,
) -> BDResult:
    """Average rate difference of test vs reference at equal PSNR over [lo, hi] dB, in percent
    (negative: test needs fewer bytes). The interval defaults to, and is clipped to, the PSNR
    range both curves cover."""
    rr, rp = pareto_front(ref_rates, ref_psnrs)
    tr, tp = pareto_front(test_rates, test_psnrs)
    a, b, clipped = _interval(rp, tp, lo, hi)
    ref = Pchip.fit(rp, np.log10(rr))
    test = Pchip.fit(tp, np.log10(tr))
    mean_diff = (test.integral(a, b) - ref.integral(a, b)) / (b - a)
    return BDResult(float((10.0**mean_diff - 1.0) * 100.0), a, b, clipped)


def bd_psnr(
    ref_rates: ArrayLike,
    ref_psnrs: ArrayLike,
    test_rates: ArrayLike,
    test_psnrs: ArrayLike,
    lo_rate: float | None = None,
    hi_rate: float | None = None,
) -> BDResult:
    """Average PSNR gain (dB) of test over reference at equal rate, over [lo_rate, hi_rate] bytes
    (lo/hi of the result are log10 bytes)."""
    rr, rp = pareto_front(ref_rates, ref_psnrs)
    tr, tp = pareto_front(test_rates, test_psnrs)
    la, lb = np.log10(rr), np.log10(tr)
    a, b, clipped = _interval(
        la, lb, None if lo_rate is None else np.log10(lo_rate), None if hi_rate is None else np.log10(hi_rate)
    )
    ref = Pchip.fit(la, rp)
    test = Pchip.fit(lb, tp)
    return BDResult(float((test.integral(a, b) - ref.integral(a, b)) / (b - a)), a, b, clipped)


def rate_at_psnr(rates: ArrayLike, psnrs: ArrayLike, target_db: float) -> float | None:
    """Bytes the curve needs for target_db (PCHIP on its Pareto front); None outside its range."""
    r, p = pareto_front(rates, psnrs)
    if r.size == 0 or not p[0] <= target_db <= p[-1]:
        return None
    if r.size == 1:
        return float(r[0])
    return float(10.0 ** Pchip.fit(p, np.log10(r))([target_db])[0])


def psnr_at_rate(rates: ArrayLike, psnrs: ArrayLike, rate: float) -> float | None:
    """PSNR the curve reaches with `rate` bytes (PCHIP over log rate); None outside its range."""
    r, p = pareto_front(rates, psnrs)
    if r.size == 0 or not r[0] <= rate <= r[-1]:
        return None
    if r.size == 1:
        return float(p[0])
    return float(Pchip.fit(np.log10(r), p)(np.log10(rate))[0])
