"""A hyperprior model's export: its hyper-synthesis as an exact integer network (hyper.npz).

Why a separate file: the hyper-synthesis picks the entropy coder's table for every latent element,
so the receiver must compute it bit-exactly on every machine; a float graph cannot promise that
(CompressAI's cross-machine desyncs). It is quantized here, after training, on the side latents of
the validation batch the parity check uses, and its agreement with the float network is recorded
in the manifest's latent.hyper block (where the size of the bundle's other choices is recorded).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import bundle as bundle_mod
from ..coding.hyper_latents import HYPER_STRIDE
from .models.hyper import HyperGdn2dAutoencoder
from .quantize_hyper import measure_hyper, quantize_hyper_synthesis


@torch.no_grad()
def side_latents(model: HyperGdn2dAutoencoder, x: np.ndarray, batch: int = 8) -> np.ndarray:
    """round(h_a(encode(x))) for the model-domain batch x: what the exact h_s is calibrated on."""
    parts = [torch.round(model.hyper_analysis(model.encode(torch.from_numpy(x[i : i + batch])))).numpy()
             for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.int64)


def write_hyper(model: HyperGdn2dAutoencoder, out: Path, x: np.ndarray, z_pmf: dict[str, Any]) -> dict[str, Any]:
    """Write out/hyper.npz and return the manifest's latent.hyper block."""
    z = side_latents(model, x)
    exact = quantize_hyper_synthesis(model.hyper_synthesis, z)
    (out / bundle_mod.HYPER).write_bytes(exact.to_bytes())
    agreement = measure_hyper(model.hyper_synthesis, exact, z)
    return {
        "file": bundle_mod.HYPER,
        "channels": model.hyper_channels,
        "stride": HYPER_STRIDE,
        "pmf": z_pmf,
        "mean_frac_bits": exact.mean_frac_bits,
        "scale_frac_bits": exact.scale_frac_bits,
        "agreement_with_float": asdict(agreement),
    }
