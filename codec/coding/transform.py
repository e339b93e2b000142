"""The transform residual: what the latent misses, coded as DCT or wavelet coefficients per channel.

The max-error layer (residual.py) bounds every sample, so it pays for every sample; most uses of
an ECG or sensor codec ask for a bounded error ENERGY instead (PRD, PRDN, PSNR). Here the sender
takes r = x - x_hat (raw units, x_hat the decoder's float output), transforms each channel with
an orthonormal DCT-II (energy compaction: a QRS complex or a slow drift is a handful of
coefficients), quantizes with a uniform step, and codes the integers; the receiver adds the
inverse transform to its own x_hat. Orthonormal: the error energy is the quantization error's,
so the step sets the fidelity directly, and a per-frame step meets a per-frame target.

Coding, all integer and vectorised (three coder calls per packet):
1. each frame's step index into the `steps` ladder (one table);
2. per (frame, channel, band) the band's class k = bit length of its largest |q| (0: the band is
   all zero and costs nothing more), with one table per band: the forward-adaptive side
   information a hyperprior would send, in ~1 bit per band;
3. every coefficient of a band of class k >= 1 with the table of class k (values up to
   +-(2^k - 1); larger ones, only when k is capped, through the table's escape).
Tables are calibration counts (pooled over a range of steps, so they hold at any step of the
ladder) plus one observation of every symbol.

Two bases, chosen at calibration (entropy.json "kind"): "dct-bands", the orthonormal DCT-II with
equal-width bands; "cdf97-bands", the CDF 9/7 wavelet (PyWavelets' bior4.4, periodic extension,
so L samples give L coefficients) with bands = its subbands, the wider ones cut into pieces of
about L / 16. Why both: on the ECG bundle's validation records the wavelet codes the same residual
14.8 % smaller over PRDN 1.4-4.2 % (benchmarks/ecg_basis.py; a QRS complex is a few localized
coefficients at every scale); the DCT works at any length. Contexts are the decoded classes, integers only:
decoding is exact on every machine; only the final float addition depends on the decoder graph,
as for the latent-only levels, unless the tables are exact (KIND_WAVELET_EXACT, for bundles with
an exact network): then the prediction is that network's and the inverse wavelet is integer
(transform_basis.wavelet_inverse_fixed), so the samples too are the same on every machine. The
bases themselves live in transform_basis.py.

Per-window modes (FLAG_MODES): a window may go without its latent, as the same transform of the
raw window against a fixed prediction, coded with its own tables (AloneTables); the packet then
says each window's mode, and the tables of both modes sit side by side in one coder call
(table id = mode * count + id). Which mode a window takes is the sender's choice (transform_mode.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BitstreamError, BundleError, InputError
from .coder import StreamDecoder, StreamEncoder, symbol_bits
from .tables import DEFAULT_PRECISION, TableSet, table_from_counts
from .transform_basis import (
    BASIS_FUNCTIONS,
    DEFAULT_BANDS,
    FIXED_LIMIT,
    band_edges,
    forward,
    inverse,
    smooth_span,
    wavelet_band_edges,
    wavelet_forward,
    wavelet_inverse,
    wavelet_inverse_fixed,
    wavelet_levels,
    wavelet_sizes,
)

__all__ = ["BASES", "DEFAULT_BANDS", "DEFAULT_STEPS", "KIND", "KIND_WAVELET", "MAX_CLASS", "MODE_ALONE", "MODE_LATENT",
           "MODE_TABLES", "AloneTables", "TransformResidual", "band_edges", "choose_steps", "classes", "difference",
           "forward", "inverse", "prdn_per_frame", "smooth_span", "undifference", "wavelet_band_edges",
           "wavelet_forward", "wavelet_inverse", "wavelet_levels", "wavelet_sizes"]

KIND = "dct-bands"
KIND_WAVELET = "cdf97-bands"
BASES = {"dct": KIND, "cdf97": KIND_WAVELET}  # calibrate's --transform-basis -> entropy.json kind
# the same wavelet levels reconstructed exactly (a bundle with an exact network): the prediction is
# the exact network's and the inverse wavelet_inverse_fixed's, on a grid of 2**-EXACT_FRAC_BITS raw
# units; a kind of its own, so a latentwire that predates it refuses the tables instead of decoding
# them with the float inverse
KIND_WAVELET_EXACT = "cdf97-bands-exact"
EXACT_FRAC_BITS = 12
MAX_CLASS = 12  # classes 1..12: |q| < 4096; larger values (only at steps far below the residual) escape
# a geometric ladder of quantizer steps, raw units: 2^(i/4) from 0.5 to 512 (41 steps)
DEFAULT_STEPS = tuple(float(2.0 ** (i / 4.0)) for i in range(-4, 37))
# Per-window modes (a packet with FLAG_MODES): each frame's latent + transform residual, or the
# transform of the raw window alone, no latent sent (codec/FORMAT.md)
MODE_LATENT = 0
MODE_ALONE = 1
# the mode symbol's table: equal odds, one bit per window (a table per step would save < 0.1 B)
MODE_TABLES = TableSet((table_from_counts(np.array([1, 1]), MODE_LATENT),))


def classes(q: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N, C, B) class of each band: bit length of its largest |q|, capped at MAX_CLASS."""
    peak = np.maximum.reduceat(np.abs(q), edges[:-1], axis=-1)
    k = np.zeros(peak.shape, dtype=np.int64)
    nz = peak > 0
    k[nz] = np.floor(np.log2(peak[nz])).astype(np.int64) + 1
    return np.minimum(k, MAX_CLASS)


