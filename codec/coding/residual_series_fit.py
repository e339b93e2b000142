"""Calibration of the series-context residual coding (residual_series.py): per max error, the
error predictor (integer LPC coefficients on the model's decoded error), the slope weight and the
activity edges that cost the fewest bits on the calibration windows, and the tables counted there.

Candidates per max error: no carried error (the model alone), and least-squares LPC predictors of
orders ORDERS on the lossless error x - p, with and without the cross terms from the channel coded
just before (coefficients rounded to multiples of 2^-SHIFT); and each of those again with each
NLMS cascade of ADAPT_CANDIDATES on top (residual_adapt.py): the fixed predictor that is best alone
is not always best under a cascade (on ECG, e[t-1] beats the least-squares order 2 once a cascade
adapts). The prediction does not depend on the tables, so each candidate's q comes from one walk;
edges are activity quantiles; the candidate with the fewest ideal bits under its own integer tables
wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .coder import ideal_bits
from .residual import ResidualModel, check_max_error, prediction
from .residual_adapt import AdaptStage
from .residual_series import (
    HISTORY,
    HISTORY_WEIGHTS,
    OTHER_WEIGHT,
    SLOPE_DIVISOR,
    ResidualSeriesContext,
    SeriesLevel,
    slopes,
    tables_from_counts,
    walk,
)
from .tables import FreqTable, TableSet, table_from_counts

SHIFT = 6
ORDERS = (1, 2)
CARRY = (32, 48, 64)
SLOPE_WEIGHTS = (0, 4, 8)
# NLMS cascades (residual_adapt.py) tried on top of every fixed candidate, steps in 2^-10. Chosen on
# 1,024 windows of training records, classical lossless (bits/sample): one stage of order 8 at
# 70/1024 3.670 (4..12 taps and 70..130 within 0.06); 16 at 20 then 4 at 100 3.701; more stages
# no better; the fixed predictor alone 3.896.
ADAPT_CANDIDATES = (
    (AdaptStage(8, 70),),
    (AdaptStage(16, 20), AdaptStage(4, 100)),
)
DEFAULT_CLASSES = 12  # activity classes per channel, before equal quantiles merge
# windows of the calibration set that choose the predictor (all of them count the tables)
SELECT_WINDOWS = 1024
BATCH = 2048  # windows per walk when counting (its state is ~100 bytes per sample)


def activities(q: np.ndarray, p: np.ndarray, slope_weight: int) -> np.ndarray:
    """(N, C, T) int64: the activity of every sample (residual_series.py's formula), vectorised."""
    aq = np.abs(q.astype(np.int64))
    n, ch, length = aq.shape
    padded = np.concatenate([np.zeros((n, ch, HISTORY), dtype=np.int64), aq], axis=-1)
    act = np.zeros_like(aq)
    for k in range(1, HISTORY + 1):
        act += HISTORY_WEIGHTS[k - 1] * padded[..., HISTORY - k : HISTORY - k + length]
    act[:, 1:] += OTHER_WEIGHT * aq[:, :-1]
    if slope_weight:
        act += slope_weight * slopes(p) // SLOPE_DIVISOR
    return act


def lpc(e: np.ndarray, order: int, cross: bool) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Least-squares coefficients (in 2^-SHIFT) predicting e[c, t] from e[c, t-1..t-order] and,
    with cross, e[c-1, t] and e[c-1, t-1]; per channel."""
    ef = e.astype(np.float64)
    length = e.shape[-1]
    own, crs = [], []
    for c in range(e.shape[1]):
        cols = [ef[:, c, order - k : length - k] for k in range(1, order + 1)]
        if cross and c:
            cols += [ef[:, c - 1, order:], ef[:, c - 1, order - 1 : length - 1]]
        a = np.stack([v.ravel() for v in cols], axis=1)
        w = np.linalg.lstsq(a, ef[:, c, order:].ravel(), rcond=None)[0]
        w = np.rint(w * (1 << SHIFT)).astype(np.int64).tolist()
        own.append(tuple(w[:order]))
        crs.append(tuple(w[order:]) if cross and c else ((0, 0) if c else ()))
    return tuple(own), tuple(crs)


def _edges(act: np.ndarray, classes: int) -> tuple[int, ...]:
    qs = np.quantile(act.ravel(), np.linspace(0, 1, classes + 1)[1:-1], method="lower")
    return tuple(int(v) for v in np.unique(qs.astype(np.int64)) if v >= 1)


def _level_with_tables(rule: SeriesLevel, q: np.ndarray, p: np.ndarray, classes: int,
                       precision: int) -> tuple[SeriesLevel, np.ndarray]:
    """rule's predictor with edges and tables fit on (q, p); also each sample's table id."""
    act = activities(q, p, rule.slope_weight)
    edges = tuple(_edges(act[:, c], classes) for c in range(q.shape[1]))
    shell = dataclasses.replace(rule, edges=edges,
                                tables=TableSet(tuple(_dummy() for _ in range(sum(len(es) + 1 for es in edges)))))
    luts = shell.class_luts()
    ids = np.stack([luts[c].take(np.minimum(act[:, c], luts[c].size - 1)) for c in range(q.shape[1])], axis=1)
    qmax = int(np.abs(q).max()) + 1
    counts = np.zeros((shell.offsets[-1], 2 * qmax + 1), dtype=np.int64)
    np.add.at(counts, (ids.ravel(), q.ravel().astype(np.int64) + qmax), 1)
    tables = tables_from_counts(counts, qmax, precision)
    return dataclasses.replace(rule, edges=edges, tables=tables), ids


def _dummy() -> FreqTable:
    """A placeholder table: the candidates' walks code nothing, so their tables are never read."""
    return table_from_counts(np.ones(1, dtype=np.int64), 0)


def simulate(rule: SeriesLevel, p: np.ndarray, x: np.ndarray, raw_min: int, raw_max: int) -> np.ndarray:
    """q of rule's predictor on (p, x): a walk that codes nothing (its table ids are not used)."""
    single = dataclasses.replace(rule, slope_weight=0, edges=tuple(() for _ in rule.own),
                                 tables=TableSet(tuple(_dummy() for _ in rule.own)))
    return walk(single, p, x, raw_min, raw_max, lambda _ids, q: q if q is not None else _ids)[1]


def candidates(max_error: int, e: np.ndarray) -> list[SeriesLevel]:
    ch = e.shape[1]
    zero = SeriesLevel(max_error, SHIFT, tuple((0,) for _ in range(ch)),
                       tuple(() if c == 0 else (0, 0) for c in range(ch)), 0, tuple(() for _ in range(ch)),
                       TableSet(tuple(_dummy() for _ in range(ch))))
    out = [zero]
    for a in CARRY:  # e^ = a e[t-1] / 2^SHIFT: least squares weighs the rare large errors too much
        out.append(SeriesLevel(max_error, SHIFT, tuple((a,) for _ in range(ch)), zero.cross, 0, zero.edges,
                               zero.tables))
    for order in ORDERS:
        for cross in (False, True) if ch > 1 else (False,):
            own, crs = lpc(e, order, cross)
            out.append(SeriesLevel(max_error, SHIFT, own, crs, 0, zero.edges, zero.tables))
    return out


def _score(rule: SeriesLevel, p: np.ndarray, x: np.ndarray, raw_min: int, raw_max: int, classes: int,
           precision: int, log: bool) -> tuple[float, SeriesLevel]:
    """(ideal bits per sample, rule with its best slope weight) of rule's walk on (p, x)."""
    q = simulate(rule, p, x, raw_min, raw_max)
    best: tuple[float, SeriesLevel] | None = None
    for sw in SLOPE_WEIGHTS:
        r = dataclasses.replace(rule, slope_weight=sw)
        lv, ids = _level_with_tables(r, q, p, classes, precision)
        bits = ideal_bits(q.ravel(), ids.ravel(), lv.tables) / q.size
        if log:
            stages = [(st.order, st.mu) for st in lv.adapt]
            print(f"series D={rule.max_error} own={lv.own} cross={lv.cross} slope={sw} adapt={stages}: "
                  f"{bits:.4f} bits/sample", flush=True)
        if best is None or bits < best[0]:
            best = (bits, r)
    assert best is not None
    return best


def fit(model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray, max_errors: Sequence[int], *,
        classes: int = DEFAULT_CLASSES, select_windows: int = SELECT_WINDOWS,
        log: bool = False) -> ResidualSeriesContext:
    """Choose and count every max error's level on (N, C, T) calibration series: each fixed
    predictor alone and with each adaptive cascade on top (a cascade may prefer another fixed
    predictor), by ideal bits."""
    spec = model.spec
    x, f = model.checked_samples(x_raw, raw_float)
    x = np.asarray(x, dtype=np.int64)
    p = prediction(f, spec.raw_min, spec.raw_max).astype(np.int64)
    e = x - p
    sel = np.unique(np.linspace(0, x.shape[0] - 1, min(select_windows, x.shape[0])).astype(np.int64))
    levels = []
    for d in sorted({check_max_error(int(v)) for v in max_errors}):
        rules = candidates(d, e[sel])
        rules += [dataclasses.replace(r, adapt=stages) for stages in ADAPT_CANDIDATES for r in rules]
        best = min((_score(r, p[sel], x[sel], spec.raw_min, spec.raw_max, classes, model.precision, log)
                    for r in rules), key=lambda s: s[0])
        q = np.concatenate([simulate(best[1], p[i : i + BATCH], x[i : i + BATCH], spec.raw_min, spec.raw_max)
                            for i in range(0, x.shape[0], BATCH)])
        levels.append(_level_with_tables(best[1], q, p, classes, model.precision)[0])
    return ResidualSeriesContext(spec.raw_min, spec.raw_max, tuple(levels))
