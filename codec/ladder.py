"""The quality ladder calibrate builds: which latent grid and which residual each level uses.

Apart from calibrate.py because a ladder is a bundle's public contract (the manifest's
quality_levels, in the order senders name them), while calibration is how its tables are fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

# Raw-unit max errors. On MNIST (8-bit) with a ~22 dB autoencoder this spans ~22 dB (q0, latent
# only) -> ~27 -> ~33 -> ~39 -> ~46 dB -> lossless (measured figures land in metrics.calibration).
DEFAULT_QUALITY_LADDER: tuple[int | None, ...] = (None, 32, 16, 8, 3, 0)
# Variable-rate bundles: every learned level latent only, then the residual layer on the finest
# level for near-lossless and lossless (photos: max error 4 is above ~40 dB).
VARIABLE_RATE_RESIDUALS: tuple[int, ...] = (4, 2, 0)


def default_ladder(latent_levels: int) -> list[LevelSpec]:
    """The ladder calibrate uses when none is given: DEFAULT_QUALITY_LADDER, or for a bundle with
    learned levels l0..lK latent only and then lK with each of VARIABLE_RATE_RESIDUALS."""
    if not latent_levels:
        return [LevelSpec.parse(v) for v in DEFAULT_QUALITY_LADDER]
    top = latent_levels - 1
    return ([LevelSpec(None, 1.0, k) for k in range(latent_levels)]
            + [LevelSpec(e, 1.0, top) for e in VARIABLE_RATE_RESIDUALS])


@dataclass(frozen=True)
class LevelSpec:
    """One rung of the quality ladder: the latent's quantization step (1.0: the trained integer
    grid; coarser steps are the cheap levels) or learned level, and at most one residual: the
    max-error layer (max_error, raw units) or the transform residual (transform_step, raw units)."""

    max_error: int | None = None
    latent_step: float = 1.0
    latent_level: int | None = None  # learned level of a variable-rate bundle (then step is 1)
    transform_step: float | None = None

    def __post_init__(self) -> None:
        if self.max_error is not None and self.transform_step is not None:
            raise InputError("a level has a max error or a transform step, not both")

    @classmethod
    def parse(cls, value: int | str | None | LevelSpec) -> LevelSpec:
        """Parts joined by "+": "none" (latent only), N (max error N), "sX" (latent step X), "lK"
        (learned level K of a variable-rate bundle), "tX" (transform residual at step X):
        24, "s2+24", "l3", "l3+4", "t8", "l2+t16"."""
        if isinstance(value, LevelSpec):
            return value
        if value is None or isinstance(value, (int, np.integer)):
            return cls(None if value is None else int(value))
        step, level, bound, tstep = 1.0, None, None, None
        for part in str(value).strip().lower().split("+"):
            if part in ("", "none"):
                continue
            try:
                if part[0] == "s":
                    step = float(part[1:])
                    if not step > 0:
                        raise InputError(f"latent step must be > 0, got {part!r}")
                elif part[0] == "l":
                    level = int(part[1:])
                    if level < 0:
                        raise InputError(f"latent level must be >= 0, got {part!r}")
                elif part[0] == "t":
                    tstep = float(part[1:])
                    if not tstep > 0:
                        raise InputError(f"transform step must be > 0, got {part!r}")
                else:
                    bound = int(part)
            except ValueError:
                raise InputError(f"bad level part {part!r} (none, N, sX, lK, tX)") from None
        return cls(bound, step, level, tstep)

    def to_manifest(self, index: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": f"q{index}", "max_error": self.max_error}
        if self.latent_step != 1.0:  # omitted at 1.0 so ladders without steps keep their bytes
            entry["latent_step"] = self.latent_step
        if self.latent_level is not None:
            entry["latent_level"] = self.latent_level
        if self.transform_step is not None:
            entry["transform_step"] = self.transform_step
        return entry


def residual_grid(specs: Sequence[LevelSpec], reference: LevelSpec) -> LevelSpec:
    """The latent grid calibration fits the residual tables against and custom max errors use: the
    one step every max-error level of the ladder shares, else the reference grid (as before such
    ladders existed). A coarser latent step can pay at the residual levels: the latent costs less
    and the residual's tables are fit against that grid's prediction (MNIST: step 2 saves ~2 B per
    digit at every max error). A ladder whose residual levels sit on several grids, or on another
    learned level than the finest (an exact photo network's only input), keeps the reference grid:
    its context tables are fit against one prediction."""
    grids = {(sp.latent_step, sp.latent_level) for sp in specs if sp.max_error is not None}
    if len(grids) == 1:
        step, level = grids.pop()
        if level == reference.latent_level:
            return LevelSpec(None, step, level)
    return LevelSpec(None, reference.latent_step, reference.latent_level)