@dataclass(frozen=True)
class AloneTables:
    """The tables of windows sent without the latent (mode MODE_ALONE): the transform of the raw
    window against a fixed prediction. A raw window's coarse bands hold the signal itself (the
    baseline, each beat's full swing), far larger than what a residual leaves there, so it has
    its own class and coefficient tables. Its smooth span (the wavelet's approximation band) is
    sent as differences along the window: a slow baseline then costs a few small integers."""

    prediction: float  # raw units: what every sample is predicted as (the normalization offset)
    class_tables: TableSet  # one per band
    coef_tables: TableSet  # one per class 1..MAX_CLASS

    def to_json_obj(self) -> dict[str, Any]:
        return {"prediction": self.prediction, "class_tables": self.class_tables.to_json_obj(),
                "coef_tables": self.coef_tables.to_json_obj()}

    @classmethod
    def from_json_obj(cls, obj: Any) -> AloneTables:
        return cls(float(obj["prediction"]), TableSet.from_json_obj(obj["class_tables"]),
                   TableSet.from_json_obj(obj["coef_tables"]))


def difference(q: np.ndarray, span: int) -> np.ndarray:
    """q with its first ``span`` coefficients along the last axis sent as differences (first one as is)."""
    out = np.array(q, dtype=np.int64)
    if span > 1:
        out[..., 1:span] = np.diff(q[..., :span], axis=-1)
    return out


def undifference(d: np.ndarray, span: int) -> np.ndarray:
    """The inverse of ``difference`` (integers: exact)."""
    out = np.array(d, dtype=np.int64)
    if span > 1:
        out[..., :span] = np.cumsum(out[..., :span], axis=-1)
    return out


@dataclass(frozen=True)
class _Symbols:
    """What one packet's transform part codes after the step indices, in stream order: the band
    classes with their table ids, then the coefficients of the live bands with theirs."""

    classes: np.ndarray  # (N, C, B)
    class_ids: np.ndarray  # (N, C, B)
    coefs: np.ndarray  # (n_live,)
    coef_ids: np.ndarray  # (n_live,)
    coef_frame: np.ndarray  # (n_live,) the frame of each coded coefficient


