"""The residual layer: near-lossless correction of the decoder's output with a max-error bound.

Raw data is integer (uint8 pixels, 11-bit ECG counts), so the layer works in raw integer units:
the receiver's prediction is p = rint(clip(raw_float)) where raw_float is the decoder output
mapped back to raw units (``Normalization.to_raw_float``); the sender codes r = x - p quantized
with step 2D+1, q = sign(r) * floor((|r| + D) / (2D+1)), and the receiver rebuilds
clip(p + q*(2D+1)), so |x - recon| <= D always (D = 0 is lossless).

Why a context: residual statistics depend strongly on the predicted value (MNIST background
predictions are almost always exact, mid-grey edges are not), so each bucket of p gets its own
table; one shared table cost about twice the bytes. The tables for ANY D derive, with integer
arithmetic only, from per-context histograms of r in raw units gathered at calibration.

The cross-provider hazard (documented in FORMAT.md): p and its context come from the receiver's
float output. If that differs slightly from the sender's (another batch size, CPU vs CUDA), a value
near a rounding boundary moves p by 1 (that sample's error becomes D+1) and, if the move crosses a
context-bucket edge, the entropy decoder switches tables and desyncs. Defences:
  * guard bands: the bucket grid can be shifted by s * width/n_shifts; per frame the sender picks
    the first shift for which no sample lies within ``guard`` raw units of a rounding boundary that
    is also a bucket edge, and codes s (about 0.08 bits per frame when s = 0). Float drift below
    ``guard`` then never changes a context, so no desync;
  * detection: ``reconstruction_crc`` lets the packet carry a CRC32 of the sender's
    reconstruction; the receiver compares and knows whether its samples are bit-exact.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .entropy import DEFAULT_PRECISION, FreqTable, StreamDecoder, StreamEncoder, TableSet, table_from_counts
from .errors import BitstreamError, BundleError, InputError

MAX_RADIUS = 4095  # histogram half-width cap; residuals beyond it are coded through the escape


@dataclass(frozen=True)
class ContextSpec:
    """How a prediction p (raw integer) maps to a residual table.

    n_contexts equal buckets over [raw_min, raw_max]; n_shifts alternative bucket grids (offset by
    s * width // n_shifts) the sender may pick per frame to keep samples away from bucket edges;
    guard: the float drift (raw units) the shifts protect against.
    """

    raw_min: int
    raw_max: int
    n_contexts: int = 16
    n_shifts: int = 8
    guard: float = 0.01

    def __post_init__(self) -> None:
        if int(self.raw_max) <= int(self.raw_min):
            raise InputError(f"raw_max ({self.raw_max}) must exceed raw_min ({self.raw_min})")
        if not 1 <= self.n_contexts <= 255:
            raise InputError(f"n_contexts must be in 1..255, got {self.n_contexts}")
        if not 1 <= self.n_shifts <= 64:
            raise InputError(f"n_shifts must be in 1..64, got {self.n_shifts}")
        if not 0.0 <= float(self.guard) < 0.5:
            raise InputError(f"guard must be in [0, 0.5), got {self.guard}")
        object.__setattr__(self, "raw_min", int(self.raw_min))
        object.__setattr__(self, "raw_max", int(self.raw_max))

    @property
    def width(self) -> int:
        return -(-(self.raw_max - self.raw_min + 1) // self.n_contexts)

    def shift_offset(self, shift: np.ndarray | int) -> np.ndarray | int:
        return (np.asarray(shift, dtype=np.int64) * self.width // self.n_shifts).astype(np.int32)

    def context(self, pred: np.ndarray, shift: np.ndarray | int = 0) -> np.ndarray:
        """Bucket of each prediction; ``shift`` broadcasts against pred (per-frame shifts: (N, 1..))."""
        p = np.asarray(pred)
        if self.raw_max - self.raw_min < 1 << 16:  # one gather from a (n_shifts, range) table
            return self._context_lut[np.asarray(shift, dtype=np.intp), p - self.raw_min]
        off = self.shift_offset(shift)
        c = (p.astype(np.int64) - self.raw_min + off) // self.width
        return np.clip(c, 0, self.n_contexts - 1).astype(np.uint8)

    @cached_property
    def _context_lut(self) -> np.ndarray:
        v = np.arange(self.raw_max - self.raw_min + 1, dtype=np.int64)
        off = (np.arange(self.n_shifts, dtype=np.int64) * self.width // self.n_shifts)[:, None]
        return np.clip((v[None, :] + off) // self.width, 0, self.n_contexts - 1).astype(np.uint8)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "raw_min": self.raw_min,
            "raw_max": self.raw_max,
            "n_contexts": self.n_contexts,
            "n_shifts": self.n_shifts,
            "guard": float(self.guard),
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> "ContextSpec":
        return cls(
            raw_min=int(obj["raw_min"]),
            raw_max=int(obj["raw_max"]),
            n_contexts=int(obj["n_contexts"]),
            n_shifts=int(obj["n_shifts"]),
            guard=float(obj["guard"]),
        )


# --------------------------------------------------------------------------------------------
# the arithmetic of the bound


def check_max_error(max_error: int) -> int:
    d = int(max_error)
    if d != max_error or d < 0 or d > 1 << 30:
        raise InputError(f"max_error must be an integer in 0..2**30 (raw units), got {max_error!r}")
    return d


def prediction(raw_float: np.ndarray, raw_min: int, raw_max: int) -> np.ndarray:
    """The receiver's integer prediction: rint(clip(raw_float)) (round half to even)."""
    f = np.asarray(raw_float, dtype=np.float32)
    if not np.all(np.isfinite(f)):
        raise InputError("decoder output contains NaN/Inf; cannot predict raw samples")
    return np.rint(np.clip(f, np.float32(raw_min), np.float32(raw_max))).astype(np.int32)


def quantize_residual(x_raw: np.ndarray, pred_raw: np.ndarray, max_error: int) -> np.ndarray:
    """q = sign(r) * floor((|r| + D) / (2D+1)) with r = x - p."""
    d = check_max_error(max_error)
    r = np.asarray(x_raw).astype(np.int32) - np.asarray(pred_raw).astype(np.int32)
    if d == 0 or r.size == 0:
        return r
    lo, hi = int(r.min()), int(r.max())
    if hi - lo < 1 << 17:  # a gather from a table of the present residual range beats integer division
        k = np.arange(lo, hi + 1, dtype=np.int64)
        lut = (np.sign(k) * ((np.abs(k) + d) // (2 * d + 1))).astype(np.int32)
        return lut[r - lo]
    q = (np.abs(r) + d) // (2 * d + 1)
    return np.where(r < 0, -q, q)


def reconstruct(pred_raw: np.ndarray, q: np.ndarray, max_error: int, raw_min: int, raw_max: int) -> np.ndarray:
    """clip(p + q*(2D+1)): within D of x whenever p is the sender's prediction (int64)."""
    d = check_max_error(max_error)
    rec = np.asarray(pred_raw, dtype=np.int64) + np.asarray(q, dtype=np.int64) * (2 * d + 1)
    return np.clip(rec, raw_min, raw_max).astype(np.int32)


def reconstruction_crc(recon: np.ndarray) -> int:
    """CRC32 of the reconstructed raw samples as little-endian int32, C order (all frames)."""
    return zlib.crc32(np.ascontiguousarray(np.asarray(recon), dtype="<i4").tobytes()) & 0xFFFFFFFF


def choose_shifts(spec: ContextSpec, raw_float: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame (axis 0): the first bucket-grid shift with no sample at risk, and whether even the
    best shift leaves samples at risk. At risk = within ``guard`` of a .5 rounding boundary whose
    two sides fall in different buckets (a drift there would switch the table)."""
    f = np.asarray(raw_float, dtype=np.float32)
    n = f.shape[0]
    f = np.clip(f.reshape(n, -1), np.float32(spec.raw_min), np.float32(spec.raw_max))
    near = np.abs(f - np.rint(f)) > np.float32(0.5 - spec.guard)
    frames, cols = np.nonzero(near)
    lo_v = np.floor(f[frames, cols]).astype(np.int64)
    keep = lo_v + 1 <= spec.raw_max
    frames, lo_v = frames[keep], lo_v[keep]
    risky = np.zeros((spec.n_shifts, n), dtype=np.int64)
    for s in range(spec.n_shifts):
        if frames.size:
            diff = spec.context(lo_v, s) != spec.context(lo_v + 1, s)
            risky[s] = np.bincount(frames[diff], minlength=n)
    safe = risky == 0
    any_safe = safe.any(axis=0)
    shifts = np.where(any_safe, np.argmax(safe, axis=0), np.argmin(risky, axis=0)).astype(np.int64)
    return shifts, ~any_safe


# --------------------------------------------------------------------------------------------
# statistics and tables


def residual_histograms(
    spec: ContextSpec, x_raw: np.ndarray, raw_float: np.ndarray, radius: int
) -> np.ndarray:
    """(n_contexts, 2*radius+1) int64 counts of r = x - p (clamped to +-radius) per context, with the
    contexts the sender would use (shifts chosen as in encoding). Sum these over batches."""
    x = np.asarray(x_raw)
    f = np.asarray(raw_float)
    if x.shape != f.shape or x.ndim < 1:
        raise InputError(f"x_raw {x.shape} and raw_float {f.shape} must have the same (N, ...) shape")
    n = x.shape[0]
    p = prediction(f, spec.raw_min, spec.raw_max).reshape(n, -1)
    shifts, _ = choose_shifts(spec, f)
    ctx = spec.context(p, shifts[:, None])
    r = np.clip(x.reshape(n, -1).astype(np.int64) - p, -radius, radius) + radius
    flat = ctx.astype(np.int64) * (2 * radius + 1) + r
    return np.bincount(flat.ravel(), minlength=spec.n_contexts * (2 * radius + 1)).reshape(
        spec.n_contexts, 2 * radius + 1
    ).astype(np.int64)


def default_radius(spec: ContextSpec) -> int:
    return min(spec.raw_max - spec.raw_min, MAX_RADIUS)


@dataclass(frozen=True)
class ResidualEncoding:
    """What the sender learns while coding a residual: the receiver-identical reconstruction, the
    per-frame bucket-grid shifts, and frames where no shift keeps every sample off a bucket edge."""

    recon: np.ndarray
    shifts: np.ndarray
    at_risk: np.ndarray

    @property
    def crc(self) -> int:
        return reconstruction_crc(self.recon)


@dataclass(frozen=True, eq=False)
class ResidualModel:
    """Per-context residual histograms in raw units, and the integer tables derived for any D."""

    spec: ContextSpec
    radius: int
    histograms: np.ndarray
    precision: int = DEFAULT_PRECISION
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        h = np.asarray(self.histograms)
        if h.shape != (self.spec.n_contexts, 2 * int(self.radius) + 1):
            raise InputError(
                f"histograms must have shape ({self.spec.n_contexts}, {2 * int(self.radius) + 1}), got {h.shape}"
            )
        if h.dtype.kind not in "iu" or (h.size and h.min() < 0):
            raise InputError("histograms must be non-negative integers")
        h = h.astype(np.int64)
        h.setflags(write=False)
        object.__setattr__(self, "histograms", h)
        object.__setattr__(self, "radius", int(self.radius))

    @classmethod
    def fit(
        cls,
        spec: ContextSpec,
        x_raw: np.ndarray,
        raw_float: np.ndarray,
        radius: int | None = None,
        precision: int = DEFAULT_PRECISION,
    ) -> "ResidualModel":
        rad = default_radius(spec) if radius is None else int(radius)
        return cls(spec, rad, residual_histograms(spec, x_raw, raw_float, rad), precision)

    # ---- tables

    def shift_table(self) -> FreqTable:
        """Fixed: shift 0 gets all but 2**-7 per other shift (the sender prefers 0)."""
        n = self.spec.n_shifts
        other = 1 << max(self.precision - 7, 0)
        freqs = [(1 << self.precision) - (n - 1) * other - 1] + [other] * (n - 1) + [1]
        return FreqTable(offset=0, freqs=np.asarray(freqs, dtype=np.int64), precision=self.precision)

    def bin_counts(self, max_error: int) -> tuple[int, np.ndarray]:
        """(kmax, counts (n_contexts, 2*kmax+1)) of q in [-kmax, kmax]: integer sums of the raw
        histogram over [k(2D+1)-D, k(2D+1)+D]."""
        d = check_max_error(max_error)
        step = 2 * d + 1
        rad = self.radius
        kmax = (rad + d) // step
        k = np.arange(-kmax, kmax + 1, dtype=np.int64)
        lo = np.clip(k * step - d, -rad, rad + 1) + rad
        hi = np.clip(k * step + d + 1, -rad, rad + 1) + rad
        cs = np.concatenate([np.zeros((self.spec.n_contexts, 1), dtype=np.int64), np.cumsum(self.histograms, axis=1)], axis=1)
        return kmax, cs[:, hi] - cs[:, lo]

    def tables(self, max_error: int) -> TableSet:
        """Context tables 0..n_contexts-1, then the shift table (id n_contexts). Cached per D.
        Each context table spans the observed q support plus one bin either side (always incl. 0);
        rarer values go through the escape, so floors waste little probability mass."""
        d = check_max_error(max_error)
        cached = self._cache.get(d)
        if cached is not None:
            return cached
        kmax, counts = self.bin_counts(d)
        tabs = []
        for c in range(self.spec.n_contexts):
            nz = np.flatnonzero(counts[c])
            a = min(int(nz[0]) if nz.size else kmax, kmax) - 1
            b = max(int(nz[-1]) if nz.size else kmax, kmax) + 1
            a, b = max(a, 0), min(b, 2 * kmax)
            tabs.append(table_from_counts(counts[c, a : b + 1], offset=a - kmax, precision=self.precision))
        tabs.append(self.shift_table())
        ts = TableSet(tuple(tabs), precision=self.precision)
        self._cache[d] = ts
        return ts

    # ---- coding

    def encode_residual(
        self, x_raw: np.ndarray, raw_float: np.ndarray, max_error: int
    ) -> tuple[np.ndarray, np.ndarray, ResidualEncoding]:
        """(symbols q (N*P,), table_ids (N*P,), encoding info). The per-frame shifts
        (``info.shifts``, table id n_contexts) must be coded BEFORE the symbols: ``write`` does both."""
        x = np.asarray(x_raw)
        f = np.asarray(raw_float)
        if x.shape != f.shape or x.ndim < 1:
            raise InputError(f"x_raw {x.shape} and decoder output {f.shape} must have the same (N, ...) shape")
        if x.dtype.kind not in "iu":
            if x.dtype.kind == "f" and np.all(x == np.rint(x)):
                x = x.astype(np.int64)
            else:
                raise InputError(f"raw samples must be integers for the residual layer, got {x.dtype}")
        if x.size and (x.min() < self.spec.raw_min or x.max() > self.spec.raw_max):
            raise InputError(
                f"raw samples span [{x.min()}, {x.max()}], outside the model's raw range "
                f"[{self.spec.raw_min}, {self.spec.raw_max}]"
            )
        d = check_max_error(max_error)
        n = x.shape[0]
        p = prediction(f, self.spec.raw_min, self.spec.raw_max).reshape(n, -1)
        shifts, at_risk = choose_shifts(self.spec, f)
        ctx = self.spec.context(p, shifts[:, None])
        q = quantize_residual(x.reshape(n, -1), p, d)
        recon = reconstruct(p, q, d, self.spec.raw_min, self.spec.raw_max).reshape(x.shape)
        info = ResidualEncoding(recon=recon, shifts=shifts, at_risk=at_risk)
        return q.ravel().astype(np.int32), ctx.ravel(), info

    def write(self, enc: StreamEncoder, x_raw: np.ndarray, raw_float: np.ndarray, max_error: int) -> ResidualEncoding:
        """Code the frames' shifts then their residuals into ``enc``; returns the reconstruction."""
        symbols, ids, info = self.encode_residual(x_raw, raw_float, max_error)
        tables = self.tables(max_error)
        if self.spec.n_shifts > 1:
            enc.encode(info.shifts.astype(np.int32), np.full(info.shifts.size, self.spec.n_contexts), tables)
        enc.encode(symbols, ids, tables)
        return info

    def read(self, dec: StreamDecoder, raw_float: np.ndarray, max_error: int) -> np.ndarray:
        """Receiver side of ``write``: the reconstruction (int64, raw_float's shape)."""
        f = np.asarray(raw_float)
        n = f.shape[0]
        tables = self.tables(max_error)
        p = prediction(f, self.spec.raw_min, self.spec.raw_max).reshape(n, -1)
        if self.spec.n_shifts > 1:
            shifts = dec.decode(np.full(n, self.spec.n_contexts), tables).astype(np.int64)
            if shifts.size and (shifts.min() < 0 or shifts.max() >= self.spec.n_shifts):
                raise BitstreamError("residual payload names a bucket-grid shift that does not exist: corrupt payload")
        else:
            shifts = np.zeros(n, dtype=np.int64)
        ctx = self.spec.context(p, shifts[:, None])
        q = dec.decode(ctx.ravel(), tables).reshape(p.shape)
        return reconstruct(p, q, max_error, self.spec.raw_min, self.spec.raw_max).reshape(f.shape)

    # ---- serialisation (inside entropy.json)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "context": self.spec.to_json_obj(),
            "radius": self.radius,
            "precision": self.precision,
            "histograms": [[int(v) for v in row] for row in self.histograms],
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> "ResidualModel":
        try:
            return cls(
                spec=ContextSpec.from_json_obj(obj["context"]),
                radius=int(obj["radius"]),
                histograms=np.asarray(obj["histograms"], dtype=np.int64),
                precision=int(obj["precision"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError, InputError) as exc:
            raise BundleError(f"malformed residual model in entropy.json ({exc}); re-run calibration") from exc
