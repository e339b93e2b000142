"""Context-adaptive coding of 2-D latents (photos): each symbol's table follows its left and upper
neighbours, decoded in anti-diagonal wavefronts.

A factorized prior codes every position of a channel with one table, although photo latents
cluster: an edge or a texture lights up neighbouring positions in many channels at once, a
flat sky leaves them all at zero. That local scale is what a hyperprior sends as side
information; here the decoder reads it from what it has already decoded instead, for free:

- the signed values of the same channel at the left (i, j-1) and upper (i-1, j) positions,
  each clipped to [-signed_clip, signed_clip];
- the activity there, sum over all channels of |symbol| at both positions, bucketed by
  ``activity_edges`` (calibration picks them at quantiles of what it saw).

Both neighbours of every position on the anti-diagonal i + j = d lie on diagonal d - 1, so one
coder call per diagonal (H + W - 1 calls per packet, all frames and channels together) is the
order a decoder needs, not one per position. Contexts are integer arithmetic on integer symbols,
so every machine chooses the same table. Tables: calibration counts per (channel, context) plus
PRIOR_OBSERVATIONS of the channel's factorized table, as in context.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder, as_int32
from .context import PRIOR_OBSERVATIONS, check_kind, table_with_prior
from .tables import FreqTable, TableSet

KIND = "causal-2d"
DEFAULT_SIGNED_CLIP = 1
ACTIVITY_BUCKETS = 8  # calibration puts the edges at this many quantiles of the neighbours' activity


@dataclass(frozen=True)
class LatentContext2D:
    """Tables indexed channel * n_contexts + context for latents (N, C, H, W)."""

    channels: int
    signed_clip: int
    activity_edges: tuple[int, ...]
    tables: TableSet

    def __post_init__(self) -> None:
        if self.channels < 1 or self.signed_clip < 0:
            raise BundleError(
                f"2-D latent context: channels {self.channels}, signed_clip {self.signed_clip} out of range"
            )
        edges = tuple(int(e) for e in self.activity_edges)
        if any(b <= a for a, b in pairwise(edges)) or (edges and edges[0] < 1):
            raise BundleError(f"2-D latent context: activity_edges must rise from >= 1, got {edges}")
        object.__setattr__(self, "activity_edges", edges)
        if len(self.tables) != self.channels * self.n_contexts:
            raise BundleError(
                f"2-D latent context has {len(self.tables)} tables, expected {self.channels} channels x "
                f"{self.n_contexts} contexts; re-run calibration"
            )

    @property
    def n_signed(self) -> int:
        return (2 * self.signed_clip + 1) ** 2

    @property
    def n_contexts(self) -> int:
        return self.n_signed * (len(self.activity_edges) + 1)

    def table_ids(self, left: np.ndarray, above: np.ndarray) -> np.ndarray:
        return context_ids_2d(left, above, self.channels, self.signed_clip, self.activity_edges)

    # ------------------------------------------------------------------ coding
    def write(self, enc: StreamEncoder, symbols: np.ndarray) -> None:
        s = _check_symbols(symbols, self.channels)
        left, above = neighbours(s)
        ids = self.table_ids(left, above)
        for rows, cols in diagonals(s.shape[2], s.shape[3]):
            enc.encode(s[:, :, rows, cols].ravel(), ids[:, :, rows, cols].ravel(), self.tables)

    def read(self, dec: StreamDecoder, shape: Sequence[int]) -> np.ndarray:
        shape = tuple(int(d) for d in shape)
        if len(shape) != 4 or shape[1] != self.channels:
            raise InputError(f"2-D latent context decodes (N, {self.channels}, H, W) latents, got shape {shape}")
        n, c, h, w = shape
        # one zero row and column in front: the neighbours of the first row and column
        padded = np.zeros((n, c, h + 1, w + 1), dtype=np.int32)
        for rows, cols in diagonals(h, w):
            ids = self.table_ids(padded[:, :, rows + 1, cols], padded[:, :, rows, cols + 1])
            values = dec.decode(ids.ravel(), self.tables)
            padded[:, :, rows + 1, cols + 1] = values.reshape(n, c, rows.size)
        return np.ascontiguousarray(padded[:, :, 1:, 1:])

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(
        cls, symbols: np.ndarray, factorized: TableSet, *, signed_clip: int = DEFAULT_SIGNED_CLIP,
        activity_edges: Sequence[int] | None = None, prior_observations: int = PRIOR_OBSERVATIONS,
    ) -> LatentContext2D:
        """Count calibration latents per (channel, context); edges default to activity quantiles."""
        s = _check_symbols(symbols, len(factorized))
        channels = s.shape[1]
        left, above = neighbours(s)
        if activity_edges is None:
            activity_edges = quantile_edges(activity(left, above), ACTIVITY_BUCKETS)
        edges = tuple(int(e) for e in activity_edges)
        n_contexts = (2 * signed_clip + 1) ** 2 * (len(edges) + 1)
        ids = context_ids_2d(left, above, channels, signed_clip, edges)
        tables: list[FreqTable] = []
        for c in range(channels):
            vals = s[:, c].ravel().astype(np.int64)
            fac = factorized[c]
            lo, hi = min(int(vals.min()), fac.lo), max(int(vals.max()), fac.hi)
            counts = np.zeros((n_contexts, hi - lo + 1), dtype=np.int64)
            np.add.at(counts, (ids[:, c].ravel().astype(np.int64) - c * n_contexts, vals - lo), 1)
            tables += [table_with_prior(counts[k], lo, fac, prior_observations) for k in range(n_contexts)]
        return cls(channels, int(signed_clip), edges, TableSet(tuple(tables), precision=factorized.precision))

    def to_json_obj(self) -> dict[str, Any]:
        return {"kind": KIND, "channels": self.channels, "signed_clip": self.signed_clip,
                "activity_edges": list(self.activity_edges), "tables": self.tables.to_json_obj()}

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> LatentContext2D:
        check_kind(obj, KIND, "latent context", where)
        try:
            return cls(int(obj["channels"]), int(obj["signed_clip"]), tuple(int(e) for e in obj["activity_edges"]),
                       TableSet.from_json_obj(obj["tables"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed 2-D latent context ({exc}); re-run calibration") from exc


def diagonals(h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of each anti-diagonal i + j = d, d = 0..h+w-2, rows ascending."""
    out = []
    for d in range(h + w - 1):
        rows = np.arange(max(0, d - w + 1), min(h, d + 1), dtype=np.intp)
        out.append((rows, d - rows))
    return out


