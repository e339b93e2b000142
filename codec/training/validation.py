"""Codec-faithful validation: what the exported bundle delivers, measured during training.

Apart from train.py so the loop stays one job (and the benchmarks can score a model the same way);
the distortion is the training loss's, so val_loss and the training loss share one currency.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..normalization import Normalization
from .models import Autoencoder
from .models.variants import Corruption, level_loss_weights


def distortion(x_hat: torch.Tensor, x: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample distortion (N,), summed over the sample's elements (see module docstring)."""
    if loss == "bce":
        per = F.binary_cross_entropy(x_hat.clamp(0.0, 1.0), x.clamp(0.0, 1.0), reduction="none")
    else:
        per = (x_hat - x) ** 2
    return per.flatten(1).sum(dim=1)


@torch.no_grad()
def evaluate(
    model: Autoencoder, x: np.ndarray, normalization: Normalization, loss: str, rate_weight: float,
    device: torch.device, batch_size: int = 256, corruption: str = "",
) -> dict[str, float]:
    """Codec-faithful validation: rounded latents; PSNR in the raw domain (normalization peak).

    A denoising model is selected on what it is for: val_loss then scores the reconstruction of
    CORRUPTED validation samples (fixed seed) against the clean ones; PSNR and bytes stay clean.
    A variable-rate model is validated at every level (val_psnr_db_qK, val_bytes_per_sample_qK);
    its val_loss is the mean of the levels' losses in the training loss's one currency, and its
    val_psnr_db / val_bytes_per_sample are those of the middle level.
    """
    model.eval()
    if model.levels:
        return _evaluate_levels(model, x, normalization, loss, device, batch_size)
    tot_loss = tot_bits = tot_se = 0.0
    n = x.shape[0]
    corrupt = Corruption.parse(corruption) if corruption else None
    gen = torch.Generator().manual_seed(0)
    for i in range(0, n, batch_size):
        xb = torch.from_numpy(x[i : i + batch_size]).to(device)
        out = model(xb, quantize="round")
        d = distortion(out.x_hat, xb, loss)
        if corrupt is not None:
            d = distortion(model(corrupt.apply(xb, gen), quantize="round").x_hat, xb, loss)
        tot_loss += float((d + rate_weight * out.bits).sum())
        tot_bits += float(out.bits.sum())
        tot_se += _raw_squared_error(normalization, xb, out.x_hat)
    return {"val_loss": tot_loss / n, "val_psnr_db": _psnr(normalization, tot_se, x.size),
            "val_bytes_per_sample": tot_bits / n / 8.0}


def _raw_squared_error(normalization: Normalization, xb: torch.Tensor, x_hat: torch.Tensor) -> float:
    raw_ref = normalization.to_raw_float(xb.cpu().numpy())
    raw_hat = normalization.to_raw_float(x_hat.cpu().numpy())
    return float(np.sum((raw_ref.astype(np.float64) - raw_hat) ** 2))


def _psnr(normalization: Normalization, squared_error: float, count: int) -> float:
    mse = squared_error / count
    return float("inf") if mse == 0 else 10.0 * math.log10(normalization.peak**2 / mse)


def _evaluate_levels(model: Autoencoder, x: np.ndarray, normalization: Normalization, loss: str,
                     device: torch.device, batch_size: int) -> dict[str, float]:
    weights = model.config.rate_levels
    scales = level_loss_weights(weights)
    metrics: dict[str, float] = {}
    losses = []
    n = x.shape[0]
    for lv, w in enumerate(weights):
        tot_loss = tot_bits = tot_se = 0.0
        for i in range(0, n, batch_size):
            xb = torch.from_numpy(x[i : i + batch_size]).to(device)
            out = model(xb, quantize="round", level=torch.full((xb.shape[0],), lv, dtype=torch.long, device=device))
            d = distortion(out.x_hat, xb, loss)
            tot_loss += float((scales[lv] * (d + w * out.bits)).sum())
            tot_bits += float(out.bits.sum())
            tot_se += _raw_squared_error(normalization, xb, out.x_hat)
        losses.append(tot_loss / n)
        metrics[f"val_psnr_db_q{lv}"] = _psnr(normalization, tot_se, x.size)
        metrics[f"val_bytes_per_sample_q{lv}"] = tot_bits / n / 8.0
    mid = len(weights) // 2
    return {"val_loss": float(np.mean(losses)), "val_psnr_db": metrics[f"val_psnr_db_q{mid}"],
            "val_bytes_per_sample": metrics[f"val_bytes_per_sample_q{mid}"], **metrics}
