"""Residuals of colour images coded along anti-diagonals: the base channel against the model,
the other channels as colour differences predicted from their decoded neighbours.

Measured on BSDS500 validation photos (tables counted on training photos), the residual of the
photo model at its finest level is nearly white in space (correlation 0.07 with its left
neighbour) but its colour differences are not: coding every channel of r = x - p on its own costs
about 4.2 bits per sample, while the colour difference x_R - x_G predicted from already decoded
neighbours (JPEG-LS's median predictor on the chroma plane) costs about 2 bits; the model's own
colour difference costs 3.7. Lossless residuals fell from 12.2 to 7.7 bits per pixel. Per pixel:

- base channel (G of RGB, ``base_channel``): q = Q(x - p), the residual against the model's
  prediction p as in residual.py. Table: the class of a = 2|q_L| + 2|q_U| + |q_UL| + |q_LL| + |q_UU|
  (base q already decoded around it) and q_L + q_U clipped to +-base_clip;
- every other channel m = 1, 2, ... (the rest ascending): its reconstructed colour difference to
  the base, k = u_m - u_b with u_b = p_b + q_b (2D+1) (the base's unclipped reconstruction), is
  predicted from k at the left, upper and upper-left pixels (zero outside the image):
  S = MED(k_L, k_U, k_UL) (``median``) or floor((k_L + k_U) / 2) (``average``: less quantization
  noise at larger D), and with a level's ``model_weight`` w (eighths) the model's colour difference
  mixed in, k^ = floor(((8 - w) S + w (p_m - p_b)) / 8). q = Q(x_m - u_b - k^) is coded with the
  table of the class of a = |k_L - k_UL| + |k_U - k_UL| (w = 0) or a = 2|q_L| + 2|q_U| + |q_UL| +
  |q_LL| + |q_UU| + 2|q_b| (w > 0; this channel's q, and the base's at the pixel) and, from m = 2 on,
  channel m - 1's q at the pixel clipped to +-signed_clip (residuals of R and B move together);
  then k = k^ + q (2D+1) and the reconstruction is clip(u_b + k).

Q(e) = sign(e) floor((|e| + D) / (2D+1)) as in residual.py, so |x - recon| <= D in every channel.
Class = #{edges <= a}; edges are quantiles fitted at calibration per max error, and the predictor
and w are chosen there per max error by the bytes they cost (w = 0 and ``median`` at D = 0,
``average`` with some of the model as D grows: BSDS500 validation, D = 4: 3.2 -> 2.4 bits).

Classical frames (``base`` BASE_MED, the ``classic`` tables; residual_classic.py): the same walk
with p_b replaced by MED of the base's decoded neighbours and w = 0, so no model is involved.

Float decoders (no exact network): every table choice is a function of decoded q, never of p (with
w = 0 the colour differences are too: u_b cancels). A receiver whose prediction is one unit off at
a sample therefore never desyncs and no bucket grid or shift is coded. With w = 0 that sample is
then one unit off in each channel and nothing else is (the bound residual.py states); with w > 0
the error can also reach later colour differences through the predictor (the recon CRC tells).

Order (one coder call per step, so a receiver knows every context before its symbol): the pixels
of anti-diagonal i + j = t, base channel at step t and colour channel m at step t + m; call t holds
the base symbols of diagonal t, then channel 1's of diagonal t - 1, then channel 2's of t - 2, ...,
each frame-major and by ascending row. Every neighbour a context reads lies on an earlier
diagonal, and channel m - 1's q at the pixel was coded one call earlier. H + W + C - 2 calls per
packet, none per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder
from .context import check_kind, classic_version, level_for, table_with_prior
from .residual import ResidualEncoding, ResidualModel, check_max_error, prediction, quantize_residual
from .residual_classic import BASE_MED, BASE_MODEL, BASES, classic_base, med
from .tables import FreqTable, TableSet, table_from_counts

KIND = "colour-wavefront"
VERSION = 1
VERSION_CLASSIC = 2  # adds ``classic``: the tables of frames sent without a latent (residual_classic.py)
PREDICTORS = ("median", "average")
MAX_MODEL_WEIGHT = 8  # model_weight is in eighths
DEFAULT_SIGNED_CLIP = 3
DEFAULT_BASE_CLIP = 2
DEFAULT_CLASSES = 12  # activity classes per kind, before equal quantiles merge
# (predictor, model_weight) pairs calibration tries per max error
CANDIDATES = (("median", 0), ("average", 0), ("average", 2), ("average", 4))
CLASSIC_CANDIDATES = (("median", 0), ("average", 0))  # no model in the classical mode
PRIOR_OBSERVATIONS = 64
PAD = 2  # zero rows above and columns left of the image: the furthest neighbour is two away
# pixels of the first calibration images that fit the edges and choose the predictor
SELECT_PIXELS = 1 << 21


@dataclass(frozen=True)
class ColourLevel:
    """One max error: its colour predictor, the activity edges of each kind, and its tables."""

    max_error: int
    predictor: str
    model_weight: int
    base_edges: tuple[int, ...]
    chroma_edges: tuple[int, ...]
    tables: TableSet

    def __post_init__(self) -> None:
        if self.predictor not in PREDICTORS or not 0 <= self.model_weight <= MAX_MODEL_WEIGHT:
            raise BundleError(f"colour residual coding: predictor {self.predictor!r} (one of {PREDICTORS}) or "
                              f"model_weight {self.model_weight} (0..{MAX_MODEL_WEIGHT}) unknown; re-run calibration")
        for name in ("base_edges", "chroma_edges"):
            edges = tuple(int(e) for e in getattr(self, name))
            if any(b <= a for a, b in pairwise(edges)) or (edges and edges[0] < 1):
                raise BundleError(f"colour residual coding: {name} must rise from >= 1, got {edges}")
            object.__setattr__(self, name, edges)

    def rule(self) -> ColourLevel:
        """The same predictor without edges or tables (what a fitting walk needs)."""
        return ColourLevel(self.max_error, self.predictor, self.model_weight, (), (), TableSet(()))


@dataclass
class _Part:
    """One kind's symbols in one coder call: their contexts and their q (None while decoding)."""

    kind: int  # 0 base, m >= 1 colour channel m
    activity: np.ndarray
    signed: np.ndarray | None  # base: q_L + q_U; colour m >= 2: channel m - 1's q at the pixel
    q: np.ndarray | None


