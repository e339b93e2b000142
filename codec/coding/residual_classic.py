"""The classical base channel of colour-wavefront residuals: a frame coded with no latent at all.

At the lossless end the model's prediction costs more than it saves on many photos (24 held-out
BSDS500 test photos: latent l7 + lossless residual 9.80 bpp, JPEG-LS after a reversible colour
transform 9.55), and a float decoder's prediction can differ on another machine. A frame in the
classical mode therefore sends no latent: its base channel is predicted from its own decoded
neighbours by JPEG-LS's median edge detector (MED) on the base channel's reconstruction u,
computed in integers, and its colour differences are coded as residual_colour.py codes them with
no model weight (w = 0). Nothing in the mode depends on a model, so it decodes alike everywhere.

This module holds the per-diagonal arithmetic that residual_colour.py's walk calls for such a
frame (every neighbour it reads lies on an earlier anti-diagonal, so one vectorised step per
diagonal) and the packet-level modes (which frames go which way); residual_modes.py codes them.
"""

from __future__ import annotations

import numpy as np

from .transform import MODE_ALONE, MODE_LATENT, MODE_TABLES

BASE_MODEL = "model"  # base channel against the model's prediction p_b (the latent mode)
BASE_MED = "med"  # base channel against MED of its decoded neighbours (the classical mode)
BASES = (BASE_MODEL, BASE_MED)
MODE_CLASSIC = MODE_ALONE  # per-frame mode symbol 1: no latent, the classical residual
# the per-frame mode symbols and their fixed table are those of the transform levels' window modes
__all__ = ["BASES", "BASE_MED", "BASE_MODEL", "MODE_CLASSIC", "MODE_LATENT", "MODE_TABLES", "classic_base", "med"]


def med(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """JPEG-LS's median edge detector of left a, upper b and upper-left c: min(a, b) if c >= max(a, b),
    max(a, b) if c <= min(a, b), else a + b - c."""
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def classic_base(pb: np.ndarray, qb: np.ndarray, step: int, idx: np.ndarray, wp: int) -> np.ndarray:
    """The base channel's prediction at flat padded pixels idx of one anti-diagonal: MED(u_L, u_U, u_UL).

    pb / qb: the walk's flat, zero-padded base prediction and quantized residual, filled for every
    earlier diagonal, so u = pb + qb * step is the decoded, unclipped base there and 0 outside the
    image; wp: the padded row length. The table is chosen as in the latent mode (activity of the
    neighbours' |q|, q_L + q_U): on 16 BSDS500 training crops (320 x 320, in-sample bits per pixel
    at D = 0 / 1 / 2 / 4) it codes 8.24 / 6.31 / 5.37 / 4.43, JPEG-LS's gradients |u_L - u_UL| +
    |u_U - u_UL| 8.36 / 6.39 / 5.43 / 4.45, those plus |u_L - u_LL| + |u_U - u_UU| 8.30 / 6.35 /
    5.40 / 4.44, and that sum plus the |q| activity times 2D+1 8.24 / 6.30 / 5.36 / 4.41."""
    left = pb.take(idx - 1) + qb.take(idx - 1) * step
    up = pb.take(idx - wp) + qb.take(idx - wp) * step
    corner = pb.take(idx - wp - 1) + qb.take(idx - wp - 1) * step
    return med(left, up, corner)
