"""Context-adaptive coding of convolutional latents: the table of each symbol follows its neighbour.

A factorized prior codes every latent position with its channel's one table, although activity
clusters: a QRS complex or an edge lights up several neighbouring positions and channels, a flat
stretch leaves them all at zero. Here the table of latent (c, ..., t) is chosen by what the
decoder has ALREADY decoded at position t-1 along the last latent axis:

- the signed value of the same channel there, clipped to [-signed_clip, signed_clip];
- the activity there, sum over all channels of |symbol|, bucketed by ``activity_edges``.

Contexts are computed from integer symbols only, so the encoder and every decoder pick the same
table on every machine (no float in the loop: the desync CompressAI's hyperprior users hit
cannot happen). The tables are integer counts of calibration latents per (channel, context)
plus a small pseudo-count of the channel's factorized table, so a rare context falls back to it.
Coding runs position by position (one coder call per position of the last axis, all frames
and channels of that position together), the order the decoder needs to know each context.

On the MIT-BIH bundle this cut latent bytes by about a fifth against the factorized tables
(BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, TypeVar

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder, as_int32
from .tables import FreqTable, TableSet, table_from_counts

KIND = "previous-position"
DEFAULT_SIGNED_CLIP = 3
DEFAULT_ACTIVITY_EDGES = (1, 2, 3, 4, 6, 9, 14)
# weight of the factorized table, in observations, added to every context's counts
PRIOR_OBSERVATIONS = 64


@dataclass(frozen=True)
class LatentContext:
    """Tables indexed channel * n_contexts + context; the context rule's parameters beside them."""

    channels: int
    signed_clip: int
    activity_edges: tuple[int, ...]
    tables: TableSet

    def __post_init__(self) -> None:
        if self.channels < 1 or self.signed_clip < 0:
            raise BundleError(f"latent context: channels {self.channels}, signed_clip {self.signed_clip} out of range")
        edges = tuple(int(e) for e in self.activity_edges)
        if any(b <= a for a, b in pairwise(edges)) or (edges and edges[0] < 1):
            raise BundleError(f"latent context: activity_edges must rise from >= 1, got {edges}")
        object.__setattr__(self, "activity_edges", edges)
        if len(self.tables) != self.channels * self.n_contexts:
            raise BundleError(
                f"latent context has {len(self.tables)} tables, expected {self.channels} channels x "
                f"{self.n_contexts} contexts; re-run calibration"
            )

    @property
    def n_activity(self) -> int:
        return len(self.activity_edges) + 1

    @property
    def n_contexts(self) -> int:
        return (2 * self.signed_clip + 1) * self.n_activity

    def table_ids(self, prev: np.ndarray) -> np.ndarray:
        """prev: int symbols (N, C, ...) at position t-1 (zeros at t = 0) -> table ids, same shape."""
        return context_ids(prev, self.channels, self.signed_clip, self.activity_edges)

    # ------------------------------------------------------------------ coding
    def write(self, enc: StreamEncoder, symbols: np.ndarray) -> None:
        """symbols: int (N, C, *spatial) with >= 1 spatial axis; coded position by position."""
        s = _check_symbols(symbols, self.channels)
        write_by_position(enc, s, self.table_ids(previous_along_last(s)), self.tables)

    def read(self, dec: StreamDecoder, shape: Sequence[int]) -> np.ndarray:
        """The inverse of ``write`` for symbols of shape (N, C, *spatial)."""
        shape = tuple(int(d) for d in shape)
        if len(shape) < 3 or shape[1] != self.channels:
            raise InputError(f"latent context decodes (N, {self.channels}, ..., L) latents, got shape {shape}")
        out = np.empty(shape, dtype=np.int32)
        prev = np.zeros(shape[:-1], dtype=np.int32)
        for t in range(shape[-1]):
            ids = self.table_ids(prev)
            prev = dec.decode(ids.ravel(), self.tables).reshape(shape[:-1])
            out[..., t] = prev
        return out

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(
        cls,
        symbols: np.ndarray,
        factorized: TableSet,
        *,
        signed_clip: int = DEFAULT_SIGNED_CLIP,
        activity_edges: Sequence[int] = DEFAULT_ACTIVITY_EDGES,
        prior_observations: int = PRIOR_OBSERVATIONS,
    ) -> LatentContext:
        """Count calibration latents per (channel, context); every table spans its channel's
        observed range (the rest escapes) and carries PRIOR_OBSERVATIONS of the factorized table."""
        s = _check_symbols(symbols, len(factorized))
        channels = s.shape[1]
        edges = tuple(int(e) for e in activity_edges)
        n_contexts = (2 * signed_clip + 1) * (len(edges) + 1)
        ids = context_ids(previous_along_last(s), channels, signed_clip, edges)  # the context of every symbol
        tables: list[FreqTable] = []
        for c in range(channels):
            vals = s[:, c].ravel().astype(np.int64)
            fac = factorized[c]
            # the factorized range (what the density gives mass to) plus anything seen beyond it
            lo, hi = min(int(vals.min()), fac.lo), max(int(vals.max()), fac.hi)
            counts = np.zeros((n_contexts, hi - lo + 1), dtype=np.int64)
            np.add.at(counts, (ids[:, c].ravel().astype(np.int64) - c * n_contexts, vals - lo), 1)
            tables += [table_with_prior(counts[k], lo, fac, prior_observations) for k in range(n_contexts)]
        return cls(channels, int(signed_clip), edges, TableSet(tuple(tables), precision=factorized.precision))

    def to_json_obj(self) -> dict[str, Any]:
        return {"kind": KIND, "channels": self.channels, "signed_clip": self.signed_clip,
                "activity_edges": list(self.activity_edges), "tables": self.tables.to_json_obj()}

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> LatentContext:
        check_kind(obj, KIND, "latent context", where)
        try:
            return cls(int(obj["channels"]), int(obj["signed_clip"]), tuple(int(e) for e in obj["activity_edges"]),
                       TableSet.from_json_obj(obj["tables"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed latent context ({exc}); re-run calibration") from exc


# -- shared by the latent and the residual context models ---------------------------------------

def previous_along_last(x: np.ndarray) -> np.ndarray:
    """x shifted one step along its last axis, zeros first: at every position, what the decoder
    has already decoded one step earlier (the context source)."""
    return np.concatenate([np.zeros(x.shape[:-1] + (1,), dtype=x.dtype), x[..., :-1]], axis=-1)


def write_by_position(enc: StreamEncoder, symbols: np.ndarray, table_ids: np.ndarray, tables: TableSet) -> None:
    """One coder call per position of the last axis, holding every symbol at that position in C
    order: the order a decoder that learns each context one step late must read them in. The
    sender knows all symbols, so all table ids come in at once."""
    length = symbols.shape[-1]
    steps = np.moveaxis(symbols, -1, 0).reshape(length, -1)
    ids = np.moveaxis(table_ids, -1, 0).reshape(length, -1)
    for t in range(length):
        enc.encode(steps[t], ids[t], tables)


def table_with_prior(counts: np.ndarray, lo: int, prior: FreqTable, prior_observations: int) -> FreqTable:
    """Integer counts of symbols lo.. plus ``prior_observations`` observations' worth of ``prior``'s
    mass over the same span; the prior's mass outside the span goes to the escape. Integer only."""
    total = 1 << prior.precision
    idx = np.arange(lo, lo + counts.size) - prior.lo
    inside = (idx >= 0) & (idx < prior.n_symbols)
    mass = np.where(inside, prior.freqs[np.clip(idx, 0, prior.n_symbols - 1)].astype(np.int64), 0)
    escape = max((total - int(mass.sum())) * prior_observations, 1)
    return table_from_counts(counts.astype(np.int64) * total + mass * prior_observations, lo, prior.precision,
                             escape_count=escape)


def check_kind(obj: Any, kind: str, what: str, where: str) -> None:
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        got = obj.get("kind") if isinstance(obj, dict) else None
        raise BundleError(f"{where}: unknown {what} kind {got!r} (this latentwire knows {kind!r})")


def classic_version(obj: dict[str, Any], version: int, version_classic: int, what: str, where: str) -> bool:
    """Whether a residual-coding section holds classical levels (``classic``): version_classic says
    it does, version that it does not, and a reader refuses any other version or a version that
    disagrees with the content (so one that knows only ``version`` refuses the newer section)."""
    v, has = obj.get("version"), "classic" in obj
    if v not in (version, version_classic) or (v == version_classic) != has:
        raise BundleError(f"{where}: {what} version {v!r} (classical levels: {has}); this latentwire reads "
                          f"{version} (without) and {version_classic} (with): upgrade latentwire or re-run calibration")
    return has


class _CodedLevel(Protocol):
    @property
    def max_error(self) -> int: ...


LevelT = TypeVar("LevelT", bound=_CodedLevel)


def level_for(levels: Sequence[LevelT], max_error: int, what: str) -> LevelT:
    """The level of a context-coded residual kind (residual_coding.py) that codes max_error."""
    for lv in levels:
        if lv.max_error == max_error:
            return lv
    raise BundleError(f"no {what} tables for max error {max_error}")


def context_ids(prev: np.ndarray, channels: int, signed_clip: int, activity_edges: Sequence[int]) -> np.ndarray:
    """Table ids of the symbols that follow ``prev`` (int (N, C, ...), position t-1) along the last axis."""
    if prev.ndim < 2 or prev.shape[1] != channels:
        raise InputError(f"latent context expects (N, {channels}, ...) symbols, got {prev.shape}")
    p = prev.astype(np.int64)
    n_activity = len(activity_edges) + 1
    signed = np.clip(p, -signed_clip, signed_clip) + signed_clip
    activity = np.searchsorted(np.asarray(activity_edges, dtype=np.int64), np.abs(p).sum(axis=1, keepdims=True),
                               side="right")
    n_contexts = (2 * signed_clip + 1) * n_activity
    channel = np.arange(channels, dtype=np.int64).reshape((1, channels) + (1,) * (p.ndim - 2))
    return (channel * n_contexts + signed * n_activity + activity).astype(np.int32)


def _check_symbols(symbols: np.ndarray, channels: int) -> np.ndarray:
    s = np.asarray(symbols)
    if s.ndim < 3 or s.shape[1] != channels:
        raise InputError(f"context coding needs latents (N, {channels}, ..., L) with a position axis, got {s.shape}")
    if s.size and s.dtype.kind not in "iu":
        raise InputError(f"symbols must be integers, got dtype {s.dtype}")
    return as_int32(s)
