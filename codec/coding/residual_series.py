"""Max-error residuals of 1-D multichannel series (N, C, T) predicted from the exact model AND the
window's own decoded history, coded in time order with an activity context.

The autoencoder's misses on ECG are runs, not single samples: where it smooths a QRS complex its
error e = x - p keeps sign and size for several samples. residual_context.py only used that as a
table context (the previous q); here the decoded error is carried into the prediction itself, as
FLAC's fixed and LPC predictors do on the raw signal, but on the model's error. Per channel c and
time t, with e[c, t'] = recon[c, t'] - p[c, t'] for samples already decoded (0 before the window),
and a level's integer coefficients (own history a_1..a_K, for c >= 1 also b_0, b_1 on channel
c - 1's e at t and t - 1) and shift S:

    e^ = floor((sum_k a_k e[c, t-k] + b_0 e[c-1, t] + b_1 e[c-1, t-1]) / 2^S)
    q = Q(x - p - e^),  recon = clip(p + e^ + q (2D+1), raw_min, raw_max)

Q(e) = sign(e) floor((|e| + D) / (2D+1)) as in residual.py, so |x - recon| <= D. At D > 0 the history
is the reconstruction, never the original (the receiver has only that). q's table is
``channel offset + class(a)`` with the activity

    a = 2|q[c, t-1]| + |q[c, t-2]| + |q[c, t-3]| + |q[c, t-4]| + (c >= 1: 2|q[c-1, t]|)
        + floor(slope_weight * |p[c, t+1] - p[c, t-1]| / 16)   (indices clamped to the window)

and class = #{edges_c <= a}. The prediction p is the exact network's (FLAG_EXACT, coding/exact.py),
identical on every machine, and every other term is a decoded integer, so every table id and
prediction is exact: the kind is fit only for bundles with an exact network. The coefficients,
slope weight and edges are chosen per max error at calibration by the bits they cost there.

Order: coder call t (t = 0 .. T + C - 2) holds channel c's symbols at time t - c for every c with
0 <= t - c < T, channel ascending, frames ascending within a channel; so channel c - 1's q and e at
time t were decoded one call before channel c's. T + C - 1 calls per packet, none per sample.

A level may also carry an NLMS cascade (``adapt``, residual_adapt.py): integer filters that learn,
window by window, what the fixed coefficients leave (a record's own noise colour and lead
coupling); their sum is added to the guess above. On held-out MIT-BIH records it takes lossless
from 4.04 to 3.79 bits/sample and max error 1-4 down 5-9 % (BENCHMARKS.md, session 17).

Classical frames (``classic``, issue 24 part 3): the same walk with no model at all, p the constant
midpoint of the raw range, so e is the signal itself and the carried term an integer LPC of its
decoded history, FLAC's predictor with calibrated coefficients and context tables. A max-error
packet may send some frames so, without their latent (residual_modes.py). On held-out MIT-BIH
records it beats the model's lossless level on 60 % of the windows (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder, symbol_bits
from .context import check_kind, classic_version, level_for, table_with_prior
from .residual import ResidualEncoding, ResidualModel, check_max_error, prediction, quantize_residual
from .residual_adapt import AdaptStage, Cascade, check_stages
from .tables import TableSet, table_from_counts

KIND = "series-context"
VERSION = 1
VERSION_CLASSIC = 2  # adds ``classic``: the levels of frames sent without a latent
VERSION_ADAPT = 3  # levels may carry ``adapt``: an NLMS cascade (residual_adapt.py); ``classic`` optional
HISTORY = 4  # |q| of the last four samples enter the activity
HISTORY_WEIGHTS = (2, 1, 1, 1)
OTHER_WEIGHT = 2  # |q| of channel c - 1 at the same time
SLOPE_DIVISOR = 16
MAX_ORDER = 8
MAX_SHIFT = 15
MAX_COEF = 1 << 12
N_CROSS = 2  # b_0, b_1
PRIOR_OBSERVATIONS = 64


@dataclass(frozen=True)
class SeriesLevel:
    """One max error: per channel its predictor coefficients and activity edges, and the tables."""

    max_error: int
    shift: int
    own: tuple[tuple[int, ...], ...]  # per channel a_1..a_K
    cross: tuple[tuple[int, ...], ...]  # per channel (b_0, b_1); () for channel 0
    slope_weight: int
    edges: tuple[tuple[int, ...], ...]  # per channel
    tables: TableSet
    adapt: tuple[AdaptStage, ...] = ()  # the NLMS cascade after the fixed predictor, if any

    def __post_init__(self) -> None:
        check_stages(self.adapt)
        object.__setattr__(self, "own", tuple(tuple(int(a) for a in o) for o in self.own))
        object.__setattr__(self, "cross", tuple(tuple(int(b) for b in c) for c in self.cross))
        object.__setattr__(self, "edges", tuple(tuple(int(e) for e in es) for es in self.edges))
        ch = len(self.own)
        if not (ch >= 1 and len(self.cross) == ch and len(self.edges) == ch and 0 <= self.shift <= MAX_SHIFT
                and 0 <= self.slope_weight <= 64 and self.max_error >= 0):
            raise BundleError(f"series residual coding (max error {self.max_error}): channels, shift {self.shift} "
                              f"(0..{MAX_SHIFT}) or slope weight {self.slope_weight} (0..64) out of range; re-run "
                              "calibration")
        for c in range(ch):
            coefs = (*self.own[c], *self.cross[c])
            if (len(self.own[c]) > MAX_ORDER or len(self.cross[c]) != (0 if c == 0 else N_CROSS)
                    or any(abs(a) > MAX_COEF for a in coefs)):
                raise BundleError(f"series residual coding: channel {c}'s coefficients {coefs} out of range "
                                  f"(order <= {MAX_ORDER}, |a| <= {MAX_COEF}, {N_CROSS} cross terms from channel 1)")
            es = self.edges[c]
            if any(b <= a for a, b in pairwise(es)) or (es and es[0] < 1):
                raise BundleError(f"series residual coding: edges must rise from >= 1, got {es}")
        if len(self.tables) != self.offsets[-1]:
            raise BundleError(f"series residual coding for max error {self.max_error} has {len(self.tables)} "
                              f"tables, expected {self.offsets[-1]}; re-run calibration")

    @property
    def channels(self) -> int:
        return len(self.own)

    @property
    def offsets(self) -> list[int]:
        """First table id of each channel, then the total."""
        out = [0]
        for es in self.edges:
            out.append(out[-1] + len(es) + 1)
        return out

    def class_luts(self) -> list[np.ndarray]:
        """Per channel: the table id of every activity up to its last edge (larger ones share its class)."""
        offs = self.offsets
        return [np.searchsorted(np.asarray(es, dtype=np.int64), np.arange((es[-1] if es else 0) + 1),
                                side="right").astype(np.int64) + offs[c] for c, es in enumerate(self.edges)]

    def to_json_obj(self) -> dict[str, Any]:
        obj = {"max_error": self.max_error, "shift": self.shift, "own": [list(o) for o in self.own],
               "cross": [list(c) for c in self.cross], "slope_weight": self.slope_weight,
               "edges": [list(e) for e in self.edges], "tables": self.tables.to_json_obj()}
        if self.adapt:
            obj["adapt"] = [[st.order, st.mu] for st in self.adapt]
        return obj

    @classmethod
    def from_json_obj(cls, obj: Any, allow_adapt: bool = True) -> SeriesLevel:
        if "adapt" in obj and not allow_adapt:
            raise BundleError(f"series-context version {VERSION_ADAPT} or later is needed for adaptive stages")
        return cls(int(obj["max_error"]), int(obj["shift"]), tuple(tuple(o) for o in obj["own"]),
                   tuple(tuple(c) for c in obj["cross"]), int(obj["slope_weight"]),
                   tuple(tuple(e) for e in obj["edges"]), TableSet.from_json_obj(obj["tables"]),
                   tuple(AdaptStage(int(o), int(m)) for o, m in obj.get("adapt", ())))


# code(t, table ids, q or None) -> q: codes one call's symbols (encoder) or decodes them
Coder = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def slopes(p: np.ndarray) -> np.ndarray:
    """|p[t + 1] - p[t - 1]| along the last axis, indices clamped to the window (int64)."""
    pp = np.concatenate([p[..., :1], p, p[..., -1:]], axis=-1).astype(np.int64)
    return np.abs(pp[..., 2:] - pp[..., :-2])


def walk(lv: SeriesLevel, p: np.ndarray, x: np.ndarray | None, raw_min: int, raw_max: int,
         code: Coder) -> tuple[np.ndarray, np.ndarray]:
    """The T + C - 1 coder calls of the module docstring over p (N, C, T) int; x the originals
    (encoder) or None (decoder). Returns (recon int32 (N, C, T), q int64 (N, C, T))."""
    n, ch, length = p.shape
    step = 2 * lv.max_error + 1
    order = max(len(o) for o in lv.own)
    pad = max(order, HISTORY, 1, *(st.order for st in lv.adapt))
    # history, zero before the window: e and |q| per channel, time-major rows of N frames
    e = np.zeros((ch, length + pad, n), dtype=np.int64)
    aq = np.zeros((ch, length + pad, n), dtype=np.int64)
    qs = np.zeros((ch, length, n), dtype=np.int64)
    recon = np.zeros((ch, length, n), dtype=np.int64)
    pt = np.ascontiguousarray(p.transpose(1, 2, 0), dtype=np.int64)  # (C, T, N)
    xt = None if x is None else np.ascontiguousarray(x.transpose(1, 2, 0), dtype=np.int64)
    sl = None
    if lv.slope_weight:
        sl = np.ascontiguousarray((lv.slope_weight * slopes(p) // SLOPE_DIVISOR).transpose(1, 2, 0))
    luts = lv.class_luts()
    cascade = Cascade(lv.adapt, ch, n, length + pad) if lv.adapt else None
    for t in range(length + ch - 1):
        cs = [c for c in range(ch) if 0 <= t - c < length]
        fixed, guesses, ids, syms = [], [], [], []
        for c in cs:
            u = t - c + pad  # row of time t - c in the padded history
            acc = np.zeros(n, dtype=np.int64)
            for k, a in enumerate(lv.own[c], start=1):
                if a:
                    acc += a * e[c, u - k]
            if c:
                b0, b1 = lv.cross[c]
                if b0:
                    acc += b0 * e[c - 1, u]
                if b1:
                    acc += b1 * e[c - 1, u - 1]
            guess = pt[c, t - c] + (acc >> lv.shift)
            fixed.append(guess)
            if cascade is not None:
                guess = guess + cascade.predict(c, u)
            act = aq[c, u - 1] * HISTORY_WEIGHTS[0]
            for k in range(2, HISTORY + 1):
                act = act + aq[c, u - k] * HISTORY_WEIGHTS[k - 1]
            if c:
                act = act + OTHER_WEIGHT * aq[c - 1, u]
            if sl is not None:
                act = act + sl[c, t - c]
            lut = luts[c]
            ids.append(lut.take(np.minimum(act, lut.size - 1)))
            guesses.append(guess)
            if xt is not None:
                syms.append(quantize_residual(xt[c, t - c], guess, lv.max_error).astype(np.int64))
        got = code(np.concatenate(ids), np.concatenate(syms) if xt is not None else None).astype(np.int64)
        for j, c in enumerate(cs):
            u = t - c + pad
            qv = got[j * n : (j + 1) * n]
            r = np.clip(guesses[j] + qv * step, raw_min, raw_max)
            recon[c, t - c] = r
            qs[c, t - c] = qv
            e[c, u] = r - pt[c, t - c]
            aq[c, u] = np.abs(qv)
            if cascade is not None:
                cascade.update(c, u, r - fixed[j])
    back = (2, 0, 1)  # (C, T, N) -> (N, C, T)
    return recon.transpose(back).astype(np.int32), qs.transpose(back)


@dataclass(frozen=True)
class ResidualSeriesContext:
    raw_min: int
    raw_max: int
    levels: tuple[SeriesLevel, ...]  # max error ascending
    model_free: bool = False  # the classical mode's coding: p is the raw range's midpoint, no model
    classic: ResidualSeriesContext | None = None  # the classical mode's coding, if calibrated

    def __post_init__(self) -> None:
        ds = [lv.max_error for lv in self.levels]
        if ds != sorted(set(ds)) or self.raw_max <= self.raw_min:
            raise BundleError(f"series residual coding: max errors must be distinct and ascending (got {ds}) and the "
                              f"raw range [{self.raw_min}, {self.raw_max}] non-empty; re-run calibration")
        cl = self.classic
        if cl is not None and (not cl.model_free or cl.classic is not None
                               or (cl.raw_min, cl.raw_max) != (self.raw_min, self.raw_max)):
            raise BundleError("series residual coding: the classical levels must use no model and share the raw "
                              "range; re-run calibration")

    @property
    def midpoint(self) -> int:
        """The classical mode's constant prediction."""
        return (self.raw_min + self.raw_max) // 2

    def covers(self, max_error: int) -> bool:
        return any(lv.max_error == max_error for lv in self.levels)

    def level(self, max_error: int) -> SeriesLevel:
        return level_for(self.levels, max_error, "series residual")

    def _prediction(self, model: ResidualModel, raw_float: np.ndarray, lv: SeriesLevel) -> np.ndarray:
        if (model.spec.raw_min, model.spec.raw_max) != (self.raw_min, self.raw_max):
            raise BundleError(f"series residual coding covers raw range [{self.raw_min}, {self.raw_max}] but the "
                              f"residual model [{model.spec.raw_min}, {model.spec.raw_max}]; re-run calibration")
        if raw_float.ndim != 3 or raw_float.shape[1] != lv.channels:
            raise InputError(f"series residual coding needs series (N, {lv.channels}, T), got shape {raw_float.shape}")
        if self.model_free:  # raw_float gives only the shape
            return np.full(raw_float.shape, self.midpoint, dtype=np.int32)
        return prediction(raw_float, self.raw_min, self.raw_max)

    def write(self, enc: StreamEncoder, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray,
              max_error: int) -> ResidualEncoding:
        x, f = model.checked_samples(x_raw, raw_float)
        lv = self.level(check_max_error(max_error))
        p = self._prediction(model, f, lv)

        def code(ids: np.ndarray, q: np.ndarray | None) -> np.ndarray:
            assert q is not None
            enc.encode(q, ids, lv.tables)
            return q

        recon, _ = walk(lv, p, x, self.raw_min, self.raw_max, code)
        n = x.shape[0]
        return ResidualEncoding(recon=recon, shifts=np.zeros(n, dtype=np.int64), at_risk=np.zeros(n, dtype=bool))

    def read(self, dec: StreamDecoder, model: ResidualModel, raw_float: np.ndarray, max_error: int) -> np.ndarray:
        lv = self.level(check_max_error(max_error))
        p = self._prediction(model, np.asarray(raw_float), lv)
        return walk(lv, p, None, self.raw_min, self.raw_max, lambda ids, _q: dec.decode(ids, lv.tables))[0]

    def frame_costs(self, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray,
                    max_error: int) -> tuple[np.ndarray, np.ndarray]:
        """Per frame (N,): the bits its residual costs under the integer tables (what ``write`` would
        code, without its coder's flush) and its reconstruction's squared error: what the sender's
        per-frame choice of mode weighs."""
        x, f = model.checked_samples(x_raw, raw_float)
        lv = self.level(check_max_error(max_error))
        p = self._prediction(model, f, lv)
        n = x.shape[0]
        bits = np.zeros(n, dtype=np.float64)

        def count(ids: np.ndarray, q: np.ndarray | None) -> np.ndarray:
            assert q is not None
            bits[:] += symbol_bits(q, ids, lv.tables).reshape(-1, n).sum(axis=0)  # channel-major rows of N frames
            return q

        recon, _ = walk(lv, p, x, self.raw_min, self.raw_max, count)
        err = recon.astype(np.int64) - np.asarray(x, dtype=np.int64)
        return bits, (err * err).reshape(n, -1).sum(axis=1).astype(np.float64)

    # ------------------------------------------------------------------ storage
    @property
    def adaptive(self) -> bool:
        return any(lv.adapt for lv in (*self.levels, *(self.classic.levels if self.classic else ())))

    def to_json_obj(self) -> dict[str, Any]:
        """Version 1 without classical levels (so such bundles keep their bytes), version 2 with
        them, version 3 where a level has an adaptive cascade (older readers refuse it)."""
        version = VERSION_ADAPT if self.adaptive else VERSION if self.classic is None else VERSION_CLASSIC
        obj: dict[str, Any] = {"kind": KIND, "version": version,
                               "raw_min": self.raw_min, "raw_max": self.raw_max,
                               "levels": [lv.to_json_obj() for lv in self.levels]}
        if self.classic is not None:
            obj["classic"] = {"levels": [lv.to_json_obj() for lv in self.classic.levels]}
        return obj

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> ResidualSeriesContext:
        check_kind(obj, KIND, "residual coding", where)
        adapt = obj.get("version") == VERSION_ADAPT
        has_classic = ("classic" in obj if adapt else
                       classic_version(obj, VERSION, VERSION_CLASSIC, "series-context residual coding", where))
        try:
            span = (int(obj["raw_min"]), int(obj["raw_max"]))
            classic = None
            if has_classic:
                classic = cls(*span, tuple(SeriesLevel.from_json_obj(lv, adapt) for lv in obj["classic"]["levels"]),
                              model_free=True)
            return cls(*span, tuple(SeriesLevel.from_json_obj(lv, adapt) for lv in obj["levels"]), classic=classic)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed series-context residual coding ({exc}); re-run calibration") \
                from exc


def tables_from_counts(counts: np.ndarray, qmax: int, precision: int) -> TableSet:
    """counts (n_tables, 2 qmax + 1) of q -> tables spanning the q each saw, one bin either side,
    plus PRIOR_OBSERVATIONS of the level's pooled counts (rare contexts); the rest escapes."""
    pooled = counts.sum(axis=0)
    seen = np.flatnonzero(pooled)
    lo, hi = (int(seen[0]), int(seen[-1])) if seen.size else (qmax, qmax)
    lo, hi = max(lo - 1, 0), min(hi + 1, 2 * qmax)
    prior = table_from_counts(pooled[lo : hi + 1] * 16 + 1, lo - qmax, precision, escape_count=1)
    out = []
    for row in counts:
        s = np.flatnonzero(row)
        a = max(min(int(s[0]) if s.size else qmax, qmax) - 1, 0)
        b = min(max(int(s[-1]) if s.size else qmax, qmax) + 1, 2 * qmax)
        out.append(table_with_prior(row[a : b + 1], a - qmax, prior, PRIOR_OBSERVATIONS))
    return TableSet(tuple(out), precision=precision)
