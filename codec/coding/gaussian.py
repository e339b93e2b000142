"""Discretized zero-mean Gaussian tables and the exact, integer choice among them.

The hyperprior (codec/coding/hyperprior.py) codes each latent element with a Gaussian whose scale
the hyper-synthesis predicts per element. A table per predicted scale is out of the question, so
the coder holds K tables at log-spaced scales (CompressAI's default: 64 from 0.11 to 256) and
codes each element with the first table whose scale is >= the predicted one (a wider table costs
a little; a narrower one can cost a lot). Sender and receiver must pick the same table on every
machine, and the predicted scale sigma * g (sigma = exp(scale_code / 2**F), g the level's channel
gain) is a float: an exp, a log or a multiply evaluated at decode time could round the other way
near a table boundary on another CPU or libm. So the rule is moved onto the integer grid of
scale_code once, at bundle build, in float64:

    T[l, c, k] = floor(2**F * (log(scales[k]) - log(g[l, c])))      k = 0 .. K-2
    table(scale_code) = #{k : scale_code > T[l, c, k]}                (0 .. K-1)

For an integer n and a real x, n > floor(x) <=> n > x, so (up to the float64 rounding of the
build, fixed forever once T is stored) table = #{k <= K-2 : scales[k] < sigma * g}: the first
table whose scale is >= sigma * g, clamped to 0 below scales[0] and to K-1 above scales[K-2]
(scales beyond the largest table use it, so their rare far-out symbols go through the escape).
T is stored as integers (entropy.json); decoding compares integers only.

The tables are built once per bundle in float64 (math.erf / erfc, no scipy), stored packed, and
never recomputed at decode time: a libm that rounds one probability differently would otherwise
change an integer frequency and desynchronise the coder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .tables import DEFAULT_PRECISION, FreqTable, TableSet, table_from_pmf

# CompressAI's default scale table (GaussianConditional.get_scale_table): 64 log-spaced scales
DEFAULT_SCALE_MIN = 0.11
DEFAULT_SCALE_MAX = 256.0
DEFAULT_SCALE_LEVELS = 64
# Mass of both Gaussian tails left outside a table's range (coded through its escape)
TAIL_MASS = 1e-9
# fixed-point bits of the hyper-synthesis outputs (mean_code, scale_code) until the exact network says otherwise
DEFAULT_FRAC_BITS = 8
MAX_FRAC_BITS = 30
# A level's table-id lookup (channels x scale_code span, one byte each) is built when at most this
# large; wider spans (far more fractional bits) use one binary search per channel instead, same ids
LOOKUP_MAX_ENTRIES = 1 << 24
_SQRT2 = math.sqrt(2.0)


def scale_table(
    scale_min: float = DEFAULT_SCALE_MIN, scale_max: float = DEFAULT_SCALE_MAX, levels: int = DEFAULT_SCALE_LEVELS
) -> tuple[float, ...]:
    """``levels`` scales, exp of evenly spaced logs from scale_min to scale_max (float64)."""
    if not (0.0 < scale_min < scale_max and math.isfinite(scale_max)) or levels < 2:
        raise InputError(f"a scale table needs 0 < min < max and >= 2 levels, got {scale_min}, {scale_max}, {levels}")
    return tuple(float(s) for s in np.exp(np.linspace(math.log(scale_min), math.log(scale_max), int(levels))))


def tail_quantile(tail_mass: float = TAIL_MASS) -> float:
    """z with P(|N(0, 1)| > z) = tail_mass, by bisection on erfc (about 6.109 for 1e-9)."""
    if not 0.0 < tail_mass < 1.0:
        raise InputError(f"tail_mass must be in (0, 1), got {tail_mass}")
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.erfc(mid / _SQRT2) > tail_mass:
            lo = mid
        else:
            hi = mid
    return hi


def half_width(scale: float, tail_mass: float = TAIL_MASS) -> int:
    """A table of this scale covers the symbols -n .. n, n = ceil(scale * z_tail) (at least 1)."""
    return max(1, math.ceil(scale * tail_quantile(tail_mass)))


def gaussian_pmf(scale: float, n: int) -> np.ndarray:
    """P(k - 1/2 < X < k + 1/2) for X ~ N(0, scale^2), k = -n .. n, float64.

    Each bin is a difference of upper-tail probabilities at |k|, so far-out bins keep their
    relative precision (a difference of CDFs near 1 would cancel to zero)."""
    if not (scale > 0.0 and math.isfinite(scale)) or n < 0:
        raise InputError(f"gaussian_pmf needs a positive scale and n >= 0, got {scale}, {n}")
    d = scale * _SQRT2
    half = [math.erf(0.5 / d)] + [0.5 * (math.erfc((k - 0.5) / d) - math.erfc((k + 0.5) / d)) for k in range(1, n + 1)]
    return np.asarray(half[:0:-1] + half, dtype=np.float64)


def gaussian_table(scale: float, tail_mass: float = TAIL_MASS, precision: int = DEFAULT_PRECISION) -> FreqTable:
    """The integer table of one scale: symbols -n .. n with the discretized Gaussian's mass, the
    two tails (~tail_mass) on ESCAPE, every entry floored to >= 1 (tables.table_from_pmf)."""
    n = half_width(scale, tail_mass)
    return table_from_pmf(gaussian_pmf(scale, n), offset=-n, precision=precision)


def gaussian_tables(
    scales: Sequence[float], tail_mass: float = TAIL_MASS, precision: int = DEFAULT_PRECISION
) -> TableSet:
    """One table per scale, in order: what a bundle stores (built once, at calibration)."""
    check_scales(scales)
    return TableSet(tuple(gaussian_table(float(s), tail_mass, precision) for s in scales), precision=precision)


def check_scales(scales: Sequence[float]) -> None:
    s = np.asarray(scales, dtype=np.float64)
    if s.ndim != 1 or s.size < 2 or not np.all(np.isfinite(s)) or s[0] <= 0 or np.any(np.diff(s) <= 0):
        raise InputError(f"scales must be >= 2 positive, finite, strictly rising values, got {s.tolist()[:8]}...")


def scale_thresholds(gains: np.ndarray, scales: Sequence[float], frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """T (L, M, K-1) int64: T[l, c, k] = floor(2**frac_bits * (log(scales[k]) - log(gains[l, c]))).

    float64, once per bundle; the stored integers then define the table choice (module docstring)."""
    g = np.asarray(gains, dtype=np.float64)
    if g.ndim != 2 or g.size == 0 or not np.all(np.isfinite(g)) or not np.all(g > 0):
        raise InputError(f"gains must be (levels, channels) positive and finite, got shape {g.shape}")
    check_scales(scales)
    if not 0 <= frac_bits <= MAX_FRAC_BITS:
        raise InputError(f"frac_bits must be in 0..{MAX_FRAC_BITS}, got {frac_bits}")
    log_s = np.log(np.asarray(scales, dtype=np.float64)[:-1])
    t = np.floor(float(1 << frac_bits) * (log_s[None, None, :] - np.log(g)[:, :, None]))
    if np.abs(t).max() >= 1 << 31:
        raise InputError("scale thresholds leave int32: gains or frac_bits out of any sensible range")
    return t.astype(np.int64)


class TableChooser:
    """table ids from scale codes, integer comparisons only, for thresholds T (L, M, K-1).

    Per level, a lookup (M, span) of uint8/16 over the span of T's values: a code below every
    threshold gets 0, above every one K-1, so clipping codes into [min T, max T + 1] changes no id,
    and one gather replaces M binary searches (192 x 31 x 21 codes, K = 64: ~0.5 ms against 5-8 ms, plus
    ~6 ms once per level to build it)."""

    def __init__(self, thresholds: np.ndarray, lookup_max_entries: int = LOOKUP_MAX_ENTRIES) -> None:
        t = np.asarray(thresholds)
        if t.ndim != 3 or t.shape[2] < 1 or t.dtype.kind not in "iu":
            raise InputError(f"thresholds must be integers (levels, channels, K-1), got {t.shape} {t.dtype}")
        if np.any(np.diff(t, axis=2) < 0):
            raise InputError("thresholds must not decrease along the scale axis")
        self.thresholds = t.astype(np.int64)
        self.dtype = np.uint8 if t.shape[2] + 1 <= 256 else np.uint16
        self._lookup_max = int(lookup_max_entries)
        self._lookups: dict[int, tuple[int, int, np.ndarray] | None] = {}

    def _lookup(self, level: int) -> tuple[int, int, np.ndarray] | None:
        if level not in self._lookups:
            t = self.thresholds[level]
            lo, hi = int(t.min()), int(t.max()) + 1
            if t.shape[0] * (hi - lo + 1) > self._lookup_max:
                self._lookups[level] = None
            else:
                # entry (c, v - lo) = #{k : T[c, k] < v} = #{k : T[c, k] - lo + 1 <= v - lo}: a count
                # of each threshold one column to its right, summed along the row (integers only)
                width = hi - lo + 1
                marks = (np.arange(t.shape[0], dtype=np.int64)[:, None] * width + (t - lo + 1)).ravel()
                counts = np.bincount(marks, minlength=t.shape[0] * width).reshape(t.shape[0], width)
                self._lookups[level] = (lo, hi, np.cumsum(counts, axis=1).astype(self.dtype).ravel())
        return self._lookups[level]

    def __call__(self, scale_code: np.ndarray, level: int) -> np.ndarray:
        """scale_code (B, M, ...) integers -> table ids, same shape (uint8, or uint16 beyond 256 tables)."""
        n_levels, m, _ = self.thresholds.shape
        if not 0 <= level < n_levels:
            raise InputError(f"level {level} out of range: the hyperprior tables have {n_levels} levels")
        code = np.asarray(scale_code)
        if code.ndim < 2 or code.shape[1] != m:
            raise InputError(f"scale_code must be (B, {m}, ...), got shape {code.shape}")
        if code.size and code.dtype.kind not in "iu":
            raise InputError(f"scale_code must be integers, got dtype {code.dtype}")
        code = code.astype(np.int64, copy=False)
        channel_shape = (1, m) + (1,) * (code.ndim - 2)
        found = self._lookup(level)
        if found is None:
            out = np.empty(code.shape, dtype=self.dtype)
            for c in range(m):
                out[:, c] = np.searchsorted(self.thresholds[level, c], code[:, c], side="left")
            return out
        lo, hi, table = found
        idx = np.clip(code, lo, hi) - lo
        idx += (np.arange(m, dtype=np.int64) * (hi - lo + 1)).reshape(channel_shape)
        return table[idx]
