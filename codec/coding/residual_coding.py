"""entropy.json's ``residual_coding`` section: the context model that codes the max-error residual
of the levels it calibrated, in place of residual.py's per-bucket tables (and residual_context.py's).

Four kinds, chosen at calibration by the data:

- ``colour-wavefront`` (residual_colour.py): 2-D images (C, H, W) of two or more channels, and
  single-channel ones without an exact narrow prediction. Codes one base channel against the
  model and the others as colour differences predicted from decoded neighbours, along
  anti-diagonals. Its table choices never depend on the prediction, so float bundles may use it.
  Calibration also fits its classical tables (``classic``, residual_classic.py): frames sent with
  no latent, the base channel predicted from its own decoded neighbours (residual_modes.py).
- ``value-checkerboard`` (residual_checker.py): single-channel images (1, H, W) with an exact
  integer prediction (exact.npz) and a raw range of at most VALUE_MAX_RANGE values, e.g. MNIST
  digits: a table per prediction value for the black pixels of a checkerboard, then per value and
  decoded-neighbour class for the white ones, two coder calls.
- ``prediction-value`` (residual_value.py): other samples with such a prediction that are not
  colour images (1-D ones), and digit bundles calibrated before the checkerboard: a table per
  prediction value and slope class, all known before decoding, one coder call.

- ``series-context`` (residual_series.py): 1-D multichannel series (C, T) with an exact integer
  prediction and a raw range too wide for prediction-value, e.g. ECG counts: each sample predicted
  from the model AND the window's decoded error history, coded in time order with an activity
  context (residual_series_fit.py fits it). Calibration also fits its classical levels: the same
  walk on the raw signal with no model, for frames sent without a latent (residual_modes.py).

All expose ``covers(D)``, ``write(enc, model, x_raw, raw_float, D)`` and
``read(dec, model, raw_float, D)`` as residual_context.py does; a max error they do not cover
(a custom one) codes with residual.py's tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from ..errors import BundleError, InputError
from .residual import ResidualModel
from .residual_checker import KIND as CHECKER_KIND
from .residual_checker import ResidualCheckerContext
from .residual_classic import BASE_MED
from .residual_colour import KIND as COLOUR_KIND
from .residual_colour import ResidualColourContext
from .residual_series import KIND as SERIES_KIND
from .residual_series import ResidualSeriesContext
from .residual_series_fit import fit as fit_series
from .residual_value import KIND as VALUE_KIND
from .residual_value import ResidualValueContext

AnyResidualCoding = ResidualColourContext | ResidualValueContext | ResidualCheckerContext | ResidualSeriesContext
ClassicCapable = TypeVar("ClassicCapable", ResidualColourContext, ResidualSeriesContext)  # kinds with classical frames
# prediction-value tables: one per value and slope class, so only for narrow raw ranges (8-bit: 256
# values x 5 classes; an 11-bit ECG count would ask for 10,240 tables per level)
VALUE_MAX_RANGE = 1024
# series classical levels only up to this max error: a classical window's error spreads over the
# whole bound, so beyond it (ECG: max error 12 and up, held-out and validation records alike) it
# trades PRD for bytes and a level could cost as much as the coarser one with a worse PRD
SERIES_CLASSIC_MAX_ERROR = 8


def residual_coding_from_json(obj: Any, where: str = "entropy.json") -> AnyResidualCoding:
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind == COLOUR_KIND:
        return ResidualColourContext.from_json_obj(obj, where)
    if kind == VALUE_KIND:
        return ResidualValueContext.from_json_obj(obj, where)
    if kind == CHECKER_KIND:
        return ResidualCheckerContext.from_json_obj(obj, where)
    if kind == SERIES_KIND:
        return ResidualSeriesContext.from_json_obj(obj, where)
    raise BundleError(f"{where}: unknown residual coding kind {kind!r} (this latentwire knows {COLOUR_KIND!r}, "
                      f"{VALUE_KIND!r}, {CHECKER_KIND!r} and {SERIES_KIND!r}): upgrade latentwire or re-run "
                      "calibration")


def residual_coding_kind(sample_shape: Sequence[int | None], exact: bool, model: ResidualModel) -> str | None:
    """The kind calibration fits for these samples, or None (the older tables stay): colour images
    take the colour kind, single-channel ones too unless their prediction is exact and narrow
    (MNIST digits: the prediction's value is what their residual depends on, and then their
    decoded neighbours: the checkerboard); other exact narrow samples the prediction-value kind;
    exact series (C, T) of a wider range the series kind (ECG counts: the model's error history
    predicts)."""
    by_value = exact and model.spec.raw_max - model.spec.raw_min + 1 <= VALUE_MAX_RANGE
    if len(sample_shape) == 3 and (int(sample_shape[0] or 0) >= 2 or not by_value):
        return COLOUR_KIND
    if len(sample_shape) == 3 and by_value:
        return CHECKER_KIND
    if by_value:
        return VALUE_KIND
    return SERIES_KIND if exact and len(sample_shape) == 2 else None


def fit_residual_coding(kind: str, model: ResidualModel, x_raw: np.ndarray, raw_float: np.ndarray,
                        max_errors: Sequence[int]) -> AnyResidualCoding:
    """Count the calibration residuals for every max error in max_errors (residual_coding_kind's kind)."""
    if kind == COLOUR_KIND:
        return with_classic(ResidualColourContext.fit(model, x_raw, raw_float, max_errors), model, x_raw, raw_float)
    if kind == VALUE_KIND:
        return ResidualValueContext.fit(model, x_raw, raw_float, max_errors)
    if kind == CHECKER_KIND:
        return ResidualCheckerContext.fit(model, x_raw, raw_float, max_errors)
    if kind == SERIES_KIND:
        return with_classic(fit_series(model, x_raw, raw_float, max_errors), model, x_raw, raw_float)
    raise BundleError(f"unknown residual coding kind {kind!r}")


def with_classic(coding: ClassicCapable, model: ResidualModel, x_raw: np.ndarray | Sequence[np.ndarray],
                 raw_float: np.ndarray | Sequence[np.ndarray]) -> ClassicCapable:
    """coding with classical tables fit on x_raw for each of its max errors (raw_float gives only
    shapes: no model is involved), in its layout. Fitting them into a calibrated bundle leaves
    every other table, and so every packet of its latent levels, as it was."""
    ds = [lv.max_error for lv in coding.levels]
    if isinstance(coding, ResidualSeriesContext):  # the walk on the raw signal (p the midpoint)
        ds = [d for d in ds if d <= SERIES_CLASSIC_MAX_ERROR]
        x = np.asarray(x_raw)
        series = fit_series(model, x, np.full(x.shape, float(coding.midpoint), dtype=np.float32), ds)
        return dataclasses.replace(coding, classic=dataclasses.replace(series, model_free=True))
    classic = ResidualColourContext.fit(model, x_raw, raw_float, ds, base_channel=coding.base_channel,
                                        signed_clip=coding.signed_clip, base_clip=coding.base_clip, base=BASE_MED)
    return dataclasses.replace(coding, classic=classic)


def fit_calibrated(model: ResidualModel | None, x_raw: np.ndarray, raw_float: np.ndarray,
                   max_errors: Sequence[int | None], *, exact: bool, enabled: bool | None = None,
                   extra_max_errors: Sequence[int] = ()) -> AnyResidualCoding | None:
    """What calibration stores for the ladder's max errors (None entries: latent-only levels) plus
    extra_max_errors (custom ones worth tables): None when disabled (enabled False), without a
    residual model or max errors, or (enabled None) for samples neither kind fits."""
    ds = sorted({int(e) for e in [*max_errors, *extra_max_errors] if e is not None})
    if model is None or enabled is False or not ds:
        return None
    kind = residual_coding_kind(tuple(x_raw.shape[1:]), exact, model)
    if kind is None:
        if enabled:
            raise InputError(f"residual coding fits images (C, H, W), samples with an exact prediction and a raw "
                             f"range of at most {VALUE_MAX_RANGE} values, or series (C, T) with an exact prediction; "
                             f"these are {tuple(x_raw.shape[1:])}")
        return None
    return fit_residual_coding(kind, model, x_raw, raw_float, ds)
