"""A hyperprior model's export: its hyper-synthesis as an exact integer network (hyper.npz).

Why a separate file: the hyper-synthesis picks the entropy coder's table for every latent element,
so the receiver must compute it bit-exactly on every machine; a float graph cannot promise that
(CompressAI's cross-machine desyncs). It is quantized here, after training, on the validation
batch's side latents, and its agreement with the float network is recorded in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from .models.hyper import HyperGdn2dAutoencoder


def write_hyper(model: HyperGdn2dAutoencoder, out: Path, x: np.ndarray, z_pmf: dict[str, Any]) -> dict[str, Any]:
    """Write out/hyper.npz and return the manifest's latent.hyper block."""
    raise ExportError("hyperprior export needs the exact hyper-synthesis quantizer (issue 23, in progress)")
