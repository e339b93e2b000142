"""Calibration of a hyperprior bundle's latent stage (issue 23).

The latent's tables start as the Gaussian family of coding/gaussian.py, picked per element by the
exact hyper-synthesis, and z's factorized tables as the density the model trained with (manifest
latent.hyper.pmf). Calibration builds their integer form, with, per level and channel, the
thresholds that map the hyper-synthesis's integer scale codes to tables, and then refits each
table's frequencies on the calibration samples' own symbols (``fit_tables``).

Why refit: the trained model's Gaussian is a modelling choice, not the symbols' law. Counted per
table over every level (the levels share the tables), the same tables' empirical frequencies code
whole BSDS500 validation photos 1.3-1.5 % smaller at every level (fit on 100 training photos);
per table and channel, or per table and level, gained only 0.25 % / 0.15 % more. The table each
symbol gets, each table's span and everything the receiver computes stay as they were, so this
changes no format: only the stored frequencies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from .bundle import HYPER, Bundle
from .coding.exact_hyper import ExactHyperSynthesis
from .coding.hyper_latents import HyperInput, HyperLatentPath
from .coding.hyperprior import build_hyper_latent_coding
from .coding.tables import FreqTable, TableSet, table_from_counts
from .errors import BundleError, InputError

# The model's table counts as this many observations beside the data's: at calibration's counts
# (millions per table) any weight from 16 to 1024 gave the same bits to 0.01 %; it matters only
# for a table calibration barely used
PRIOR_OBSERVATIONS = 64


def hyper_stage(bundle: Bundle, precision: int) -> HyperLatentPath:
    """The bundle's hyperprior stage with freshly built tables (what calibrate stores)."""
    m = bundle.manifest
    block = m.raw["latent"].get("hyper")
    if not isinstance(block, dict) or not isinstance(block.get("pmf"), dict):
        raise BundleError(f"{bundle.path}: manifest latent.hyper lacks z's pmf; re-export the bundle")
    pmf = block["pmf"]
    synthesis = ExactHyperSynthesis.load(bundle.file(HYPER))
    levels = m.latent_levels
    gains = (np.stack([lv.gain.astype(np.float64) for lv in levels]) if levels
             else np.ones((1, m.latent_channels), dtype=np.float64))
    coding = build_hyper_latent_coding(
        ([int(o) for o in pmf["offsets"]], [np.asarray(p, dtype=np.float64) for p in pmf["probs"]]), gains,
        precision=precision, mean_frac_bits=synthesis.mean_frac_bits, scale_frac_bits=synthesis.scale_frac_bits,
    )
    return HyperLatentPath(coding, synthesis, [lv.gain for lv in levels], [lv.inverse_gain for lv in levels])


def fit_tables(stage: HyperLatentPath, batches: Iterable[HyperInput]) -> HyperLatentPath:
    """The stage with every table refit on the symbols of these frames at every level (module
    docstring): each table keeps its span, and takes the counts of the symbols it codes plus
    PRIOR_OBSERVATIONS of its own frequencies; symbols outside its span count for the escape."""
    coding = stage.coding
    y_counts = _Counts(coding.gaussian)
    z_counts = _Counts(coding.z_tables)
    seen = 0
    for batch in batches:
        per_level = stage.quantize_levels(batch)
        z = per_level[0].z
        z_ids = np.broadcast_to(np.arange(z.shape[1], dtype=np.int64)[None, :, None, None], z.shape)
        z_counts.add(z.ravel(), z_ids.ravel())
        for level, latents in enumerate(per_level):
            y_counts.add(latents.symbols.ravel(), coding.table_ids(latents.scale_code, level).ravel())
        seen += per_level[0].count
    if not seen:
        raise InputError("no frames to fit the hyperprior's tables on")
    fitted = dataclasses.replace(coding, gaussian=y_counts.tables(), z_tables=z_counts.tables())
    return stage.with_coding(fitted)


class _Counts:
    """Per table of a set: counts over its span (one flat array, tables back to back) and escapes."""

    def __init__(self, tables: TableSet) -> None:
        self.prior = tables
        sizes = np.array([t.n_symbols for t in tables.tables], dtype=np.int64)
        self.lo = np.array([t.lo for t in tables.tables], dtype=np.int64)
        self.hi = np.array([t.hi for t in tables.tables], dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.inside = np.zeros(int(sizes.sum()), dtype=np.int64)
        self.escapes = np.zeros(len(tables), dtype=np.int64)

    def add(self, symbols: np.ndarray, ids: np.ndarray) -> None:
        s, k = symbols.astype(np.int64), ids.astype(np.int64)
        ok = (s >= self.lo[k]) & (s <= self.hi[k])
        self.inside += np.bincount(self.start[k[ok]] + s[ok] - self.lo[k[ok]], minlength=self.inside.size)
        self.escapes += np.bincount(k[~ok], minlength=self.escapes.size)

    def tables(self) -> TableSet:
        out: list[FreqTable] = []
        total = 1 << self.prior.precision
        for i, prior in enumerate(self.prior.tables):
            counts = self.inside[self.start[i] : self.start[i] + prior.n_symbols]
            prior_freqs = prior.freqs.astype(np.int64) * PRIOR_OBSERVATIONS  # its escape last
            out.append(table_from_counts(counts * total + prior_freqs[:-1], prior.lo, prior.precision,
                                         escape_count=int(self.escapes[i]) * total + int(prior_freqs[-1])))
        return TableSet(tuple(out), precision=self.prior.precision)
