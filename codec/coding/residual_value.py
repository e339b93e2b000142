"""Residual tables chosen by the exact prediction's own value and local slope (exact bundles only).

residual.py picks a sample's table by one of 16 buckets of its prediction p. On data that saturates,
that throws most of the information away: an MNIST pixel is 0 four times in five, so given p the
residual r = x - p has a spike at exactly -p, which a bucket 16 values wide smears over 16 bins.
With one table per prediction VALUE the spike stays one bin, and MNIST's lossless level falls from
267 to 111 B per digit (validation digits, tables counted on the other 55,000; the plain tables:
residual.py). An optional second context is the prediction's local slope: the sum over the
sample axes after the first of |p[next] - p[previous]| (edges repeat the border sample), bucketed by
``activity_edges`` (residuals are larger on edges than on flat ground; calibration leaves it off,
see DEFAULT_ACTIVITY_EDGES). Per calibrated max error D:

    table id = ((p - raw_min) // value_width) * (len(edges) + 1) + #{e in edges : e <= slope}

Everything is a function of p and the stored integers, so it is known before any residual is
decoded and the whole layer is ONE coder call (vectorised like residual.py). It is only safe where
p is identical on every machine: the exact network's prediction (coding/exact.py, FLAG_EXACT).
From a float decoder a p one unit off would switch tables (width-1 classes leave no guard band),
so calibration fits these tables only for bundles with an exact network. Tables are calibration
counts per context plus PRIOR_OBSERVATIONS of residual.py's table for the same prediction bucket,
each spanning the q values its context saw and those its prediction value allows (one bin either
side); anything else goes through the escape. A max error the calibration did not see codes with
residual.py's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder
from .context import check_kind, table_with_prior
from .residual import ResidualEncoding, ResidualModel, check_max_error, prediction, quantize_residual, reconstruct
from .tables import FreqTable, TableSet

KIND = "prediction-value"
VERSION = 1
# No slope classes by default: on MNIST validation digits, edges (4, 16, 48, 128) saved 1.9 of 111 B
# per lossless digit but cost a quarter of the residual stage's decoding speed (1,280 tables per
# call instead of 256), and one edge (32) 1.2 B for a fifth; the codec's target is digits per second.
DEFAULT_ACTIVITY_EDGES: tuple[int, ...] = ()
PRIOR_OBSERVATIONS = 64
# value classes x slope classes per max error: a bound on the tables a bundle may ask a reader to build
MAX_TABLES_PER_LEVEL = 1 << 16


def slope(pred: np.ndarray) -> np.ndarray:
    """(N, *sample) int16 or int32: per sample, sum over the sample axes after the first (all of them for
    1-D samples) of |p[i + 1] - p[i - 1]| along that axis, the border sample repeated."""
    axes = range(2, np.ndim(pred)) if np.ndim(pred) > 2 else range(1, np.ndim(pred))
    p = np.asarray(pred)
    # int16 holds every slope of a narrow raw range (a third less memory traffic than int32)
    dtype = np.int16 if p.size and (int(p.max()) - int(p.min())) * max(len(axes), 1) < 1 << 14 else np.int32
    p = p.astype(dtype)
    out = np.zeros(p.shape, dtype=dtype)
    for ax in axes:
        if p.shape[ax] < 2:
            continue
        v = np.moveaxis(p, ax, -1)
        o = np.moveaxis(out, ax, -1)  # a view: writes land in out
        o[..., 1:-1] += np.abs(v[..., 2:] - v[..., :-2])
        o[..., 0] += np.abs(v[..., 1] - v[..., 0])
        o[..., -1] += np.abs(v[..., -1] - v[..., -2])
    return out


@dataclass(frozen=True)
class ResidualValueContext:
    """Per calibrated max error D: n_values * n_activity tables (see the module docstring)."""

    raw_min: int
    raw_max: int
    value_width: int
    activity_edges: tuple[int, ...]
    tables: tuple[tuple[int, TableSet], ...]  # (D, tables), D ascending

    def __post_init__(self) -> None:
        edges = tuple(int(e) for e in self.activity_edges)
        object.__setattr__(self, "activity_edges", edges)
        if self.raw_max <= self.raw_min or self.value_width < 1:
            raise BundleError(f"prediction-value context: raw range [{self.raw_min}, {self.raw_max}] or value width "
                              f"{self.value_width} out of range; re-run calibration")
        if any(b <= a for a, b in pairwise(edges)) or (edges and edges[0] < 1):
            raise BundleError(f"prediction-value context: activity_edges must rise from >= 1, got {edges}")
        if self.n_tables > MAX_TABLES_PER_LEVEL:
            raise BundleError(f"prediction-value context asks for {self.n_tables} tables per level (at most "
                              f"{MAX_TABLES_PER_LEVEL}); widen value_width and re-run calibration")
        ds = [d for d, _ in self.tables]
        if ds != sorted(set(ds)):
            raise BundleError(f"prediction-value context max errors must be distinct and ascending, got {ds}")
        for d, ts in self.tables:
            if len(ts) != self.n_tables:
                raise BundleError(f"prediction-value context for max error {d} has {len(ts)} tables, expected "
                                  f"{self.n_tables}; re-run calibration")

    @property
    def n_values(self) -> int:
        return -(-(self.raw_max - self.raw_min + 1) // self.value_width)

    @property
    def n_activity(self) -> int:
        return len(self.activity_edges) + 1

    @property
    def n_tables(self) -> int:
        return self.n_values * self.n_activity

    def covers(self, max_error: int) -> bool:
        return any(d == max_error for d, _ in self.tables)

    def _tables(self, max_error: int) -> TableSet:
        for d, ts in self.tables:
            if d == max_error:
                return ts
        raise BundleError(f"no prediction-value tables for max error {max_error}")

    def table_ids(self, pred: np.ndarray) -> np.ndarray:
        """Table ids, pred's shape (N, *sample), from the integer prediction alone: uint16 where the
        raw range fits it (then every id does too, and the coder's radix sort takes them as they
        are), else int32."""
        dtype = np.uint16 if self.raw_max - self.raw_min < 1 << 16 else np.int32
        p = np.asarray(pred)
        ids = (p - np.int32(self.raw_min)).astype(dtype) if self.raw_min else p.astype(dtype)
        if self.value_width > 1:
            ids //= dtype(self.value_width)
        ids *= dtype(self.n_activity)
        if self.activity_edges:
            ids += self._slope_classes.astype(dtype).take(np.minimum(slope(p), self.activity_edges[-1]))
        return ids

    @cached_property
    def _slope_classes(self) -> np.ndarray:
        """Slope class of every slope a prediction in the raw range can have (a gather beats a
        binary search per sample); slopes past the last edge all share its class."""
        top = self.activity_edges[-1] if self.activity_edges else 0
        return np.searchsorted(np.asarray(self.activity_edges, dtype=np.int64), np.arange(top + 1),
                               side="right").astype(np.int32)

    # ------------------------------------------------------------------ coding
    def write(self, enc: StreamEncoder, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray,
              max_error: int) -> ResidualEncoding:
        """One coder call: every q of every frame in C order, each with its prediction's table."""
        x, f = model.checked_samples(x_raw, raw_float)
        d = check_max_error(max_error)
        p = self._prediction(model, f)
        q = quantize_residual(x, p, d)
        enc.encode(q.ravel(), self.table_ids(p).ravel(), self._tables(d))
        recon = reconstruct(p, q, d, self.raw_min, self.raw_max).reshape(x.shape)
        n = x.shape[0]
        return ResidualEncoding(recon=recon, shifts=np.zeros(n, dtype=np.int64), at_risk=np.zeros(n, dtype=bool))

    def read(self, dec: StreamDecoder, model: ResidualModel, raw_float: np.ndarray, max_error: int) -> np.ndarray:
        d = check_max_error(max_error)
        p = self._prediction(model, np.asarray(raw_float))
        q = dec.decode(self.table_ids(p).ravel(), self._tables(d)).reshape(p.shape)
        return reconstruct(p, q, d, self.raw_min, self.raw_max)

    def _prediction(self, model: ResidualModel, raw_float: np.ndarray) -> np.ndarray:
        if (model.spec.raw_min, model.spec.raw_max) != (self.raw_min, self.raw_max):
            raise BundleError(f"prediction-value context covers raw range [{self.raw_min}, {self.raw_max}] but the "
                              f"residual model [{model.spec.raw_min}, {model.spec.raw_max}]; re-run calibration")
        if raw_float.ndim < 2:
            raise InputError(f"residual coding needs samples (N, ...), got shape {raw_float.shape}")
        return prediction(raw_float, self.raw_min, self.raw_max)

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(cls, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray, max_errors: Sequence[int], *,
            value_width: int = 1, activity_edges: Sequence[int] = DEFAULT_ACTIVITY_EDGES,
            batch_size: int = 4096) -> ResidualValueContext:
        """Count calibration residuals per (prediction value, slope class) for every D in max_errors."""
        spec = model.spec
        empty = cls(spec.raw_min, spec.raw_max, int(value_width), tuple(activity_edges), ())
        values = np.arange(empty.n_values, dtype=np.int64) * empty.value_width + spec.raw_min
        buckets = spec.context(values).astype(np.int64)  # residual.py's bucket of each class's first value
        out: list[tuple[int, TableSet]] = []
        for d in sorted({check_max_error(int(e)) for e in max_errors}):
            step = 2 * d + 1
            qmax = (spec.raw_max - spec.raw_min + d) // step
            width = 2 * qmax + 1
            counts = np.zeros(empty.n_tables * width, dtype=np.int64)
            for i in range(0, x_raw.shape[0], batch_size):
                x, f = model.checked_samples(x_raw[i : i + batch_size], raw_float[i : i + batch_size])
                p = prediction(f, spec.raw_min, spec.raw_max)
                q = quantize_residual(x, p, d).astype(np.int64)
                ids = empty.table_ids(p).astype(np.int64)
                counts += np.bincount((ids * width + q + qmax).ravel(), minlength=counts.size)
            per_table = counts.reshape(empty.n_tables, width)
            base = model.tables(d)
            tables: list[FreqTable] = []
            for k in range(empty.n_tables):
                v = int(k // empty.n_activity)
                prior = base[int(buckets[v])]
                # q the class's prediction values allow: x in [raw_min, raw_max]
                v_lo = int(values[v])
                v_hi = min(v_lo + empty.value_width - 1, spec.raw_max)
                lo_ok = -((v_hi - spec.raw_min + d) // step)
                hi_ok = (spec.raw_max - v_lo + d) // step
                seen = np.flatnonzero(per_table[k])
                a = min(int(seen[0]) - qmax if seen.size else 0, max(prior.lo, lo_ok)) - 1
                b = max(int(seen[-1]) - qmax if seen.size else 0, min(prior.hi, hi_ok)) + 1
                a, b = max(a, -qmax), min(b, qmax)
                tables.append(table_with_prior(per_table[k, a + qmax : b + qmax + 1], a, prior, PRIOR_OBSERVATIONS))
            out.append((d, TableSet(tuple(tables), precision=model.precision)))
        return cls(spec.raw_min, spec.raw_max, int(value_width), tuple(int(e) for e in activity_edges), tuple(out))

    def to_json_obj(self) -> dict[str, Any]:
        return {"kind": KIND, "version": VERSION, "raw_min": self.raw_min, "raw_max": self.raw_max,
                "value_width": self.value_width, "activity_edges": list(self.activity_edges),
                "levels": [{"max_error": d, "tables": ts.to_json_obj()} for d, ts in self.tables]}

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> ResidualValueContext:
        check_kind(obj, KIND, "residual coding", where)
        if obj.get("version") != VERSION:
            raise BundleError(f"{where}: prediction-value residual coding version {obj.get('version')!r}; this "
                              f"latentwire reads {VERSION}: upgrade latentwire or re-run calibration")
        try:
            return cls(int(obj["raw_min"]), int(obj["raw_max"]), int(obj["value_width"]),
                       tuple(int(e) for e in obj["activity_edges"]),
                       tuple((int(e["max_error"]), TableSet.from_json_obj(e["tables"])) for e in obj["levels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed prediction-value residual coding ({exc}); re-run calibration") \
                from exc
