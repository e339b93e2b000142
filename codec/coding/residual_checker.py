"""Residuals of single-channel images with an exact prediction, coded in two checkerboard passes:
the second pass's tables also see the four decoded neighbours (exact bundles only).

residual_value.py codes every residual with a table per prediction value; measured on MNIST
validation digits (tables counted on the other 55,000) a pixel's decoded neighbours still say
something the prediction does not: whether the stroke is there (a neighbour at 0 or saturated)
and where the network misplaced it (the neighbours' reconstruction minus their prediction, with
one sign). Coding in two passes keeps the coder's calls to two per packet: the "black" pixels
(i + j even) first, with residual_value.py's table per prediction value, then the "white" ones
(i + j odd), whose four neighbours L, U, R, D are all black and decoded. Per white pixel, with
e = r - p at each neighbour (r its reconstruction; 0 outside the image), m the largest neighbour
r - raw_min (0 outside) and z the number of neighbours with r - raw_min > D (outside: none):

    p' = clip(p + floor(w * (e_L + e_U + e_R + e_D) / 16))      (w per max error, 0..16)
    q  = Q(x - p'),  recon = clip(p' + q (2D+1))
    table = context_map[((p' - raw_min) // value_width) * (len(E) + 1) * 5 + class_E(m) * 5 + z]

A black pixel's table is (p - raw_min) // value_width, its q = Q(x - p). The context map sends a
context calibration saw often to a table of its own and the others to their value's black table,
which keeps the bundle small. MNIST validation digits, bytes per digit (tables counted on the
other 55,000; prediction-value before): lossless 111.2 -> 106.2, max error 4 -> 55.0. An anti-
diagonal wavefront over the causal neighbours L, U, UL, LL, UU saves about as much (106.3) but
needs 55 coder calls per packet with ~16,000 table groups between them, ~25 ms per packet of 256
digits; these two calls cost a few ms. Everything is a function of p and decoded q, so it needs
p identical on every machine: the exact network's prediction (coding/exact.py, FLAG_EXACT).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder
from .context import check_kind, level_for, table_with_prior
from .residual import ResidualEncoding, ResidualModel, check_max_error, prediction, quantize_residual, reconstruct
from .tables import FreqTable, TableSet, pack_array, unpack_array

KIND = "value-checkerboard"
VERSION = 1
WEIGHT_ONE = 16  # the bias weight w is in sixteenths
COUNTS = 5  # z = 0..4 neighbours above D
# w calibration tries per max error (MNIST validation: 4-5 best at D = 0 and 2; 0 is "no bias")
WEIGHT_CANDIDATES = (0, 3, 4, 5, 6)
PRIOR_OBSERVATIONS = 64
# a white context seen fewer times in calibration codes with its value's black table
MIN_CONTEXT_OBSERVATIONS = 256
# frames whose empirical entropy picks w (then every frame is counted)
SELECT_FRAMES = 8192
MAX_TABLES_PER_LEVEL = 1 << 16

Coder = Callable[[np.ndarray | None, np.ndarray, TableSet], np.ndarray]


@dataclass(frozen=True, eq=False)
class CheckerLevel:
    """One max error: the bias weight w, the edges E of m, each white context's table id, and the
    tables (n_values black ones, one per prediction value, then the white contexts' own). Compared
    by identity (an array field); compare to_json_obj() for content."""

    max_error: int
    weight: int
    edges: tuple[int, ...]
    context_map: np.ndarray  # int32, one table id per white context
    tables: TableSet

    def __post_init__(self) -> None:
        edges = tuple(int(e) for e in self.edges)
        object.__setattr__(self, "edges", edges)
        if not 0 <= self.weight <= WEIGHT_ONE:
            raise BundleError(f"checkerboard residual coding: weight {self.weight} outside 0..{WEIGHT_ONE}")
        if any(b <= a for a, b in pairwise(edges)) or (edges and edges[0] < 1):
            raise BundleError(f"checkerboard residual coding: edges must rise from >= 1, got {edges}")
        cm = np.asarray(self.context_map)
        if cm.ndim != 1 or cm.dtype.kind not in "iu":
            raise BundleError("checkerboard residual coding: context_map must be a 1-D integer array")
        object.__setattr__(self, "context_map", cm.astype(np.int32))

    @property
    def n_classes(self) -> int:
        """White classes per prediction value: class_E(m) * 5 + z."""
        return (len(self.edges) + 1) * COUNTS

    def first_tables(self, n: int) -> TableSet:
        """The first n tables as a set of their own, kept: the black call's ids all lie below
        n_values, so it writes the same stream with them, and a set of at most 256 tables lets
        the coder sort its ids as bytes."""
        got = self.__dict__.get("_first")
        if not isinstance(got, TableSet) or len(got) != min(n, len(self.tables)):
            got = TableSet(self.tables.tables[:n], precision=self.tables.precision)
            object.__setattr__(self, "_first", got)
        return got


@dataclass(frozen=True)
class ResidualCheckerContext:
    raw_min: int
    raw_max: int
    value_width: int
    levels: tuple[CheckerLevel, ...]  # max error ascending

    def __post_init__(self) -> None:
        if self.raw_max <= self.raw_min or self.value_width < 1:
            raise BundleError(f"checkerboard residual coding: raw range [{self.raw_min}, {self.raw_max}] or value "
                              f"width {self.value_width} out of range; re-run calibration")
        ds = [lv.max_error for lv in self.levels]
        if ds != sorted(set(ds)):
            raise BundleError(f"checkerboard residual coding: max errors must be distinct and ascending, got {ds}")
        for lv in self.levels:
            cm = lv.context_map
            if (cm.size != self.n_values * lv.n_classes or len(lv.tables) > MAX_TABLES_PER_LEVEL
                    or len(lv.tables) < self.n_values or (cm.size and (int(cm.min()) < 0
                                                                       or int(cm.max()) >= len(lv.tables)))):
                raise BundleError(f"checkerboard residual coding for max error {lv.max_error}: {len(lv.tables)} "
                                  f"tables and a context map of {cm.size} do not fit {self.n_values} values x "
                                  f"{lv.n_classes} classes; re-run calibration")

    @property
    def n_values(self) -> int:
        return -(-(self.raw_max - self.raw_min + 1) // self.value_width)

    def covers(self, max_error: int) -> bool:
        return any(lv.max_error == max_error for lv in self.levels)

    def _level(self, max_error: int) -> CheckerLevel:
        return level_for(self.levels, max_error, "checkerboard residual")

    def _value(self, p: np.ndarray) -> np.ndarray:
        v = p - np.int32(self.raw_min)
        return v // np.int32(self.value_width) if self.value_width > 1 else v

    # ------------------------------------------------------------------ coding
    def write(self, enc: StreamEncoder, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray,
              max_error: int) -> ResidualEncoding:
        """Two coder calls: the black q of every frame in C order, then the white ones."""
        x, f = model.checked_samples(x_raw, raw_float)
        lv = self._level(check_max_error(max_error))

        def code(q: np.ndarray | None, ids: np.ndarray, tables: TableSet) -> np.ndarray:
            assert q is not None
            enc.encode(q, ids, tables)
            return q

        recon = self._walk(model, f, x, lv, code)
        n = x.shape[0]
        return ResidualEncoding(recon=recon, shifts=np.zeros(n, dtype=np.int64), at_risk=np.zeros(n, dtype=bool))

    def read(self, dec: StreamDecoder, model: ResidualModel, raw_float: np.ndarray, max_error: int) -> np.ndarray:
        lv = self._level(check_max_error(max_error))
        return self._walk(model, np.asarray(raw_float), None, lv, lambda _q, ids, tables: dec.decode(ids, tables))

    def _walk(self, model: ResidualModel, raw_float: np.ndarray, x: np.ndarray | None, lv: CheckerLevel,
              code: Coder) -> np.ndarray:
        """Both passes (module docstring); ``code(q or None, table ids, tables)`` codes the sender's
        q or decodes them. Returns the reconstruction, raw_float's shape."""
        if (model.spec.raw_min, model.spec.raw_max) != (self.raw_min, self.raw_max):
            raise BundleError(f"checkerboard residual coding covers raw range [{self.raw_min}, {self.raw_max}] but "
                              f"the residual model [{model.spec.raw_min}, {model.spec.raw_max}]; re-run calibration")
        if raw_float.ndim < 3:
            raise InputError(f"checkerboard residual coding needs images (N, ..., H, W), got shape {raw_float.shape}")
        h, w = raw_float.shape[-2:]
        grid = _grid(int(h), int(w))
        p = prediction(raw_float, self.raw_min, self.raw_max).reshape(-1, h * w)
        xs = None if x is None else x.reshape(-1, h * w)
        d = lv.max_error
        pb = p.take(grid.black, axis=1)
        qb = code(None if xs is None else quantize_residual(xs.take(grid.black, axis=1), pb, d).ravel(),
                  self._value(pb).ravel(), lv.first_tables(self.n_values)).reshape(pb.shape)
        rb = reconstruct(pb, qb, d, self.raw_min, self.raw_max)
        pw, cls = self.white_context(grid, p.take(grid.white, axis=1), pb, rb, lv)
        ids = lv.context_map.take(self._value(pw) * np.int32(lv.n_classes) + cls)
        qw = code(None if xs is None else quantize_residual(xs.take(grid.white, axis=1), pw, d).ravel(), ids.ravel(),
                  lv.tables)
        recon = np.empty(p.shape, dtype=np.int32)
        recon[:, grid.black] = rb
        recon[:, grid.white] = reconstruct(pw, qw.reshape(pw.shape), d, self.raw_min, self.raw_max)
        return recon.reshape(raw_float.shape)

    def white_context(self, grid: _Grid, p_white: np.ndarray, p_black: np.ndarray, r_black: np.ndarray,
                      lv: CheckerLevel) -> tuple[np.ndarray, np.ndarray]:
        """(p', class_E(m) * 5 + z) of every white pixel, (planes, white pixels in C order), from
        the planes' prediction at their white pixels and prediction and reconstruction at the
        black ones."""
        planes = p_black.shape[0]
        # int16 holds every sum below when the raw range is narrow (less memory traffic than int32)
        dt = np.int16 if (self.raw_max - self.raw_min) * 4 * WEIGHT_ONE < 1 << 15 else np.int32
        pad = np.zeros((planes, 1), dtype=dt)  # the slot of neighbours outside the image
        r = np.concatenate([(r_black - np.int32(self.raw_min)).astype(dt), pad], axis=1).take(grid.near, axis=1)
        r = r.reshape(planes, 4, -1)
        pw = p_white
        if lv.weight:
            e = np.concatenate([(r_black - p_black).astype(dt), pad], axis=1).take(grid.near, axis=1)
            e = e.reshape(planes, 4, -1)
            total = e[:, 0] + e[:, 1]  # slices and adds: a reduction over the middle axis is slower
            total += e[:, 2]
            total += e[:, 3]
            total *= dt(lv.weight)
            pw = np.clip(pw + total // dt(WEIGHT_ONE), self.raw_min, self.raw_max)
        m = np.maximum(np.maximum(r[:, 0], r[:, 1]), np.maximum(r[:, 2], r[:, 3]))
        d = dt(min(lv.max_error, np.iinfo(dt).max))  # r <= raw_max - raw_min: a larger D counts none
        z = (r[:, 0] > d).astype(dt)
        z += r[:, 1] > d
        z += r[:, 2] > d
        z += r[:, 3] > d
        lut = _class_lut(lv.edges).astype(dt)
        cls = lut.take(np.minimum(m, dt(lut.size - 1)))
        cls *= dt(COUNTS)
        cls += z
        return pw.astype(np.int32, copy=False), cls.astype(np.int32)

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(cls, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray, max_errors: Sequence[int], *,
            value_width: int = 1, edges: Sequence[int] | None = None,
            weights: Sequence[int] = WEIGHT_CANDIDATES, min_observations: int = MIN_CONTEXT_OBSERVATIONS,
            batch_size: int = 4096) -> ResidualCheckerContext:
        """Per D: w by the empirical entropy of the white q on the first SELECT_FRAMES frames, then
        the counts of every frame per black value and white context. edges default to 1, a quarter,
        three quarters and the whole raw range."""
        spec = model.spec
        span = spec.raw_max - spec.raw_min
        es = tuple(edges) if edges is not None else (1, (span + 2) // 4, (3 * span + 2) // 4, span)
        shell = cls(spec.raw_min, spec.raw_max, int(value_width), ())
        nv = shell.n_values
        levels = []
        for d in sorted({check_max_error(int(e)) for e in max_errors}):
            qmax = (span + d) // (2 * d + 1)
            width = 2 * qmax + 1
            probe = CheckerLevel(d, 0, es, nv + np.arange(nv * (len(es) + 1) * COUNTS, dtype=np.int32), TableSet(()))
            best, best_bits = 0, float("inf")
            for wt in weights:
                trial = CheckerLevel(d, int(wt), es, probe.context_map, TableSet(()))
                _, white = shell._count(model, x_raw[:SELECT_FRAMES], raw_float[:SELECT_FRAMES], trial, qmax,
                                        batch_size)
                bits = _entropy_bits(white.reshape(-1, width))
                if bits < best_bits:
                    best, best_bits = int(wt), bits
            lv = CheckerLevel(d, best, es, probe.context_map, TableSet(()))
            black, white = shell._count(model, x_raw, raw_float, lv, qmax, batch_size)
            levels.append(shell._tables(model, lv, black.reshape(nv, width), white.reshape(-1, width), qmax,
                                        min_observations))
        return cls(spec.raw_min, spec.raw_max, int(value_width), tuple(levels))

    def _count(self, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray, lv: CheckerLevel, qmax: int,
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(black counts per value, white counts per context), each flat (contexts * (2 qmax + 1))."""
        width = 2 * qmax + 1
        n_white = self.n_values * lv.n_classes
        black = np.zeros(self.n_values * width, dtype=np.int64)
        white = np.zeros(n_white * width, dtype=np.int64)
        keys: list[np.ndarray] = []

        def code(q: np.ndarray | None, ids: np.ndarray, _tables: TableSet) -> np.ndarray:
            assert q is not None
            keys.append(ids.astype(np.int64) * width + q + qmax)
            return q

        for i in range(0, x_raw.shape[0], batch_size):
            x, f = model.checked_samples(x_raw[i : i + batch_size], raw_float[i : i + batch_size])
            keys.clear()
            self._walk(model, f, x, lv, code)
            black += np.bincount(keys[0], minlength=black.size)
            white += np.bincount(keys[1] - self.n_values * width, minlength=white.size)
        return black, white

    def _tables(self, model: ResidualModel, lv: CheckerLevel, black: np.ndarray, white: np.ndarray,
                qmax: int, min_observations: int) -> CheckerLevel:
        """Black: per value, counts plus PRIOR_OBSERVATIONS of residual.py's table of its bucket,
        spanning the q seen and those the value allows, one bin either side (residual_value.py's
        recipe). White: a context seen at least min_observations times gets a table of its own:
        its counts plus PRIOR_OBSERVATIONS of its value's pooled white table (not stored), over
        the q it saw, one bin either side; the others use their value's black table (MNIST
        validation: both cheaper and smaller than storing the pooled tables for them)."""
        spec = model.spec
        d = lv.max_error
        base = model.tables(d)
        values = np.arange(self.n_values, dtype=np.int64) * self.value_width + spec.raw_min
        buckets = spec.context(values).astype(np.int64)
        k = lv.n_classes
        per_ctx = white.reshape(self.n_values, k, -1)
        black_tables: list[FreqTable] = []
        own: list[FreqTable] = []
        cmap = np.arange(self.n_values * k, dtype=np.int32) // k
        for v in range(self.n_values):
            prior = base[int(buckets[v])]
            a, b = self._span(v, black[v], prior, qmax, d)
            black_tables.append(table_with_prior(black[v, a + qmax : b + qmax + 1], a, prior, PRIOR_OBSERVATIONS))
            sums = per_ctx[v].sum(axis=0)
            a, b = self._span(v, sums, black_tables[-1], qmax, d)
            pooled = table_with_prior(sums[a + qmax : b + qmax + 1], a, black_tables[-1], PRIOR_OBSERVATIONS)
            for c in np.flatnonzero(per_ctx[v].sum(axis=1) >= min_observations):
                seen = np.flatnonzero(per_ctx[v, c])
                ca, cb = max(int(seen[0]) - qmax - 1, -qmax), min(int(seen[-1]) - qmax + 1, qmax)
                cmap[v * k + int(c)] = self.n_values + len(own)
                own.append(table_with_prior(per_ctx[v, c, ca + qmax : cb + qmax + 1], ca, pooled,
                                            PRIOR_OBSERVATIONS))
        tables = TableSet(tuple(black_tables + own), precision=model.precision)
        return CheckerLevel(d, lv.weight, lv.edges, cmap, tables)

    def _span(self, v: int, counts: np.ndarray, prior: FreqTable, qmax: int, d: int) -> tuple[int, int]:
        """q range of a table of value class v: what counts saw and the prior's range the value
        allows (x in the raw range), one bin either side."""
        step = 2 * d + 1
        v_lo = self.raw_min + v * self.value_width
        v_hi = min(v_lo + self.value_width - 1, self.raw_max)
        lo_ok = -((v_hi - self.raw_min + d) // step)
        hi_ok = (self.raw_max - v_lo + d) // step
        seen = np.flatnonzero(counts)
        a = min(int(seen[0]) - qmax if seen.size else 0, max(prior.lo, lo_ok)) - 1
        b = max(int(seen[-1]) - qmax if seen.size else 0, min(prior.hi, hi_ok)) + 1
        return max(a, -qmax), min(b, qmax)

    def to_json_obj(self) -> dict[str, Any]:
        return {"kind": KIND, "version": VERSION, "raw_min": self.raw_min, "raw_max": self.raw_max,
                "value_width": self.value_width,
                "levels": [{"max_error": lv.max_error, "weight": lv.weight, "edges": list(lv.edges),
                            "context_map": pack_array(lv.context_map, "<u2"), "tables": lv.tables.to_json_obj()}
                           for lv in self.levels]}

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> ResidualCheckerContext:
        check_kind(obj, KIND, "residual coding", where)
        if obj.get("version") != VERSION:
            raise BundleError(f"{where}: checkerboard residual coding version {obj.get('version')!r}; this "
                              f"latentwire reads {VERSION}: upgrade latentwire or re-run calibration")
        try:
            levels = tuple(CheckerLevel(int(e["max_error"]), int(e["weight"]), tuple(int(v) for v in e["edges"]),
                                        unpack_array(e["context_map"], "<u2").astype(np.int32),
                                        TableSet.from_json_obj(e["tables"])) for e in obj["levels"])
            return cls(int(obj["raw_min"]), int(obj["raw_max"]), int(obj["value_width"]), levels)
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise BundleError(f"{where}: malformed checkerboard residual coding ({exc}); re-run calibration") \
                from exc


@dataclass(frozen=True)
class _Grid:
    """Flat pixel indices of an H x W plane: black (i + j even) and white pixels in C order, and
    for each white pixel its L, U, R, D neighbours as indices into the black ones (nb: outside),
    laid out (4 * n_white,) neighbour-major."""

    black: np.ndarray
    white: np.ndarray
    near: np.ndarray


@lru_cache(maxsize=16)
def _grid(h: int, w: int) -> _Grid:
    i, j = np.divmod(np.arange(h * w, dtype=np.int64), w)
    is_black = (i + j) % 2 == 0
    black, white = np.flatnonzero(is_black), np.flatnonzero(~is_black)
    slot = np.full(h * w, black.size, dtype=np.int64)
    slot[black] = np.arange(black.size)
    wi, wj = i[white], j[white]
    near = []
    for di, dj in ((0, -1), (-1, 0), (0, 1), (1, 0)):  # L, U, R, D
        ni, nj = wi + di, wj + dj
        inside = (ni >= 0) & (ni < h) & (nj >= 0) & (nj < w)
        near.append(np.where(inside, slot[np.clip(ni, 0, h - 1) * w + np.clip(nj, 0, w - 1)], black.size))
    return _Grid(black, white, np.concatenate(near))


def _class_lut(edges: tuple[int, ...]) -> np.ndarray:
    """class_E(a) of every a up to the last edge (larger ones share its class)."""
    top = edges[-1] if edges else 0
    return np.searchsorted(np.asarray(edges, dtype=np.int64), np.arange(top + 1), side="right").astype(np.int32)


def _entropy_bits(counts: np.ndarray) -> float:
    """Empirical conditional entropy of the counts (rows: contexts), in bits: how w is chosen
    (every candidate has the same contexts, so no penalty for their number is needed)."""
    c = counts[counts.sum(axis=1) > 0].astype(np.float64)
    rows = c.sum(axis=1, keepdims=True)
    nz = c > 0
    return float(-(c[nz] * np.log2((c / rows)[nz])).sum())
