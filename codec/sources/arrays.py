"""`.npy` / `.npz` arrays as a SampleSet, for data that is already a numpy array.

Normalization rule when none is given (the model sees roughly [0, 1] in every case):
- uint8: offset 0, scale 255, raw range 0..255 (pixels).
- bool: offset 0, scale 1, raw range 0..1.
- any other integer dtype: raw range = the data's observed min..max (the dtype's full range
  would squeeze e.g. 11-bit ECG counts stored as int16 into a sliver of the model domain);
  offset = min, scale = max - min (1 if constant). Decoded values are clipped to that range, so
  pass an explicit Normalization when future data can exceed it.
- floating point: identity (offset 0, scale 1) with raw range = the data's min..max; NaN/Inf are
  rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..normalization import Normalization
from .sampleset import SampleSet

SAMPLE_KEYS = ("samples", "x", "images", "data", "arr_0")
LABEL_KEYS = ("labels", "y")
GROUP_KEYS = ("groups",)


def infer_normalization(samples: np.ndarray) -> Normalization:
    """The default raw -> model map for an array (rule in the module docstring)."""
    samples = np.asarray(samples)
    dt = samples.dtype
    if dt == np.uint8:
        return Normalization(offset=0.0, scale=255.0, raw_dtype="uint8", raw_min=0.0, raw_max=255.0)
    if dt == np.bool_:
        return Normalization(offset=0.0, scale=1.0, raw_dtype="uint8", raw_min=0.0, raw_max=1.0)
    if samples.size == 0:
        raise InputError("cannot infer a normalization from an empty array; pass normalization=")
    if dt.kind in "iu":
        lo, hi = int(samples.min()), int(samples.max())
        return Normalization(
            offset=float(lo), scale=float(max(hi - lo, 1)), raw_dtype=dt.name, raw_min=float(lo), raw_max=float(hi)
        )
    if dt.kind == "f":
        if not np.all(np.isfinite(samples)):
            raise InputError("the array holds NaN or Inf values; clean them before coding")
        return Normalization(
            offset=0.0, scale=1.0, raw_dtype=dt.name, raw_min=float(samples.min()), raw_max=float(samples.max())
        )
    raise InputError(f"unsupported sample dtype {dt} (use an integer or floating point array)")


def _pick(keys: list[str], wanted: str | None, candidates: tuple[str, ...], path: Path, what: str) -> str | None:
    if wanted is not None:
        if wanted not in keys:
            raise InputError(f"{path}: no array named {wanted!r} for the {what}; the file holds {keys}")
        return wanted
    for k in candidates:
        if k in keys:
            return k
    return None


def load_array(
    path: str | Path,
    *,
    key: str | None = None,
    labels_key: str | None = None,
    groups_key: str | None = None,
    normalization: Normalization | None = None,
    add_channel_axis: bool = False,
    limit: int | None = None,
) -> SampleSet:
    """Samples from a .npy file, or from one array of a .npz (key; default: the only array, else
    the first of samples/x/images/data/arr_0). From a .npz, labels ('labels'/'y') and groups
    ('groups') are picked up too. add_channel_axis turns (N,H,W) into channel-first (N,1,H,W)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"array file not found: {path}")
    labels = groups = None
    try:
        if path.suffix == ".npy":
            if key is not None:
                raise InputError(f"{path}: key= applies to .npz archives, a .npy holds a single array")
            samples = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                chosen = _pick(keys, key, SAMPLE_KEYS, path, "samples")
                if chosen is None:
                    if len(keys) != 1:
                        raise InputError(f"{path}: holds {keys}; say which one is the samples with key=")
                    chosen = keys[0]
                samples = z[chosen]
                lk = _pick(keys, labels_key, LABEL_KEYS, path, "labels")
                gk = _pick(keys, groups_key, GROUP_KEYS, path, "groups")
                labels = z[lk] if lk is not None and lk != chosen else None
                groups = z[gk] if gk is not None and gk != chosen else None
        else:
            raise InputError(f"{path}: expected a .npy or .npz file")
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: cannot read the numpy file ({e})") from e
    if samples.dtype == object:
        raise InputError(f"{path}: object arrays are not supported")
    if add_channel_axis:
        samples = samples[:, None]
    if samples.ndim < 2:
        raise InputError(f"{path}: samples must have shape (N, *sample_shape), got {samples.shape}")
    if limit is not None:
        samples = samples[:limit]
        labels = None if labels is None else labels[:limit]
        groups = None if groups is None else groups[:limit]
    norm = normalization if normalization is not None else infer_normalization(samples)
    if samples.dtype == np.bool_:
        samples = samples.astype(np.uint8)
    return SampleSet(
        samples=np.ascontiguousarray(samples),
        normalization=norm,
        labels=labels,
        groups=groups,
        name=path.stem,
        meta={"source": "arrays", "path": str(path), "key": key},
    )


def save_array(path: str | Path, samples: SampleSet | np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write samples (+ labels, groups) as a compressed .npz that `load_array` reads back."""
    arrays: dict[str, np.ndarray] = {}
    if isinstance(samples, SampleSet):
        arrays["samples"] = samples.samples
        if samples.labels is not None:
            arrays["labels"] = samples.labels
        if samples.groups is not None:
            arrays["groups"] = samples.groups
    else:
        arrays["samples"] = np.asarray(samples)
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    # the keys are array names; mypy matches ** against the stub's allow_pickle: bool as well
    np.savez_compressed(Path(path), **arrays)  # type: ignore[arg-type]