def neighbours(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left, above) of every position of (N, C, H, W) symbols, zeros beyond the border."""
    left = np.zeros_like(s)
    left[..., 1:] = s[..., :-1]
    above = np.zeros_like(s)
    above[..., 1:, :] = s[..., :-1, :]
    return left, above


def activity(left: np.ndarray, above: np.ndarray) -> np.ndarray:
    """Sum over channels of |left| + |above|, (N, 1, ...) int64."""
    return (np.abs(left.astype(np.int64)) + np.abs(above.astype(np.int64))).sum(axis=1, keepdims=True)


def quantile_edges(act: np.ndarray, buckets: int) -> tuple[int, ...]:
    """Rising integer edges >= 1 at the activity's quantiles (ties merged)."""
    qs = np.quantile(act.ravel(), np.linspace(0, 1, buckets + 1)[1:-1]) if act.size else np.zeros(0)
    edges: list[int] = []
    for q in np.ceil(qs).astype(np.int64).tolist():
        q = max(1, int(q))
        if not edges or q > edges[-1]:
            edges.append(q)
    return tuple(edges)


def context_ids_2d(left: np.ndarray, above: np.ndarray, channels: int, signed_clip: int,
                   activity_edges: Sequence[int]) -> np.ndarray:
    """Table ids of symbols whose left and upper neighbours are ``left`` and ``above`` (N, C, ...)."""
    if left.shape != above.shape or left.ndim < 2 or left.shape[1] != channels:
        raise InputError(
            f"2-D latent context expects (N, {channels}, ...) neighbours, got {left.shape} and {above.shape}"
        )
    k = 2 * signed_clip + 1
    signed = ((np.clip(left, -signed_clip, signed_clip).astype(np.int64) + signed_clip) * k
              + np.clip(above, -signed_clip, signed_clip).astype(np.int64) + signed_clip)
    bucket = np.searchsorted(np.asarray(activity_edges, dtype=np.int64), activity(left, above), side="right")
    n_contexts = k * k * (len(activity_edges) + 1)
    channel = np.arange(channels, dtype=np.int64).reshape((1, channels) + (1,) * (left.ndim - 2))
    return (channel * n_contexts + signed * (len(activity_edges) + 1) + bucket).astype(np.int32)


def _check_symbols(symbols: np.ndarray, channels: int) -> np.ndarray:
    s = np.asarray(symbols)
    if s.ndim != 4 or s.shape[1] != channels:
        raise InputError(f"2-D context coding needs latents (N, {channels}, H, W), got {s.shape}")
    if s.size and s.dtype.kind not in "iu":
        raise InputError(f"symbols must be integers, got dtype {s.dtype}")
    return as_int32(s)
