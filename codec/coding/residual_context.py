"""Residuals coded in sample order with the previous residual as context (calibrated max errors).

The residual layer (residual.py) picks each sample's table by the bucket of its prediction only.
On signals the autoencoder's misses are runs, not single samples: where it smooths a QRS complex
several consecutive residuals share a sign and a size. So for each max error D the calibration
saw, a sample's table here also depends on the quantized residual q already decoded one step
earlier along the last sample axis (same frame, same lead/row), clipped to [-signed_clip,
signed_clip]:

    table id = prediction bucket * (2 * signed_clip + 1) + clip(q[..., t-1]) + signed_clip

The previous q is an integer the receiver decoded itself, so this context adds no float hazard
beyond the prediction bucket residual.py already guards. Tables are integer counts of the
calibration residuals per context plus 64 observations' worth of residual.py's table of the same
prediction bucket (the fallback for rare contexts). A max error the calibration did not see
(a custom ``--max-error``) uses residual.py's tables unchanged. Coding runs one coder call per
position of the last sample axis (all frames and leading positions together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder
from .context import check_kind, previous_along_last, table_with_prior, write_by_position
from .residual import ResidualEncoding, ResidualModel, check_max_error, prediction, reconstruct
from .tables import FreqTable, TableSet

KIND = "previous-sample"
DEFAULT_SIGNED_CLIP = 2
PRIOR_OBSERVATIONS = 64


@dataclass(frozen=True)
class ResidualContext:
    """Per calibrated max error D: n_contexts * (2 * signed_clip + 1) tables."""

    signed_clip: int
    n_contexts: int
    tables: tuple[tuple[int, TableSet], ...]  # (D, tables), D ascending

    def __post_init__(self) -> None:
        if self.signed_clip < 0 or self.n_contexts < 1:
            raise BundleError(
                f"residual context: signed_clip {self.signed_clip}, n_contexts {self.n_contexts} out of range"
            )
        want = self.n_contexts * self.width
        for d, ts in self.tables:
            if len(ts) != want:
                raise BundleError(
                    f"residual context for max error {d} has {len(ts)} tables, expected {want}; re-run calibration"
                )
        ds = [d for d, _ in self.tables]
        if ds != sorted(set(ds)):
            raise BundleError(f"residual context max errors must be distinct and ascending, got {ds}")

    @property
    def width(self) -> int:
        return 2 * self.signed_clip + 1

    def covers(self, max_error: int) -> bool:
        return any(d == max_error for d, _ in self.tables)

    def _tables(self, max_error: int) -> TableSet:
        for d, ts in self.tables:
            if d == max_error:
                return ts
        raise BundleError(f"no residual context tables for max error {max_error}")

    def _ids(self, bucket: np.ndarray, q_prev: np.ndarray) -> np.ndarray:
        s = self.signed_clip
        return (bucket.astype(np.int64) * self.width + np.clip(q_prev, -s, s) + s).astype(np.int32)

    # ------------------------------------------------------------------ coding
    def write(self, enc: StreamEncoder, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray,
              max_error: int) -> ResidualEncoding:
        """Shifts (as residual.py codes them), then q position by position along the last axis."""
        if x_raw.ndim < 2:
            raise InputError(f"residual context needs samples (N, ..., L), got shape {x_raw.shape}")
        q, bucket, info = model.encode_residual(x_raw, raw_float, max_error)
        model.write_shifts(enc, info.shifts, max_error)
        shape = _steps_shape(x_raw.shape)
        q, bucket = q.reshape(shape), bucket.reshape(shape)
        write_by_position(enc, q, self._ids(bucket, previous_along_last(q)), self._tables(max_error))
        return info

    def read(self, dec: StreamDecoder, model: ResidualModel, raw_float: np.ndarray, max_error: int) -> np.ndarray:
        f = np.asarray(raw_float)
        if f.ndim < 2:
            raise InputError(f"residual context needs samples (N, ..., L), got shape {f.shape}")
        n = f.shape[0]
        spec = model.spec
        p = prediction(f, spec.raw_min, spec.raw_max).reshape(n, -1)
        shifts = model.read_shifts(dec, n, max_error)
        shape = _steps_shape(f.shape)
        bucket = spec.context(p, shifts[:, None]).reshape(shape)
        tables = self._tables(max_error)
        q = np.empty(shape, dtype=np.int32)
        prev = np.zeros(shape[:-1], dtype=np.int32)
        for t in range(shape[-1]):
            prev = dec.decode(self._ids(bucket[..., t], prev).ravel(), tables).reshape(shape[:-1])
            q[..., t] = prev
        return reconstruct(p, q.reshape(n, -1), max_error, spec.raw_min, spec.raw_max).reshape(f.shape)

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(cls, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray, max_errors: Sequence[int],
            signed_clip: int = DEFAULT_SIGNED_CLIP, batch_size: int = 1024) -> ResidualContext:
        """Count calibration residuals per (prediction bucket, previous q) for every D in max_errors."""
        width = 2 * signed_clip + 1
        n_ctx = model.spec.n_contexts * width
        out: list[tuple[int, TableSet]] = []
        for d in sorted({check_max_error(int(e)) for e in max_errors}):
            lo, hi = 0, 0
            parts = []
            for i in range(0, x_raw.shape[0], batch_size):
                q, bucket, _ = model.encode_residual(x_raw[i : i + batch_size], raw_float[i : i + batch_size], d)
                shape = _steps_shape(x_raw[i : i + batch_size].shape)
                q = q.reshape(shape).astype(np.int64)
                prev = previous_along_last(q)
                ids = (
                    bucket.reshape(shape).astype(np.int64) * width
                    + np.clip(prev, -signed_clip, signed_clip)
                    + signed_clip
                )
                parts.append((ids.ravel().astype(np.int32), q.ravel().astype(np.int32)))
                lo, hi = min(lo, int(q.min())), max(hi, int(q.max()))
            base = model.tables(d)
            for b in range(model.spec.n_contexts):
                t = base[b]
                lo, hi = min(lo, t.lo), max(hi, t.hi)
            hist = np.zeros((n_ctx, hi - lo + 1), dtype=np.int64)
            for ids, q in parts:
                hist += np.bincount(ids.astype(np.int64) * (hi - lo + 1) + (q - lo), minlength=hist.size).reshape(
                    hist.shape
                )
            tables: list[FreqTable] = []
            for k in range(n_ctx):
                t = base[k // width]
                # span: what this context saw, the prior table's range, one bin either side
                seen = np.flatnonzero(hist[k])
                a = max(min(int(seen[0]) if seen.size else t.lo - lo, t.lo - lo) - 1, 0)
                b = min(max(int(seen[-1]) if seen.size else t.hi - lo, t.hi - lo) + 1, hi - lo)
                tables.append(table_with_prior(hist[k, a : b + 1], lo + a, t, PRIOR_OBSERVATIONS))
            out.append((d, TableSet(tuple(tables), precision=model.precision)))
        return cls(int(signed_clip), model.spec.n_contexts, tuple(out))

    def to_json_obj(self) -> dict[str, Any]:
        return {"kind": KIND, "signed_clip": self.signed_clip, "n_contexts": self.n_contexts,
                "levels": [{"max_error": d, "tables": ts.to_json_obj()} for d, ts in self.tables]}

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> ResidualContext:
        check_kind(obj, KIND, "residual context", where)
        try:
            return cls(int(obj["signed_clip"]), int(obj["n_contexts"]),
                       tuple((int(e["max_error"]), TableSet.from_json_obj(e["tables"])) for e in obj["levels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed residual context ({exc}); re-run calibration") from exc


def _steps_shape(sample_batch_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(N, positions before the last axis, last axis length): the coder walks the last axis."""
    n, last = sample_batch_shape[0], sample_batch_shape[-1]
    return (n, int(np.prod(sample_batch_shape[1:-1], dtype=np.int64)), last)
