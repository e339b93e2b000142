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
float output (unless the bundle has an exact network, coding/exact.py: then raw_float holds its
integer prediction, which rint and clip leave alone and every machine computes alike). If that
differs slightly from the sender's (another batch size, CPU vs CUDA), a value near a rounding
boundary moves p by 1 (that sample's error becomes D+1) and, if the move crosses a context-bucket
edge, the entropy decoder switches tables and desyncs. Defences:
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

from ..errors import BitstreamError, BundleError, InputError
from .coder import StreamDecoder, StreamEncoder
from .tables import DEFAULT_PRECISION, FreqTable, TableSet, table_from_counts

INT32_LIMIT = 1 << 30  # |values| below this leave int32 headroom for one addition
MAX_RADIUS = 4095  # histogram half-width cap; residuals beyond it are coded through the escape
PAIR_LUT_MAX_RANGE = 1024  # raw ranges up to 10 bits get (p, x) lookup tables (1M entries at most)


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
            sh = np.asarray(shift, dtype=np.intp)
            v = p if self.raw_min == 0 else p - self.raw_min
            if sh.size and int(sh.min()) == int(sh.max()) and 0 <= int(sh.min()) < self.n_shifts:
                # one grid for all (the usual case: shift 0): a 1-D take, no broadcast index
                out = self._context_lut[int(sh.min())].take(v)
                shape = np.broadcast_shapes(p.shape, sh.shape)
                return out if out.shape == shape else np.broadcast_to(out, shape).copy()
            if sh.size and (int(sh.min()) < 0 or int(sh.max()) >= self.n_shifts):
                return self._context_lut[sh, v]  # let numpy raise its IndexError, as before
            # per-frame grids: one flat index (shift * range + v) and a 1-D take
            flat = sh * self._context_lut.shape[1] + v
            return self._context_lut.ravel().take(flat)
        off = self.shift_offset(shift)
        c = (p.astype(np.int64) - self.raw_min + off) // self.width
        return np.clip(c, 0, self.n_contexts - 1).astype(np.uint8)

    @cached_property
    def _edge_lut(self) -> np.ndarray:
        """(n_shifts, range - 1) bool: v and v + 1 fall in different buckets on grid s."""
        lut = self._context_lut
        return lut[:, 1:] != lut[:, :-1]

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
    def from_json_obj(cls, obj: dict[str, Any]) -> ContextSpec:
        return cls(
            raw_min=int(obj["raw_min"]),
            raw_max=int(obj["raw_max"]),
            n_contexts=int(obj["n_contexts"]),
            n_shifts=int(obj["n_shifts"]),
            guard=float(obj["guard"]),
        )


# --------------------------------------------------------------------------------------------
# the arithmetic of the bound


def _uniform(a: np.ndarray) -> bool:
    return bool(a.size) and int(a.min()) == int(a.max())


def check_max_error(max_error: int) -> int:
    d = int(max_error)
    if d != max_error or d < 0 or d > 1 << 30:
        raise InputError(f"max_error must be an integer in 0..2**30 (raw units), got {max_error!r}")
    return d


def _clip_round(raw_float: np.ndarray, raw_min: int, raw_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(clip(raw_float), rint(clip(raw_float))) in float32: the one pass both the prediction and
    the guard-band shift choice start from. Finiteness is checked with two reductions (NaN and
    Inf both surface in min/max) instead of a full-size boolean array."""
    f = np.asarray(raw_float, dtype=np.float32)
    if f.size and not (np.isfinite(f.min()) and np.isfinite(f.max())):
        raise InputError("decoder output contains NaN/Inf; cannot predict raw samples")
    fc = np.clip(f, np.float32(raw_min), np.float32(raw_max))
    return fc, np.rint(fc)


def prediction(raw_float: np.ndarray, raw_min: int, raw_max: int) -> np.ndarray:
    """The receiver's integer prediction: rint(clip(raw_float)) (round half to even)."""
    return _clip_round(raw_float, raw_min, raw_max)[1].astype(np.int32)


def quantize_residual(x_raw: np.ndarray, pred_raw: np.ndarray, max_error: int) -> np.ndarray:
    """q = sign(r) * floor((|r| + D) / (2D+1)) with r = x - p."""
    d = check_max_error(max_error)
    r = np.subtract(np.asarray(x_raw), np.asarray(pred_raw), dtype=np.int32)
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
    step = 2 * d + 1
    p = np.asarray(pred_raw)
    qa = np.asarray(q)
    if qa.size and p.dtype.kind in "iu" and p.dtype.itemsize <= 4 and qa.dtype.kind in "iu" and qa.dtype.itemsize <= 4:
        # int32 arithmetic when no intermediate can overflow it (always, for real packets)
        bound = max(abs(int(qa.min())), abs(int(qa.max()))) * step + max(abs(raw_min), abs(raw_max)) + 1
        if bound < INT32_LIMIT and int(p.min()) >= -INT32_LIMIT and int(p.max()) <= INT32_LIMIT:
            rec = np.multiply(qa, np.int32(step), dtype=np.int32)
            rec += p
            return np.clip(rec, np.int32(raw_min), np.int32(raw_max), out=rec)
    rec = p.astype(np.int64) + qa.astype(np.int64) * step
    return np.clip(rec, raw_min, raw_max).astype(np.int32)


def reconstruction_crc(recon: np.ndarray) -> int:
    """CRC32 of the reconstructed raw samples as little-endian int32, C order (all frames)."""
    return zlib.crc32(np.ascontiguousarray(np.asarray(recon), dtype="<i4").tobytes()) & 0xFFFFFFFF


def choose_shifts(spec: ContextSpec, raw_float: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame (axis 0): the first bucket-grid shift with no sample at risk, and whether even the
    best shift leaves samples at risk. At risk = within ``guard`` of a .5 rounding boundary whose
    two sides fall in different buckets (a drift there would switch the table)."""
    f = np.asarray(raw_float, dtype=np.float32)
    fc, pf = _clip_round(f, spec.raw_min, spec.raw_max)
    return _choose_shifts(spec, fc.reshape(f.shape[0], -1), pf.reshape(f.shape[0], -1))


def _choose_shifts(spec: ContextSpec, fc: np.ndarray, pf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """choose_shifts on (N, P) clipped values and their rint (shared with the prediction)."""
    n = fc.shape[0]
    dist = np.subtract(fc, pf)
    np.abs(dist, out=dist)
    frames, cols = np.nonzero(dist > np.float32(0.5 - spec.guard))
    lo_v = np.floor(fc[frames, cols]).astype(np.int64)
    keep = lo_v + 1 <= spec.raw_max
    frames, lo_v = frames[keep], lo_v[keep]
    risky = np.zeros((spec.n_shifts, n), dtype=np.int64)
    if frames.size:
        if spec.raw_max - spec.raw_min < 1 << 16:
            edges = spec._edge_lut[:, lo_v - spec.raw_min]  # (n_shifts, k): sides in different buckets
            for s in range(spec.n_shifts):
                risky[s] = np.bincount(frames[edges[s]], minlength=n)
        else:
            for s in range(spec.n_shifts):
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
    ) -> ResidualModel:
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
        cs = np.concatenate(
            [np.zeros((self.spec.n_contexts, 1), dtype=np.int64), np.cumsum(self.histograms, axis=1)], axis=1
        )
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

    def _pair_luts(self, max_error: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(q, recon) int32 tables indexed by (p - raw_min) * range + (x - raw_min), built with
        quantize_residual / reconstruct themselves (so they cannot disagree); None when the raw
        range is too wide for a range**2 table (11-bit ECG: 4M entries; the arithmetic path)."""
        span = self.spec.raw_max - self.spec.raw_min + 1
        if span > PAIR_LUT_MAX_RANGE:
            return None
        key = ("pair", max_error)
        cached = self._cache.get(key)
        if cached is None:
            vals = np.arange(self.spec.raw_min, self.spec.raw_max + 1, dtype=np.int32)
            p, x = np.meshgrid(vals, vals, indexing="ij")
            q = quantize_residual(x, p, max_error).astype(np.int32)
            rec = reconstruct(p, q, max_error, self.spec.raw_min, self.spec.raw_max).astype(np.int32)
            cached = (q.ravel(), rec.ravel())
            self._cache[key] = cached
        return cached

    # ---- coding

    def checked_samples(self, x_raw: np.ndarray, raw_float: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(integer raw samples, decoder output) after the checks every residual coder needs: the
        same (N, ...) shape, integer samples (integer-valued floats accepted) inside the raw range."""
        x = np.asarray(x_raw)
        f = np.asarray(raw_float)
        if x.shape != f.shape or x.ndim < 1:
            raise InputError(f"x_raw {x.shape} and decoder output {f.shape} must have the same (N, ...) shape")
        if x.dtype.kind not in "iu":
            if x.dtype.kind == "f" and np.all(x == np.rint(x)):
                x = x.astype(np.int64)
            else:
                raise InputError(f"raw samples must be integers for the residual layer, got {x.dtype}")
        if x.size and (int(x.min()) < self.spec.raw_min or int(x.max()) > self.spec.raw_max):
            raise InputError(
                f"raw samples span [{x.min()}, {x.max()}], outside the model's raw range "
                f"[{self.spec.raw_min}, {self.spec.raw_max}]"
            )
        return x, f

    def encode_residual(
        self, x_raw: np.ndarray, raw_float: np.ndarray, max_error: int
    ) -> tuple[np.ndarray, np.ndarray, ResidualEncoding]:
        """(symbols q (N*P,), table_ids (N*P,), encoding info). The per-frame shifts
        (``info.shifts``, table id n_contexts) must be coded BEFORE the symbols: ``write`` does both."""
        x, f = self.checked_samples(x_raw, raw_float)
        d = check_max_error(max_error)
        n = x.shape[0]
        fc, pf = _clip_round(f, self.spec.raw_min, self.spec.raw_max)
        fc, pf = fc.reshape(n, -1), pf.reshape(n, -1)
        shifts, at_risk = _choose_shifts(self.spec, fc, pf)
        luts = self._pair_luts(d)
        if luts is not None:
            # small raw range: q and recon are functions of the pair (p, x); one index, two gathers
            q_lut, rec_lut = luts
            v = pf.astype(np.intp)
            if self.spec.raw_min:
                v -= self.spec.raw_min
            lut = self.spec._context_lut
            if _uniform(shifts):
                ctx = lut[shifts[0]].take(v)
            else:
                ctx = lut.ravel().take(v + (shifts * lut.shape[1])[:, None])
            k = v * (self.spec.raw_max - self.spec.raw_min + 1)
            k += x.reshape(n, -1)
            if self.spec.raw_min:
                k -= self.spec.raw_min
            q = q_lut.take(k)
            recon = rec_lut.take(k).reshape(x.shape)
        else:
            p = pf.astype(np.int32)
            ctx = self.spec.context(p, shifts[:, None])
            q = quantize_residual(x.reshape(n, -1), p, d)
            recon = reconstruct(p, q, d, self.spec.raw_min, self.spec.raw_max).reshape(x.shape)
        info = ResidualEncoding(recon=recon, shifts=shifts, at_risk=at_risk)
        return q.ravel().astype(np.int32, copy=False), ctx.ravel(), info

    def write(self, enc: StreamEncoder, x_raw: np.ndarray, raw_float: np.ndarray, max_error: int) -> ResidualEncoding:
        """Code the frames' shifts then their residuals into ``enc``; returns the reconstruction."""
        symbols, ids, info = self.encode_residual(x_raw, raw_float, max_error)
        self.write_shifts(enc, info.shifts, max_error)
        enc.encode(symbols, ids, self.tables(max_error))
        return info

    def write_shifts(self, enc: StreamEncoder, shifts: np.ndarray, max_error: int) -> None:
        """The frames' bucket-grid shifts, coded before their residuals (nothing when n_shifts is 1)."""
        if self.spec.n_shifts > 1:
            enc.encode_grouped([(self.spec.n_contexts, shifts)], self.tables(max_error))

    def read_shifts(self, dec: StreamDecoder, n: int, max_error: int) -> np.ndarray:
        """Receiver side of ``write_shifts``: (n,) int64 shifts, checked."""
        if self.spec.n_shifts <= 1:
            return np.zeros(n, dtype=np.int64)
        shifts = dec.decode_grouped([(self.spec.n_contexts, n)], self.tables(max_error)).astype(np.int64)
        if shifts.size and (shifts.min() < 0 or shifts.max() >= self.spec.n_shifts):
            raise BitstreamError("residual payload names a bucket-grid shift that does not exist: corrupt payload")
        return shifts

    def read(self, dec: StreamDecoder, raw_float: np.ndarray, max_error: int) -> np.ndarray:
        """Receiver side of ``write``: the reconstruction (int64, raw_float's shape)."""
        f = np.asarray(raw_float)
        n = f.shape[0]
        p = prediction(f, self.spec.raw_min, self.spec.raw_max).reshape(n, -1)
        shifts = self.read_shifts(dec, n, max_error)
        ctx = self.spec.context(p, shifts[:, None])
        q = dec.decode(ctx.ravel(), self.tables(max_error)).reshape(p.shape)
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
    def from_json_obj(cls, obj: dict[str, Any]) -> ResidualModel:
        try:
            return cls(
                spec=ContextSpec.from_json_obj(obj["context"]),
                radius=int(obj["radius"]),
                histograms=np.asarray(obj["histograms"], dtype=np.int64),
                precision=int(obj["precision"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError, InputError) as exc:
            raise BundleError(f"malformed residual model in entropy.json ({exc}); re-run calibration") from exc
