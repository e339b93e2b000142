"""Raw samples at the codec's door: refused with a message that says what to change.

Apart from codec.py because every entry point (encode, scores, embed, the server's publish path)
checks the same things, and the hints for a missing batch or channel axis are most of the work.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .normalization import Normalization


def _shape_hint(got: tuple[int, ...], expected: tuple[int | None, ...]) -> str:
    """The fix for a batch with one axis too few: the batch axis (one sample) or the channel axis."""
    def fits(shape: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
        return len(shape) == len(want) and all(w is None or w == g for g, w in zip(shape, want, strict=True))

    if fits(got, expected):
        return "for a single sample add the batch axis: x[None]"
    if len(got) == len(expected) and fits(got[1:], expected[1:]) and expected[0] == 1:
        return "the channel axis is missing (samples are channels first): x[:, None]"
    if len(got) == len(expected) - 1 and fits(got, expected[1:]) and expected[0] == 1:
        return "a single sample without its channel axis: x[None, None]"
    if len(got) == len(expected) + 2 and got[1] == 1:
        return "one axis too many: x[:, 0] if axis 1 is an extra singleton"
    return "reshape it to (N, *sample_shape)"


def check_raw_samples(raw: np.ndarray, sample_shape: tuple[int | None, ...], normalization: Normalization,
                      raw_dtype: np.dtype) -> None:
    """Refuse what the model cannot take (shape, dtype, values), one InputError saying what to change."""
    if not isinstance(raw, np.ndarray):
        raise InputError(f"expected a numpy array of raw samples, got {type(raw).__name__}")
    expected = sample_shape
    if raw.ndim != len(expected) + 1:
        raise InputError(
            f"expected a batch of shape (N, {', '.join('*' if d is None else str(d) for d in expected)}), "
            f"got {raw.shape}; {_shape_hint(raw.shape, expected)}"
        )
    for axis, (got, want) in enumerate(zip(raw.shape[1:], expected, strict=True), start=1):
        if want is not None and got != want:
            raise InputError(f"sample axis {axis} has size {got}, this model takes {want} (samples are {expected})")
    if raw.shape[0] == 0:
        raise InputError("empty batch: pass at least one sample")
    norm = normalization
    if norm.is_integer:
        if raw.dtype.kind not in "iu":
            raise InputError(
                f"expected integer raw samples ({raw_dtype}), got {raw.dtype}; this model codes "
                f"values on the {raw_dtype} grid (round and cast with .astype({raw_dtype.name}))"
            )
    elif raw.dtype.kind != "f":
        raise InputError(f"expected floating-point raw samples, got {raw.dtype}")
    elif not np.all(np.isfinite(raw)):
        bad = np.argwhere(~np.isfinite(raw))[0]
        raise InputError(f"raw samples contain NaN/Inf (first at index {tuple(int(i) for i in bad)})")
    lo, hi = raw.min(), raw.max()
    if lo < norm.raw_min or hi > norm.raw_max:
        raise InputError(
            f"raw values span [{lo}, {hi}], outside this model's range [{norm.raw_min:g}, {norm.raw_max:g}]"
        )