Coder = Callable[[list[_Part]], list[np.ndarray]]


@dataclass(frozen=True)
class ResidualColourContext:
    channels: int
    base_channel: int
    signed_clip: int
    base_clip: int
    levels: tuple[ColourLevel, ...]  # max error ascending
    base: str = BASE_MODEL  # BASE_MED: the classical mode's coding (no model anywhere)
    classic: ResidualColourContext | None = None  # the classical mode's coding, if calibrated

    def __post_init__(self) -> None:
        if (self.channels < 1 or not 0 <= self.base_channel < self.channels or self.signed_clip < 0
                or self.base_clip < 0 or self.base not in BASES):
            raise BundleError(f"colour residual coding: channels {self.channels}, base {self.base_channel}, clips "
                              f"{self.signed_clip}/{self.base_clip} or base {self.base!r} out of range; re-run "
                              "calibration")
        cl = self.classic
        if (self.base == BASE_MED and (cl is not None or any(lv.model_weight for lv in self.levels))) or (
                cl is not None and (cl.base != BASE_MED or (cl.channels, cl.base_channel, cl.signed_clip, cl.base_clip)
                                    != (self.channels, self.base_channel, self.signed_clip, self.base_clip))):
            raise BundleError("colour residual coding: the classical tables must share the layout and use no model "
                              "weight; re-run calibration")
        ds = [lv.max_error for lv in self.levels]
        if ds != sorted(set(ds)):
            raise BundleError(f"colour residual coding: max errors must be distinct and ascending, got {ds}")
        for lv in self.levels:
            if len(lv.tables) != self.n_tables(lv):
                raise BundleError(f"colour residual coding for max error {lv.max_error} has {len(lv.tables)} "
                                  f"tables, expected {self.n_tables(lv)}; re-run calibration")

    @property
    def order(self) -> tuple[int, ...]:
        """Channels in coding order: the base, then the others ascending."""
        return (self.base_channel, *[c for c in range(self.channels) if c != self.base_channel])

    def _offsets(self, lv: ColourLevel) -> list[int]:
        """First table id of each kind (base, colour 1, colour 2, ...), then the total."""
        nb, nc = len(lv.base_edges) + 1, len(lv.chroma_edges) + 1
        out = [0, nb * (2 * self.base_clip + 1)]
        for m in range(2, self.channels + 1):
            out.append(out[-1] + (nc if m == 2 else nc * (2 * self.signed_clip + 1)))
        return out

    def n_tables(self, lv: ColourLevel) -> int:
        return self._offsets(lv)[-1]

    def covers(self, max_error: int) -> bool:
        return any(lv.max_error == max_error for lv in self.levels)

    def _level(self, max_error: int) -> ColourLevel:
        return level_for(self.levels, max_error, "colour residual")

    def _ids(self, lv: ColourLevel, parts: list[_Part], luts: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Each part's table ids; luts: ``_class_luts(lv)``, computed once per packet by callers."""
        luts = self._class_luts(lv) if luts is None else luts
        out = []
        for part in parts:
            lut = luts[part.kind]
            ids = lut.take(np.minimum(part.activity, lut.size - 1))
            if part.signed is not None:
                clip = self.base_clip if part.kind == 0 else self.signed_clip
                ids += np.minimum(np.maximum(part.signed, -clip), clip) + clip
            out.append(ids)
        return out

    def _class_luts(self, lv: ColourLevel) -> list[np.ndarray]:
        """Per kind: the table id (before the signed part) of every activity up to the last edge
        (larger ones share its class): class_E(a) * (2 clip + 1) + offset, one gather per call."""
        offs = self._offsets(lv)
        out = []
        for kind in range(self.channels):
            edges = lv.base_edges if kind == 0 else lv.chroma_edges
            cls = np.searchsorted(np.asarray(edges, dtype=np.int64), np.arange((edges[-1] if edges else 0) + 1),
                                  side="right").astype(np.int64)
            if kind == 0 or kind >= 2:
                cls *= 2 * (self.base_clip if kind == 0 else self.signed_clip) + 1
            out.append(cls + offs[kind])
        return out

    # ------------------------------------------------------------------ coding
    def write(self, enc: StreamEncoder, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray,
              max_error: int) -> ResidualEncoding:
        x, f = model.checked_samples(x_raw, raw_float)
        lv = self._level(check_max_error(max_error))
        luts = self._class_luts(lv)

        def code(parts: list[_Part]) -> list[np.ndarray]:
            syms = [pt.q for pt in parts if pt.q is not None]
            enc.encode(np.concatenate(syms), np.concatenate(self._ids(lv, parts, luts)), lv.tables)
            return syms

        recon = self._walk(model, f, x, lv, code)
        n = x.shape[0]
        return ResidualEncoding(recon=recon, shifts=np.zeros(n, dtype=np.int64), at_risk=np.zeros(n, dtype=bool))

    def read(self, dec: StreamDecoder, model: ResidualModel, raw_float: np.ndarray, max_error: int) -> np.ndarray:
        lv = self._level(check_max_error(max_error))
        luts = self._class_luts(lv)

        def code(parts: list[_Part]) -> list[np.ndarray]:
            ids = self._ids(lv, parts, luts)
            got = dec.decode(np.concatenate(ids), lv.tables)
            out, at = [], 0
            for a in ids:
                out.append(got[at : at + a.size])
                at += a.size
            return out

        return self._walk(model, np.asarray(raw_float), None, lv, code)

    def _walk(self, model: ResidualModel, raw_float: np.ndarray, x: np.ndarray | None, lv: ColourLevel,
              code: Coder) -> np.ndarray:
        """Run the anti-diagonal steps (module docstring); ``code`` turns each step's parts into
        their q (coding what the sender computed, or decoding them). Returns the reconstruction."""
        spec = model.spec
        if raw_float.ndim != 4 or raw_float.shape[1] != self.channels:
            raise InputError(f"colour residual coding needs images (N, {self.channels}, H, W), got shape "
                             f"{raw_float.shape}")
        n, c, h, w = raw_float.shape
        step = 2 * lv.max_error + 1
        weight = lv.model_weight
        p = prediction(raw_float, spec.raw_min, spec.raw_max)
        order = self.order
        wp = w + PAD
        # state, zero-padded above and left, flat: q and |q| of every kind, colour differences k
        q = np.zeros((c, n * (h + PAD) * wp), dtype=np.int64)
        aq = np.zeros_like(q)
        k = np.zeros_like(q)
        pp = np.stack([_padded(p[:, ch]).ravel() for ch in order])
        xs = None if x is None else np.stack([_padded(x[:, ch]).ravel() for ch in order])
        diagonals = _diagonals(n, h, w)
        # neighbours in the flat padded layout: L, U first (their signed sum), then UL, LL, UU
        back = np.array([1, wp, wp + 1, 2, 2 * wp], dtype=np.int64)
        weights = np.array([2, 2, 1, 1, 1], dtype=np.int64)
        qb, pb = q[0], pp[0]
        for t in range(h + w - 2 + c):
            parts: list[_Part] = []
            where: list[np.ndarray] = []
            for m in range(c):
                if not 0 <= t - m < len(diagonals):
                    continue
                idx = diagonals[t - m]
                where.append(idx)
                around = idx[:, None] - back
                if m == 0:
                    if self.base == BASE_MED:  # predicted from this frame's decoded base (residual_classic.py)
                        pb[idx] = classic_base(pb, qb, step, idx, wp)
                    sym = None if xs is None else quantize_residual(xs[0].take(idx), pb.take(idx), lv.max_error)
                    parts.append(_Part(0, aq[0].take(around) @ weights, qb.take(around[:, :2]).sum(axis=1), sym))
                    continue
                km = k[m]
                a, b, ab = km.take(idx - 1), km.take(idx - wp), km.take(idx - wp - 1)
                guess = med(a, b, ab) if lv.predictor == "median" else (a + b) // 2
                if weight:
                    guess = ((MAX_MODEL_WEIGHT - weight) * guess + weight * (pp[m].take(idx) - pb.take(idx))) \
                        // MAX_MODEL_WEIGHT
                    act = aq[m].take(around) @ weights + 2 * aq[0].take(idx)
                else:
                    act = np.abs(a - ab) + np.abs(b - ab)
                sym = None
                if xs is not None:
                    sym = quantize_residual(xs[m].take(idx) - pb.take(idx) - qb.take(idx) * step, guess,
                                            lv.max_error)
                parts.append(_Part(m, act, q[m - 1].take(idx) if m >= 2 else None, sym))
                km[idx] = guess  # completed below, once q is known
            for part, idx, qv in zip(parts, where, code(parts), strict=True):
                qv = qv.astype(np.int64)
                q[part.kind][idx] = qv
                aq[part.kind][idx] = np.abs(qv)
                if part.kind:
                    k[part.kind][idx] += qv * step
        ub = pb + qb * step
        out = np.empty((n, c, h, w), dtype=np.int32)
        for m, ch in enumerate(order):
            u = ub if m == 0 else ub + k[m]
            out[:, ch] = np.clip(u, spec.raw_min, spec.raw_max).reshape(n, h + PAD, wp)[:, PAD:, PAD:]
        return out

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(cls, model: ResidualModel, x_raw: np.ndarray | Sequence[np.ndarray],
            raw_float: np.ndarray | Sequence[np.ndarray], max_errors: Sequence[int], *, base_channel: int = 1,
            signed_clip: int = DEFAULT_SIGNED_CLIP, base_clip: int = DEFAULT_BASE_CLIP,
            classes: int = DEFAULT_CLASSES, candidates: Sequence[tuple[str, int]] | None = None,
            batch_size: int = 16, base: str = BASE_MODEL) -> ResidualColourContext:
        """Per D: on the first SELECT_PIXELS pixels, fit edges and tables for every candidate
        (predictor, model_weight) and keep the one whose tables code those pixels in the fewest bits;
        then count its tables over every image. x_raw / raw_float: (N, C, H, W), or sequences of
        (1, C, H, W) images of any sizes. base BASE_MED: the classical mode's tables (residual_classic.py;
        raw_float then only gives shapes), with CLASSIC_CANDIDATES unless candidates are given."""
        batches = _batches(x_raw, raw_float, batch_size)
        channels = batches[0][0].shape[1]
        shell = cls(channels, base_channel if base_channel < channels else 0, int(signed_clip), int(base_clip), (),
                    base)
        if candidates is None:
            candidates = CLASSIC_CANDIDATES if base == BASE_MED else CANDIDATES
        first, pixels = [], 0
        for pair in batches:
            first.append(pair)
            pixels += pair[0].shape[0] * pair[0].shape[2] * pair[0].shape[3]
            if pixels >= SELECT_PIXELS:
                break
        levels = []
        for d in sorted({check_max_error(int(e)) for e in max_errors}):
            tried = [_fit_level(shell, model, first, ColourLevel(d, pred, wt, (), (), TableSet(())), classes)
                     for pred, wt in (candidates if channels > 1 else candidates[:1])]
            best = min(tried, key=lambda r: r[1])[0]
            if len(first) < len(batches):
                best = _fit_level(shell, model, batches, best.rule(), classes, edges_from=best)[0]
            levels.append(best)
        return cls(shell.channels, shell.base_channel, shell.signed_clip, shell.base_clip, tuple(levels), base)

    def to_json_obj(self) -> dict[str, Any]:
        """Version 1 without classical tables (so such bundles keep their bytes), else version 2."""
        obj = {"kind": KIND, "version": VERSION if self.classic is None else VERSION_CLASSIC,
               "channels": self.channels, "base_channel": self.base_channel, "signed_clip": self.signed_clip,
               "base_clip": self.base_clip, "levels": [_level_obj(lv) for lv in self.levels]}
        if self.classic is not None:
            obj["classic"] = {"levels": [_level_obj(lv) for lv in self.classic.levels]}
        return obj

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> ResidualColourContext:
        check_kind(obj, KIND, "residual coding", where)
        has_classic = classic_version(obj, VERSION, VERSION_CLASSIC, "colour residual coding", where)
        try:
            layout = (int(obj["channels"]), int(obj["base_channel"]), int(obj["signed_clip"]), int(obj["base_clip"]))
            classic = None
            if has_classic:
                classic = cls(*layout, tuple(_level_from(e) for e in obj["classic"]["levels"]), BASE_MED)
            return cls(*layout, tuple(_level_from(e) for e in obj["levels"]), classic=classic)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed colour residual coding ({exc}); re-run calibration") from exc


def _level_obj(lv: ColourLevel) -> dict[str, Any]:
    return {"max_error": lv.max_error, "predictor": lv.predictor, "model_weight": lv.model_weight,
            "base_edges": list(lv.base_edges), "chroma_edges": list(lv.chroma_edges), "tables": lv.tables.to_json_obj()}


def _level_from(e: Any) -> ColourLevel:
    return ColourLevel(int(e["max_error"]), str(e["predictor"]), int(e["model_weight"]),
                       tuple(int(v) for v in e["base_edges"]), tuple(int(v) for v in e["chroma_edges"]),
                       TableSet.from_json_obj(e["tables"]))


def _diagonals(n: int, h: int, w: int) -> list[np.ndarray]:
    """Flat padded indices of the pixels of each anti-diagonal i + j = t (t = 0 .. h + w - 2), frame-
    major, then by ascending row: the order each coding call holds a kind's symbols in."""
    wp = w + PAD
    i, j = np.divmod(np.arange(h * w, dtype=np.int64), w)
    local = (i + PAD) * wp + (j + PAD)
    frames = np.repeat(np.arange(n, dtype=np.int64), h * w)
    flat = frames * ((h + PAD) * wp) + np.tile(local, n)
    diag = np.tile(i + j, n)
    order = np.lexsort((np.tile(i, n), frames, diag))
    return np.split(flat[order], np.cumsum(np.bincount(diag, minlength=h + w - 1))[:-1])


def _padded(a: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H + PAD, W + PAD) int64, zeros above and left."""
    return np.pad(a.astype(np.int64), ((0, 0), (PAD, 0), (PAD, 0)))


def _batches(x_raw: np.ndarray | Sequence[np.ndarray], raw_float: np.ndarray | Sequence[np.ndarray],
             batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(x_raw, np.ndarray) and isinstance(raw_float, np.ndarray):
        if x_raw.ndim != 4 or x_raw.shape != raw_float.shape or not len(x_raw):
            raise InputError(f"colour residual coding fits on images (N, C, H, W), got {x_raw.shape} and "
                             f"{raw_float.shape}")
        return [(x_raw[i : i + batch_size], raw_float[i : i + batch_size]) for i in range(0, len(x_raw), batch_size)]
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(x_raw, raw_float, strict=True)]
    if not pairs or any(a.ndim != 4 or a.shape != b.shape or a.shape[1] != pairs[0][0].shape[1] for a, b in pairs):
        raise InputError("colour residual coding fits on images (1, C, H, W) with their predictions")
    return pairs


class _Recorder:
    """A coder for fitting: keeps each step's activities (no level edges yet) or its table-and-
    symbol keys, and hands the sender's q back."""

    def __init__(self, shell: ResidualColourContext, level: ColourLevel | None = None, qmax: int = 0) -> None:
        self.shell, self.level, self.qmax = shell, level, qmax
        self.luts = None if level is None else shell._class_luts(level)
        self.activities: list[list[np.ndarray]] = [[], []]  # base, colour
        self.keys: list[np.ndarray] = []

    def __call__(self, parts: list[_Part]) -> list[np.ndarray]:
        syms = [pt.q for pt in parts if pt.q is not None]
        if self.level is None:
            for pt in parts:
                self.activities[min(pt.kind, 1)].append(pt.activity)
        else:
            span = 2 * self.qmax + 1
            for i, q in zip(self.shell._ids(self.level, parts, self.luts), syms, strict=True):
                self.keys.append(i.astype(np.int64) * span + q + self.qmax)
        return syms


def _fit_level(shell: ResidualColourContext, model: ResidualModel, batches: list[tuple[np.ndarray, np.ndarray]],
               rule: ColourLevel, classes: int, edges_from: ColourLevel | None = None) -> tuple[ColourLevel, float]:
    """Edges (from the walks' activities, or edges_from's), then q counted per table over every
    batch on the widest q range the raw range allows -> (level, in-sample bits of those counts)."""
    d = rule.max_error
    if edges_from is None:
        rec = _Recorder(shell)
        for xb, fb in batches:
            shell._walk(model, fb, model.checked_samples(xb, fb)[0], rule, rec)
        base_edges, chroma_edges = (_quantile_edges(a, classes) for a in rec.activities)
    else:
        base_edges, chroma_edges = edges_from.base_edges, edges_from.chroma_edges
    shape = ColourLevel(d, rule.predictor, rule.model_weight, base_edges, chroma_edges, TableSet(()))
    qmax = (2 * (model.spec.raw_max - model.spec.raw_min) + 4 * d) // (2 * d + 1) + 1
    n_tables = shell.n_tables(shape)
    counts = np.zeros(n_tables * (2 * qmax + 1), dtype=np.int64)
    for xb, fb in batches:
        rec = _Recorder(shell, shape, qmax)
        shell._walk(model, fb, model.checked_samples(xb, fb)[0], shape, rec)
        counts += np.bincount(np.concatenate(rec.keys), minlength=counts.size)
    per_table = counts.reshape(n_tables, 2 * qmax + 1)
    tables, bits = _tables(shell, shape, per_table, -qmax, model.precision)
    return ColourLevel(d, rule.predictor, rule.model_weight, base_edges, chroma_edges, tables), bits


def _quantile_edges(parts: list[np.ndarray], classes: int) -> tuple[int, ...]:
    """Up to classes - 1 rising integer edges >= 1 at equal quantiles of the activities:
    class = #{edges <= activity}."""
    if not parts:
        return ()
    qs = np.quantile(np.concatenate(parts), np.arange(1, classes) / classes, method="higher")
    return tuple(int(e) for e in np.unique(qs.astype(np.int64)) if e >= 1)


def _tables(shell: ResidualColourContext, lv: ColourLevel, counts: np.ndarray, lo: int,
            precision: int) -> tuple[TableSet, float]:
    """Counts (n_tables, span) of q = lo.. per table, plus PRIOR_OBSERVATIONS of the kind's pooled
    table, over the q range the kind saw (one bin either side; anything else escapes); and the
    bits these tables spend on the counts."""
    offs = shell._offsets(lv)
    tables: list[FreqTable] = []
    bits = 0.0
    for kind in range(shell.channels):
        c = counts[offs[kind] : offs[kind + 1]]
        seen = np.flatnonzero(c.sum(axis=0))
        a = max(int(seen[0]) - 1, 0) if seen.size else -lo - 1
        b = min(int(seen[-1]) + 1, c.shape[1] - 1) if seen.size else -lo + 1
        pooled = table_from_counts(c[:, a : b + 1].sum(axis=0) + 1, lo + a, precision)
        for j in range(len(c)):
            t = table_with_prior(c[j, a : b + 1], lo + a, pooled, PRIOR_OBSERVATIONS)
            bits += float(c[j, a : b + 1] @ t.cost_bits[: b - a + 1])
            tables.append(t)
    return TableSet(tuple(tables), precision=precision), bits
