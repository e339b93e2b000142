"""Training-time augmentation: variations of the data a model must not take for signal.

Kept apart from the training loop so each augmentation (and its constants) is read and tested on
its own; ``--augment`` names one of ``options.AUGMENTS``.
"""

from __future__ import annotations

import math

import torch

from .options import AUGMENTS

ECG_SCALE = (0.7, 1.3)  # amplitude factor per window and lead
ECG_WANDER_MV = 0.3  # peak baseline wander (model domain of MIT-BIH: mV)
ECG_WANDER_CYCLES = (0.1, 1.5)  # per window: 0.04-0.5 Hz over a 1024-sample window at 360 Hz
ECG_NOISE_MV = 0.02  # largest std of the added white noise (4 ADC counts at 200 counts/mV)


def augment_batch(xb: torch.Tensor, how: str, generator: torch.Generator) -> torch.Tensor:
    """"flip": random flips of every sample along each spatial axis (photos). "ecg": each
    window and lead rescaled, given a slow baseline wander and white noise, the variations between
    patients and electrodes a model trained on a few records must not take for signal. "": none."""
    if how == "":
        return xb
    if how == "ecg":
        return _augment_ecg(xb, generator)
    if how != "flip":
        raise ValueError(f"augment {how!r} is not one of {AUGMENTS}")
    for axis in range(2, xb.dim()):
        flip = torch.rand(xb.shape[0], generator=generator) < 0.5
        if bool(flip.any()):
            idx = flip.nonzero().flatten().to(xb.device)
            xb = xb.clone()
            xb[idx] = torch.flip(xb[idx], dims=(axis,))
    return xb


def _augment_ecg(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if xb.dim() != 3:
        raise ValueError(f"augment 'ecg' takes series (N, leads, L), got {tuple(xb.shape)}")
    n, leads, length = xb.shape

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(*shape, generator=generator)).to(xb.device, xb.dtype)

    mean = xb.mean(dim=-1, keepdim=True)
    out = (xb - mean) * uniform(*ECG_SCALE, n, leads, 1) + mean
    t = torch.linspace(0.0, 1.0, length, device=xb.device, dtype=xb.dtype)
    cycles, phase = uniform(*ECG_WANDER_CYCLES, n, leads, 1), uniform(0.0, 2 * math.pi, n, leads, 1)
    out = out + uniform(0.0, ECG_WANDER_MV, n, leads, 1) * torch.sin(2 * math.pi * cycles * t + phase)
    noise = torch.randn(n, leads, length, generator=generator).to(xb.device, xb.dtype)
    return out + noise * uniform(0.0, ECG_NOISE_MV, n, leads, 1)