@dataclass(frozen=True)
class TransformResidual:
    """The tables and ladder of one bundle's transform residual (entropy.json "transform")."""

    bands: int
    steps: tuple[float, ...]
    step_tables: TableSet  # one table over step indices
    class_tables: TableSet  # one per band: classes 0..MAX_CLASS
    coef_tables: TableSet  # one per class 1..MAX_CLASS
    basis: str = "dct"  # "dct" | "cdf97" (BASES)
    alone: AloneTables | None = None  # windows without the latent (per-window modes), when calibrated
    exact: bool = False  # KIND_WAVELET_EXACT: the exact prediction and inverse (cdf97 only)

    def __post_init__(self) -> None:
        if self.basis not in BASES:
            raise BundleError(
                f"transform residual: unknown basis {self.basis!r} (this latentwire knows {sorted(BASES)})"
            )
        steps = tuple(float(s) for s in self.steps)
        if not steps or any(not s > 0 for s in steps) or any(b <= a for a, b in pairwise(steps)):
            raise BundleError(f"transform residual: steps must rise from > 0, got {steps[:4]}...")
        object.__setattr__(self, "steps", steps)
        if self.exact and self.basis != "cdf97":
            raise BundleError(f"transform residual: only the cdf97 basis has an exact inverse, not {self.basis!r}")
        if len(self.step_tables) != 1 or len(self.class_tables) != self.bands or len(self.coef_tables) != MAX_CLASS:
            raise BundleError("transform residual: table counts do not match bands and classes; re-run calibration")
        a = self.alone
        if a is not None and (len(a.class_tables) != self.bands or len(a.coef_tables) != MAX_CLASS
                              or not np.isfinite(a.prediction)):
            raise BundleError("transform residual: the alone tables do not match bands and classes; re-run calibration")

    @cached_property
    def _mode_class_tables(self) -> TableSet:
        """Class tables of both modes, table id = mode * bands + band."""
        a = self._alone()
        return TableSet(tuple(self.class_tables) + tuple(a.class_tables), self.class_tables.precision)

    @cached_property
    def _mode_coef_tables(self) -> TableSet:
        a = self._alone()
        return TableSet(tuple(self.coef_tables) + tuple(a.coef_tables), self.coef_tables.precision)

    def _alone(self) -> AloneTables:
        if self.alone is None:
            raise BundleError("this bundle's transform residual has no tables for windows sent without the latent; "
                              "re-run calibration")
        return self.alone

    # ------------------------------------------------------------------ the basis
    def forward(self, residual: np.ndarray) -> np.ndarray:
        """(N, C, L) raw-unit residuals -> coefficients (N, C, L) in this residual's basis."""
        return BASIS_FUNCTIONS[self.basis][0](residual)

    def reconstruct(self, raw_float: np.ndarray, q: np.ndarray, step_idx: np.ndarray, raw_min: float,
                    raw_max: float, integer: bool) -> np.ndarray:
        """The receiver's samples: the prediction (decoder output, or ``prediction`` for windows
        without the latent) + the inverse transform of the dequantized q, clipped (and rounded
        for integer data). Exact tables: raw_float must be the exact prediction (integers, or the
        alone windows' stored constant), and the inverse is integer (wavelet_inverse_fixed), so the
        one float addition and the rounding give the same samples on every machine."""
        if self.exact:
            back = wavelet_inverse_fixed(self._dequantize_fixed(q, step_idx)) * 2.0**-EXACT_FRAC_BITS
        else:
            back = BASIS_FUNCTIONS[self.basis][1](self.dequantize(q, step_idx))
        out = np.clip(np.asarray(raw_float, dtype=np.float64) + back, raw_min, raw_max)
        return np.rint(out) if integer else out

    def prediction(self, raw_float: np.ndarray, modes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """(N, *shape) float64 prediction of every frame: the decoder output ``raw_float`` (the
        latent frames', in order) where modes is MODE_LATENT, the fixed prediction elsewhere."""
        m = np.asarray(modes)
        out = np.full((len(m), *shape), self._alone().prediction if (m == MODE_ALONE).any() else 0.0)
        out[m == MODE_LATENT] = raw_float
        return out

    def edges(self, length: int) -> np.ndarray:
        """Where each band starts, plus the end (``self.bands`` bands at the calibrated length)."""
        edges = BASIS_FUNCTIONS[self.basis][2](length, self.bands)
        if len(edges) - 1 != self.bands:
            raise InputError(f"this transform residual has {self.bands} bands, a length of {length} gives "
                             f"{len(edges) - 1}: code windows of the calibrated length")
        return edges

    def step_index(self, step: float) -> int:
        """The ladder index of a step (levels name their step; it must be on the ladder)."""
        for i, s in enumerate(self.steps):
            if abs(s - step) <= 1e-9 * s:
                return i
        raise InputError(
            f"transform step {step} is not on this bundle's ladder ({self.steps[0]:g}..{self.steps[-1]:g})"
        )

    # ------------------------------------------------------------------ coding
    def quantize(self, coefficients: np.ndarray, step_idx: np.ndarray) -> np.ndarray:
        step = np.asarray(self.steps)[np.asarray(step_idx, dtype=np.int64)]
        return np.rint(coefficients / step.reshape((-1,) + (1,) * (coefficients.ndim - 1))).astype(np.int64)

    def dequantize(self, q: np.ndarray, step_idx: np.ndarray) -> np.ndarray:
        step = np.asarray(self.steps)[np.asarray(step_idx, dtype=np.int64)]
        return q * step.reshape((-1,) + (1,) * (q.ndim - 1))

    def _dequantize_fixed(self, q: np.ndarray, step_idx: np.ndarray) -> np.ndarray:
        """q * step on the exact grid: each step rounded onto 2**-EXACT_FRAC_BITS (a power-of-two
        scaling of the stored float64, then rint: the same integer everywhere), times q in int64."""
        fixed = np.rint(np.asarray(self.steps) * 2.0**EXACT_FRAC_BITS).astype(np.int64)
        qq = np.asarray(q, dtype=np.int64)
        if qq.size and int(np.abs(qq).max()) >= 1 << 24:
            raise BitstreamError("transform coefficient beyond any residual's range: corrupt or foreign packet")
        out = qq * fixed[np.asarray(step_idx, dtype=np.int64)].reshape((-1,) + (1,) * (qq.ndim - 1))
        if out.size and int(np.abs(out).max()) >= FIXED_LIMIT:
            raise BitstreamError("transform coefficient beyond the exact inverse's range: corrupt or foreign packet")
        return out

    def _symbols(self, q: np.ndarray, modes: np.ndarray | None) -> _Symbols:
        """The symbols ``write`` codes for q (N, C, L); modes None: the residual's tables alone
        (table ids as before per-window modes existed), else per frame MODE_LATENT / MODE_ALONE."""
        n, c, length = q.shape
        edges = self.edges(length)
        alone = np.zeros(n, dtype=bool) if modes is None else np.asarray(modes) == MODE_ALONE
        q = np.asarray(q, dtype=np.int64)
        if alone.any():
            q = q.copy()
            q[alone] = difference(q[alone], smooth_span(self.basis, length))
        k = classes(q, edges)  # (N, C, B)
        nb = k.shape[-1]
        shift = alone.astype(np.int64)[:, None, None]
        class_ids = np.broadcast_to(np.arange(nb) + nb * shift, k.shape)
        per_coef = np.repeat(k, np.diff(edges), axis=-1)  # (N, C, L): each coefficient's class
        live = per_coef > 0
        coef_ids = (per_coef - 1 + MAX_CLASS * shift)[live]
        frame = np.broadcast_to(np.arange(n)[:, None, None], q.shape)[live]
        return _Symbols(k, class_ids, q[live], coef_ids, frame)

    def _tables_for(self, modes: np.ndarray | None) -> tuple[TableSet, TableSet]:
        if modes is None:
            return self.class_tables, self.coef_tables
        return self._mode_class_tables, self._mode_coef_tables

    def write(self, enc: StreamEncoder, q: np.ndarray, step_idx: np.ndarray, modes: np.ndarray | None = None) -> None:
        """q: int (N, C, L) quantized coefficients; step_idx: (N,) ladder index per frame; modes:
        (N,) MODE_LATENT / MODE_ALONE per frame (the packet has per-window modes), or None."""
        n = q.shape[0]
        idx = np.asarray(step_idx, dtype=np.int64)
        if idx.shape != (n,) or (n and (idx.min() < 0 or idx.max() >= len(self.steps))):
            raise InputError(f"step indices must be {n} values in 0..{len(self.steps) - 1}")
        if modes is not None and np.asarray(modes).shape != (n,):
            raise InputError(f"modes must be one per frame ({n}), got shape {np.asarray(modes).shape}")
        enc.encode_grouped([(0, idx.astype(np.int32))], self.step_tables)
        sym = self._symbols(q, modes)
        class_tables, coef_tables = self._tables_for(modes)
        enc.encode(sym.classes.ravel(), sym.class_ids.ravel(), class_tables)
        enc.encode(sym.coefs.astype(np.int32), sym.coef_ids.astype(np.int32), coef_tables)

    def frame_bits(self, q: np.ndarray, modes: np.ndarray | None = None) -> np.ndarray:
        """(N,) ideal bits of each frame's classes and coefficients as ``write`` codes them (the
        step index, the same whatever the mode, left out): what a sender compares modes by."""
        n = q.shape[0]
        sym = self._symbols(q, modes)
        class_tables, coef_tables = self._tables_for(modes)
        per_class = symbol_bits(sym.classes.ravel(), sym.class_ids.ravel(), class_tables).reshape(n, -1).sum(axis=1)
        per_coef = symbol_bits(sym.coefs, sym.coef_ids, coef_tables)
        return per_class + np.bincount(sym.coef_frame, weights=per_coef, minlength=n)

    def read(self, dec: StreamDecoder, n: int, channels: int, length: int,
             modes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(q (N, C, L) int64, step indices (N,)) as written by ``write`` (with the same modes)."""
        edges = self.edges(length)
        idx = dec.decode_grouped([(0, n)], self.step_tables).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.steps)):
            raise BitstreamError("transform residual names a step that is not on the ladder: corrupt payload")
        alone = np.zeros(n, dtype=bool) if modes is None else np.asarray(modes) == MODE_ALONE
        class_tables, coef_tables = self._tables_for(modes)
        nb = len(edges) - 1
        shift = alone.astype(np.int64)[:, None, None]
        ids = np.broadcast_to(np.arange(nb) + nb * shift, (n, channels, nb)).ravel()
        k = dec.decode(ids, class_tables).astype(np.int64).reshape(n, channels, nb)
        if k.size and (k.min() < 0 or k.max() > MAX_CLASS):
            raise BitstreamError("transform residual names a band class that does not exist: corrupt payload")
        per_coef = np.repeat(k, np.diff(edges), axis=-1)
        live = per_coef > 0
        q = np.zeros((n, channels, length), dtype=np.int64)
        q[live] = dec.decode((per_coef - 1 + MAX_CLASS * shift)[live].astype(np.int32), coef_tables)
        if alone.any():
            q[alone] = undifference(q[alone], smooth_span(self.basis, length))
        return q, idx

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(cls, samples: Sequence[tuple[np.ndarray, float]], *, bands: int = DEFAULT_BANDS,
            steps: Sequence[float] = DEFAULT_STEPS, precision: int = DEFAULT_PRECISION,
            basis: str = "dct", alone: Sequence[tuple[np.ndarray, float]] = (),
            prediction: float = 0.0, exact: bool = False) -> TransformResidual:
        """Tables from calibration residuals: (residuals (N, C, L) raw units, the step a level codes
        them at) pairs, pooled; every symbol also gets one observation, so nothing is uncodable.
        bands: the DCT's band count; the wavelet's bands follow from the length (wavelet_band_edges).
        alone: (raw windows (N, C, L), step) pairs to fit the tables of windows sent without the
        latent against ``prediction`` (per-window modes); none: no such tables."""
        if basis not in BASES:
            raise InputError(f"transform basis must be one of {sorted(BASES)}, got {basis!r}")
        class_tables, coef_tables = _fit_tables(samples, basis, bands, precision, 0.0, False)
        step_counts = np.ones(len(steps), dtype=np.int64)
        for residuals, step in samples:
            near = int(np.argmin([abs(np.log(st / float(step))) for st in steps]))
            step_counts[near] += len(residuals)
        step_tables = TableSet((table_from_counts(step_counts, 0, precision),), precision)
        extra = None
        if alone:
            fitted = _fit_tables(alone, basis, bands, precision, float(prediction), True)
            extra = AloneTables(float(prediction), *fitted)
        return cls(len(class_tables), tuple(float(s) for s in steps), step_tables, class_tables, coef_tables, basis,
                   extra, exact)

    @staticmethod
    def snap(step: float, steps: Sequence[float] = DEFAULT_STEPS) -> float:
        """The ladder step nearest to step (in ratio): what a level asking for step gets."""
        return float(min(steps, key=lambda s: abs(np.log(s / step))))

    def to_json_obj(self) -> dict[str, Any]:
        obj = {"kind": KIND_WAVELET_EXACT if self.exact else BASES[self.basis], "bands": self.bands,
               "steps": list(self.steps),
               "step_tables": self.step_tables.to_json_obj(), "class_tables": self.class_tables.to_json_obj(),
               "coef_tables": self.coef_tables.to_json_obj()}
        if self.alone is not None:  # absent when not calibrated, so older tables keep their bytes
            obj["alone"] = self.alone.to_json_obj()
        return obj

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> TransformResidual:
        by_kind: dict[Any, str] = {kind: b for b, kind in BASES.items()}
        by_kind[KIND_WAVELET_EXACT] = "cdf97"
        kind = obj.get("kind") if isinstance(obj, dict) else None
        basis = by_kind.get(kind)
        if basis is None:
            raise BundleError(f"{where}: unknown transform residual kind {kind!r} (this latentwire knows "
                              f"{sorted(by_kind)})")
        try:
            alone = None if obj.get("alone") is None else AloneTables.from_json_obj(obj["alone"])
            return cls(int(obj["bands"]), tuple(float(s) for s in obj["steps"]),
                       TableSet.from_json_obj(obj["step_tables"]), TableSet.from_json_obj(obj["class_tables"]),
                       TableSet.from_json_obj(obj["coef_tables"]), basis, alone, kind == KIND_WAVELET_EXACT)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed transform residual ({exc}); re-run calibration") from exc


def _fit_tables(samples: Sequence[tuple[np.ndarray, float]], basis: str, bands: int, precision: int,
                prediction: float, alone: bool) -> tuple[TableSet, TableSet]:
    """(class tables, coefficient tables) from counts of what ``write`` codes for these
    (windows, step) pairs, each window less ``prediction``; alone: as windows without the latent."""
    fwd, _, cut = BASIS_FUNCTIONS[basis]
    class_counts: np.ndarray | None = None
    coef_counts = [np.ones(2 ** (k + 1) - 1, dtype=np.int64) for k in range(1, MAX_CLASS + 1)]
    nb = 0
    for windows, step in samples:
        r = np.asarray(windows, dtype=np.float64) - prediction
        if r.ndim != 3:
            raise InputError(f"transform residuals must be (N, channels, length), got {r.shape}")
        edges = cut(r.shape[-1], bands)
        if class_counts is None:
            nb = len(edges) - 1
            class_counts = np.ones((nb, MAX_CLASS + 1), dtype=np.int64)
        q = np.rint(fwd(r) / float(step)).astype(np.int64)
        if alone:
            q = difference(q, smooth_span(basis, r.shape[-1]))
        k = classes(q, edges)
        for b in range(nb):
            class_counts[b] += np.bincount(k[..., b].ravel(), minlength=MAX_CLASS + 1)
        per_coef = np.repeat(k, np.diff(edges), axis=-1)
        for c in range(1, MAX_CLASS + 1):
            lim = 2**c - 1
            coef_counts[c - 1] += np.bincount(np.clip(q[per_coef == c], -lim, lim) + lim, minlength=2 * lim + 1)
    if class_counts is None:
        raise InputError("the transform residual needs calibration residuals for at least one step")
    return (TableSet(tuple(table_from_counts(class_counts[b], 0, precision) for b in range(nb)), precision),
            TableSet(tuple(table_from_counts(coef_counts[c - 1], -(2**c - 1), precision)
                           for c in range(1, MAX_CLASS + 1)), precision))


def prdn_per_frame(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """PRDN in percent of each frame (N, C, L): error energy over the frame's energy about each
    channel's own mean."""
    xf = np.asarray(x, dtype=np.float64)
    err = ((xf - recon) ** 2).reshape(len(xf), -1).sum(axis=1)
    centred = ((xf - xf.mean(axis=-1, keepdims=True)) ** 2).reshape(len(xf), -1).sum(axis=1)
    return 100.0 * np.sqrt(err / np.maximum(centred, 1e-12))


def choose_steps(tr: TransformResidual, x: np.ndarray, raw_float: np.ndarray, coefficients: np.ndarray,
                 target_prdn: float, raw_min: float, raw_max: float, integer: bool) -> np.ndarray:
    """Per frame, the coarsest step on the ladder whose reconstruction meets PRDN <= target
    (bisection over the ladder, all frames at once); the finest step where none does."""
    n = len(x)
    lo = np.zeros(n, dtype=np.int64)  # finest step: assumed to meet (checked below)
    hi = np.full(n, len(tr.steps) - 1, dtype=np.int64)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi + 1) // 2
        q = tr.quantize(coefficients, mid)
        rec = tr.reconstruct(raw_float, q, mid, raw_min, raw_max, integer)
        ok = prdn_per_frame(x, rec) <= target_prdn
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid - 1, hi)
    return lo
