"""The sender's choice, window by window, between the latent + transform residual and the transform alone.

A transform level normally sends the latent and codes what the decoder misses (transform.py). On
signals the model never saw, the latent can cost more than it saves: the held-out MIT-BIH records
code ~4 % larger that way than with the plain CDF 9/7 wavelet coder. So each window may instead
go without the latent: the same transform coder on the raw window against a fixed prediction,
with its own tables (transform.AloneTables). The sender codes each window both ways at the same
step and keeps the one with the lower rate-distortion cost

    J = bits + SSE / lambda,   lambda = (ln 2 / 6) step^2   (squared raw units per bit),

the slope of a uniform quantizer's D(R) at high rate (D = step^2 / 12 per coefficient, -6 dB per
bit). Equal steps do not give equal error: the quantizer's dead zone drops more of a raw
window's coefficients than of a residual's, so at step 64 the raw windows come back at PRD 4.7 %
where latent + residual gives 3.3 %. Comparing bytes alone would then pick the cheaper, worse
window. On the held-out records 117-124 (benchmarks.rd, transform ladder and q0, 4,438 windows)
the Lagrangian choice gives -1.8 % BD-rate against the wavelet coder over PRD 1-8 %, bytes alone
-1.0 %, every window with its latent +4.5 % (benchmarks/results/rd-ecg-modes-*.json). With a PRDN
target both modes meet it by construction, so bits alone decide there.

Bits are ideal code lengths under the integer tables (coder.symbol_bits), not a trial encode: on
640 held-out windows they picked the mode exact bytes (a whole packet per window and mode) pick
for 99.5 %, and they cost one vectorised pass where trial packets cost ~22 ms per window
(benchmarks/ecg_modes.py). The choice is the sender's alone: the packet says what was chosen
(FLAG_MODES and one mode symbol per window), and the receiver follows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .transform import MODE_ALONE, MODE_LATENT, TransformResidual, choose_steps

CHOICES = ("auto", "latent", "alone")  # what a sender may ask for: decide per window, or force one mode
LAMBDA_PER_STEP2 = math.log(2) / 6  # squared raw units of error per bit, per step^2 (module docstring)


@dataclass(frozen=True)
class TransformChoice:
    """What a transform packet sends and what its receiver will rebuild."""

    modes: np.ndarray | None  # (N,) MODE_LATENT / MODE_ALONE per window; None: every window sends its latent
    q: np.ndarray  # (N, C, L) int64 quantized coefficients
    step_idx: np.ndarray  # (N,) ladder index per window
    recon: np.ndarray  # (N, C, L) float64: the receiver's samples (rounded for integer data)

    @property
    def alone_share(self) -> float:
        """Fraction of windows sent without the latent."""
        return 0.0 if self.modes is None else float(np.mean(self.modes == MODE_ALONE))


@dataclass(frozen=True)
class _Coded:
    q: np.ndarray
    step_idx: np.ndarray
    recon: np.ndarray


def _code(tr: TransformResidual, x: np.ndarray, prediction: np.ndarray, step_idx: np.ndarray | None,
          target_prdn: float | None, raw_min: float, raw_max: float, integer: bool) -> _Coded:
    coef = tr.forward(x - prediction)
    if step_idx is None:
        if target_prdn is None:
            raise InputError("a transform packet needs a step per window or a PRDN target")
        step_idx = choose_steps(tr, x, prediction, coef, float(target_prdn), raw_min, raw_max, integer)
    q = tr.quantize(coef, step_idx)
    return _Coded(q, step_idx, tr.reconstruct(prediction, q, step_idx, raw_min, raw_max, integer))


def choose(tr: TransformResidual, raw: np.ndarray, raw_float: np.ndarray, latent_bits: np.ndarray, *,
           step_idx: np.ndarray | None = None, target_prdn: float | None = None, raw_min: float, raw_max: float,
           integer: bool, choice: str = "auto") -> TransformChoice:
    """Code raw windows (N, C, L) at a transform level: at ladder indices step_idx (N,), or each
    window at the coarsest step meeting target_prdn. raw_float: the decoder's output for the
    windows' latents (N, C, L); latent_bits: (N,) what each window's latent costs.
    choice: "auto" (per window, the lower J), "latent" or "alone" (every window so). Bundles
    without alone tables always send the latent; so does "auto" where no window gains."""
    if choice not in CHOICES:
        raise InputError(f"transform mode must be one of {CHOICES}, got {choice!r}")
    x = np.asarray(raw, dtype=np.float64)
    n = len(x)
    if choice == "alone" and tr.alone is None:
        raise InputError("this bundle has no tables for windows sent without the latent (recalibrate it)")
    args = (step_idx, target_prdn, raw_min, raw_max, integer)
    if choice == "latent" or tr.alone is None:
        lat = _code(tr, x, np.asarray(raw_float, dtype=np.float64), *args)
        return TransformChoice(None, lat.q, lat.step_idx, lat.recon)
    alone = _code(tr, x, np.full(x.shape, tr.alone.prediction), *args)
    if choice == "alone":
        return TransformChoice(np.full(n, MODE_ALONE, dtype=np.int64), alone.q, alone.step_idx, alone.recon)
    lat = _code(tr, x, np.asarray(raw_float, dtype=np.float64), *args)
    cost_lat = np.asarray(latent_bits, dtype=np.float64) + tr.frame_bits(lat.q, np.full(n, MODE_LATENT))
    cost_alone = tr.frame_bits(alone.q, np.full(n, MODE_ALONE))
    if target_prdn is None:  # equal steps, unequal errors: weigh the error in bits (module docstring)
        lam = LAMBDA_PER_STEP2 * np.asarray(tr.steps)[lat.step_idx] ** 2
        cost_lat = cost_lat + ((x - lat.recon) ** 2).reshape(n, -1).sum(axis=1) / lam
        cost_alone = cost_alone + ((x - alone.recon) ** 2).reshape(n, -1).sum(axis=1) / lam
    pick = cost_alone < cost_lat
    if not pick.any():  # nothing to signal: the packet keeps the layout without modes
        return TransformChoice(None, lat.q, lat.step_idx, lat.recon)
    modes = np.where(pick, MODE_ALONE, MODE_LATENT).astype(np.int64)
    sel = pick[:, None, None]
    return TransformChoice(modes, np.where(sel, alone.q, lat.q), np.where(pick, alone.step_idx, lat.step_idx),
                           np.where(sel, alone.recon, lat.recon))
