"""An exact normalised-LMS cascade for the series walk (residual_series.py): each window learns,
while it is decoded, the part of its own error that a fixed predictor cannot.

The series levels' fixed integer LPC is fitted once on the calibration records. ECG differs from
record to record and beat to beat (noise colour, baseline, the other lead's share), which is what
lossless audio coders answer with adaptive filters (Monkey's Audio, OptimFROG): a cascade of NLMS
stages, each predicting what the stage before left. Here every stage runs in integers, so the
sender and every receiver hold the same weights at every sample (numpy int64, no float anywhere):

    per stage s (order K, step mu in 2^-MU_BITS), channel c, with v_s the stage's input history
    (v_0[t] = recon[t] - g0[t], g0 the fixed prediction; v_{s+1}[t] = clip(v_s[t] - f_s[t])):
    phi = (v_s[c, t-1], ..., v_s[c, t-K], and for c >= 1: v_s[c-1, t], v_s[c-1, t-1])
    f_s = floor(sum_k w_k phi_k / 2^WEIGHT_BITS)
    after decoding t: err = clip(v_s[c, t] - f_s)
    w_k = clip(w_k + floor(mu err phi_k 2^(WEIGHT_BITS - MU_BITS) / (sum_k phi_k^2 + 1)), +-WEIGHT_LIMIT)

with clip(v) to +-VALUE_LIMIT and weights starting at 0 in every window. The clips bound every
product and sum below 2^63 (|phi| <= 2^20, |w| <= 2^24, at most 34 features), so int64 is exact.
The walk adds sum_s f_s to the fixed prediction before quantising.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BundleError

WEIGHT_BITS = 16
MU_BITS = 10
VALUE_LIMIT = 1 << 20
WEIGHT_LIMIT = 1 << 24
MAX_ORDER = 32
MAX_STAGES = 4
N_CROSS = 2  # the channel coded just before: its stage input at t and t - 1


@dataclass(frozen=True)
class AdaptStage:
    order: int
    mu: int  # step size in 2^-MU_BITS

    def __post_init__(self) -> None:
        if not (1 <= self.order <= MAX_ORDER and 1 <= self.mu < (1 << MU_BITS)):
            raise BundleError(f"adaptive stage order {self.order} (1..{MAX_ORDER}) or step {self.mu} "
                              f"(1..{(1 << MU_BITS) - 1}) out of range; re-run calibration")


def check_stages(stages: tuple[AdaptStage, ...]) -> None:
    if len(stages) > MAX_STAGES:
        raise BundleError(f"{len(stages)} adaptive stages, at most {MAX_STAGES}; re-run calibration")


class Cascade:
    """The cascade's state over a walk: per stage its input history (C, T + pad, N) and per channel
    its weights (features, N). ``predict`` then ``update`` once per channel and time, in walk order."""

    def __init__(self, stages: tuple[AdaptStage, ...], channels: int, n: int, rows: int) -> None:
        check_stages(stages)
        self.stages = stages
        self.hist = [np.zeros((channels, rows, n), dtype=np.int64) for _ in stages]
        self.weights = [[np.zeros((st.order + (N_CROSS if c else 0), n), dtype=np.int64) for c in range(channels)]
                        for st in stages]
        self._phi: dict[int, list[np.ndarray]] = {}  # per channel, the last ``predict``'s features per stage
        self._f: dict[int, list[np.ndarray]] = {}

    def _features(self, s: int, c: int, u: int) -> np.ndarray:
        h = self.hist[s]
        own = h[c, u - self.stages[s].order : u][::-1]  # t-1 .. t-K (the walk pads K rows)
        return np.concatenate([own, h[c - 1, u - 1 : u + 1][::-1]]) if c else own

    def predict(self, c: int, u: int) -> np.ndarray:
        """sum_s f_s for channel c at history row u (every stage input before it decoded)."""
        phis, fs = [], []
        total = None
        for s in range(len(self.stages)):
            phi = self._features(s, c, u)
            f = (self.weights[s][c] * phi).sum(axis=0) >> WEIGHT_BITS
            phis.append(phi)
            fs.append(f)
            total = f if total is None else total + f
        self._phi[c], self._f[c] = phis, fs
        assert total is not None
        return total

    def update(self, c: int, u: int, v0: np.ndarray) -> None:
        """Channel c at row u decoded: v0 = recon - fixed prediction. Records every stage's input
        and moves its weights, with the features and predictions of channel c's last ``predict``."""
        v = _clip(v0.astype(np.int64), VALUE_LIMIT)
        for s, st in enumerate(self.stages):
            self.hist[s][c, u] = v
            phi, f = self._phi[c][s], self._f[c][s]
            err = _clip(v - f, VALUE_LIMIT)
            energy = (phi * phi).sum(axis=0) + 1
            w = self.weights[s][c]
            w += phi * ((st.mu * err) << (WEIGHT_BITS - MU_BITS)) // energy  # = floor(mu err phi 2^6 / energy)
            _clip(w, WEIGHT_LIMIT)
            v = err


def _clip(a: np.ndarray, limit: int) -> np.ndarray:
    """a clipped to [-limit, limit] in place (np.clip's wrapper costs more than the work here)."""
    np.maximum(a, -limit, out=a)
    return np.minimum(a, limit, out=a)
