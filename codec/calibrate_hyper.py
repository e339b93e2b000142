"""Calibration of a hyperprior bundle's latent stage (issue 23).

The latent's tables are not fit on data: they are the Gaussian family of coding/gaussian.py, picked
per element by the exact hyper-synthesis, and z's factorized tables come from the density the
model trained with (manifest latent.hyper.pmf). What calibration adds is their integer form, built
once here and stored in entropy.json: the tables and, per level and channel, the thresholds that
map the hyper-synthesis's integer scale codes to tables.
"""

from __future__ import annotations

import numpy as np

from .bundle import HYPER, Bundle
from .coding.exact_hyper import ExactHyperSynthesis
from .coding.hyper_latents import HyperLatentPath
from .coding.hyperprior import build_hyper_latent_coding
from .errors import BundleError


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
