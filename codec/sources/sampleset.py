"""`SampleSet`: the one shape every data source hands to training, calibration and the demo.

Samples stay in their RAW stored form (uint8 pixels, int16 ADC counts) so that the codec's error
bounds, PSNR and lossless checks are measured against what the user actually has; the
normalization that maps them to the model's float domain travels with them and ends up in the
bundle manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..normalization import Normalization


@dataclass
class SampleSet:
    """N raw samples, channel-first, plus what is needed to split and normalize them.

    groups: one id per sample for samples that are not independent (ECG windows of one record,
    crops of one photo); `split` keeps every group on one side so validation never sees a
    neighbour of a training window.
    """

    samples: np.ndarray
    normalization: Normalization
    groups: np.ndarray | None = None
    labels: np.ndarray | None = None
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples = np.asarray(self.samples)
        if self.samples.ndim < 2:
            raise InputError(
                f"SampleSet {self.name!r}: samples must have shape (N, *sample_shape), got {self.samples.shape}"
            )
        n = self.samples.shape[0]
        for attr in ("groups", "labels"):
            value = getattr(self, attr)
            if value is None:
                continue
            value = np.asarray(value)
            if value.ndim != 1 or value.shape[0] != n:
                raise InputError(
                    f"SampleSet {self.name!r}: {attr} must be a 1-D array with one entry per sample "
                    f"({n}), got shape {value.shape}"
                )
            setattr(self, attr, value)

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.samples.shape[1:])

    def model_domain(self) -> np.ndarray:
        """float32 (N, *sample_shape) ready for the encoder."""
        return self.normalization.to_model(self.samples)

    def subset(self, idx: np.ndarray | list[int] | slice) -> SampleSet:
        """A new SampleSet of the selected samples (groups/labels follow; arrays are copies)."""
        if isinstance(idx, slice):
            take = lambda a: a[idx].copy()  # noqa: E731
        else:
            index = np.asarray(idx)
            if index.dtype == bool:
                if index.shape != (len(self),):
                    raise InputError(f"boolean subset mask must have shape ({len(self)},), got {index.shape}")
            elif index.size and index.dtype.kind not in "iu":
                raise InputError(f"subset index must be integers or a boolean mask, got dtype {index.dtype}")
            index = index.astype(np.intp) if index.dtype != bool else index
            take = lambda a: a[index]  # noqa: E731
        return SampleSet(
            samples=take(self.samples),
            normalization=self.normalization,
            groups=None if self.groups is None else take(self.groups),
            labels=None if self.labels is None else take(self.labels),
            name=self.name,
            meta=dict(self.meta),
        )

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[SampleSet, SampleSet]:
        """(train, val). With groups: whole groups go to val (about val_fraction of the groups,
        at least one, never all); without: a random val_fraction of the samples.

        Deterministic for a given seed; sample order inside each side is the original order.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
        rng = np.random.default_rng(seed)
        n = len(self)
        if val_fraction == 0.0:
            return self.subset(np.arange(n)), self.subset(np.arange(0))
        if self.groups is not None:
            unique = np.unique(self.groups)
            if unique.size < 2:
                raise InputError(
                    f"SampleSet {self.name!r} has a single group ({unique.tolist()}); a split by group needs "
                    "at least 2 (load more records/images, or drop groups to split by sample)"
                )
            n_val_groups = min(max(1, int(round(val_fraction * unique.size))), unique.size - 1)
            val_groups = rng.permutation(unique)[:n_val_groups]
            is_val = np.isin(self.groups, val_groups)
        else:
            if n < 2:
                raise InputError(f"SampleSet {self.name!r} has {n} sample(s); a split needs at least 2")
            n_val = min(max(1, int(round(val_fraction * n))), n - 1)
            is_val = np.zeros(n, dtype=bool)
            is_val[rng.permutation(n)[:n_val]] = True
        return self.subset(np.flatnonzero(~is_val)), self.subset(np.flatnonzero(is_val))

    def __repr__(self) -> str:
        extra = []
        if self.groups is not None:
            extra.append(f"groups={np.unique(self.groups).size}")
        if self.labels is not None:
            extra.append("labels")
        tail = (", " + ", ".join(extra)) if extra else ""
        return (f"SampleSet({self.name!r}, n={len(self)}, sample_shape={self.sample_shape}, "
                f"dtype={self.samples.dtype}{tail})")
