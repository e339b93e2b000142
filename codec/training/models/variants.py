"""The autoencoder family of the literature as training-time variants of one model core.

Every variant changes only the training loss (or, for the VAE, adds a log-variance head that the
export drops), so each one exports to the same two ONNX graphs and streams like any other model:

- plain        distortion (+ rate_weight * bits), as codec/train.py describes;
- linear       ``activation="linear"``: no nonlinearity anywhere, the autoencoder PCA is the optimum of;
- denoising    the encoder sees a corrupted input, the loss compares with the CLEAN one
               (``mask:P`` zeroes a fraction P of input elements in the model domain,
               ``gaussian:SIGMA`` adds N(0, SIGMA^2) there; Vincent et al. 2008);
- sparse       a penalty on code activity: ``l1:W`` adds W * sum |y|; ``kl:RHO[:W]`` adds
               W * sum_j KL(RHO || rho_hat_j), rho_hat_j the batch mean of unit j's activity (Ng 2011);
- contractive  W * ||d y / d x||_F^2 (Rifai et al. 2011), estimated with one random projection
               per sample (E ||J^T v||^2 = ||J||_F^2 for v ~ N(0, I)), so it costs one extra
               backward pass whatever the code size;
- vae          q(z|x) = N(mu, diag exp(logvar)), the decoder trains on reparameterised samples,
               beta * KL(q || N(0, I)) in nats (Kingma & Welling 2014); the codec sends round(mu).

Weights share one convention with ``--rate-weight``: each multiplies a per-sample term that is
added to the per-sample distortion SUMMED over the sample's elements (the VAE's usual convention,
so beta = 1 is the evidence lower bound with a BCE/Gaussian likelihood).

A code unit is "active" on a sample when the codec would send it as a non-zero symbol
(|y| >= 0.5, round(y) != 0): sparse codes are cheap codes. The KL penalty uses a smooth version
of that indicator, sigmoid(KAPPA * (|y| - 0.5)).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from ..options import VARIANTS  # the one vocabulary, shared with the CLI

if TYPE_CHECKING:  # annotations only: config.py and base.py import this module, never the reverse
    from .base import Autoencoder
    from .config import ModelConfig

KAPPA = 8.0  # slope of the smooth activity indicator around |y| = 0.5
DEFAULT_CORRUPTION = "mask:0.3"
DEFAULT_SPARSITY = "kl:0.05"
DEFAULT_KL_WEIGHT = 20.0
DEFAULT_CONTRACTIVE_WEIGHT = 0.1


class OvercompleteCodeWarning(UserWarning):
    """The code has more elements than the input and nothing stops the model learning the identity."""


@dataclass(frozen=True)
class Corruption:
    """Denoising corruption: mask (zero a fraction of elements) or additive Gaussian noise."""

    kind: str
    amount: float

    @classmethod
    def parse(cls, text: str) -> Corruption:
        kind, _, value = text.partition(":")
        try:
            amount = float(value)
        except ValueError:
            amount = float("nan")
        if kind == "mask" and 0.0 < amount < 1.0:
            return cls(kind, amount)
        if kind == "gaussian" and amount > 0.0 and math.isfinite(amount):
            return cls(kind, amount)
        raise ValueError(
            f"corruption {text!r}: use mask:P with 0 < P < 1 (fraction of inputs set to zero) "
            "or gaussian:SIGMA with SIGMA > 0 (model-domain noise std), e.g. mask:0.3 or gaussian:0.2"
        )

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "mask":
            keep = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) >= self.amount
            return x * keep
        return x + self.amount * torch.randn(x.shape, generator=generator, device="cpu").to(x.device)


@dataclass(frozen=True)
class Sparsity:
    """Sparse-code penalty: l1 (weight) or kl (target activity rate, weight)."""

    kind: str
    target: float
    weight: float

    @classmethod
    def parse(cls, text: str) -> Sparsity:
        parts = text.split(":")
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            values = []
        if parts[0] == "l1" and len(values) == 1 and values[0] > 0:
            return cls("l1", 0.0, values[0])
        if parts[0] == "kl" and len(values) in (1, 2) and 0.0 < values[0] < 1.0 and (len(values) == 1 or values[1] > 0):
            return cls("kl", values[0], values[1] if len(values) == 2 else DEFAULT_KL_WEIGHT)
        raise ValueError(
            f"sparsity {text!r}: use l1:WEIGHT (WEIGHT > 0) or kl:TARGET[:WEIGHT] (0 < TARGET < 1, the wanted "
            f"fraction of non-zero code symbols; WEIGHT defaults to {DEFAULT_KL_WEIGHT:g}), e.g. l1:0.05 or kl:0.05"
        )

    def penalty(self, y: torch.Tensor) -> torch.Tensor:
        """Per-sample penalty (N,); the KL term is a batch statistic spread evenly over the batch."""
        if self.kind == "l1":
            return self.weight * y.abs().flatten(1).sum(dim=1)
        units = soft_activity(y).transpose(0, 1).reshape(y.shape[1], -1)  # (C, N * positions)
        rho_hat = units.mean(dim=1).clamp(1e-6, 1 - 1e-6)
        rho = self.target
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        per_position = math.prod(y.shape[2:]) if y.dim() > 2 else 1
        return self.weight * kl.sum() * per_position * torch.ones(y.shape[0], device=y.device)


def soft_activity(y: torch.Tensor) -> torch.Tensor:
    """Smooth indicator of round(y) != 0, in (0, 1)."""
    return torch.sigmoid(KAPPA * (y.abs() - 0.5))


def code_activity(y: torch.Tensor) -> float:
    """Fraction of code elements the codec sends as non-zero symbols."""
    return float((torch.round(y) != 0).float().mean())


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed per sample, in nats; shape (N,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


def jacobian_frobenius_sq(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Exact ||d encode(x) / d x||_F^2 per sample (N,): one backward pass per code element.

    Samples are independent, so the gradient of sum over the batch of code element k gives row k
    of every sample's Jacobian at once. For evaluation (small codes); training uses the estimate.
    """
    x = x.detach().clone().requires_grad_(True)
    y = model.encode(x).flatten(1)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for k in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, k].sum(), x, retain_graph=k < y.shape[1] - 1)
        total += g.flatten(1).pow(2).sum(dim=1)
    return total.detach()


def jacobian_estimate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased per-sample estimate of ||dy/dx||_F^2 (N,), differentiable (x must require grad)."""
    v = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * v).sum(), x, create_graph=True)
    return g.flatten(1).pow(2).sum(dim=1)


def check_variant(config: ModelConfig) -> None:
    """Refuse a variant parameter that belongs to another variant; fill in the variant's defaults."""
    if config.variant not in VARIANTS:
        raise ValueError(f"variant {config.variant!r} is not one of {VARIANTS}")
    v = config.variant
    if v == "denoising" and not config.corruption:
        config.corruption = DEFAULT_CORRUPTION
    if v == "sparse" and not config.sparsity:
        config.sparsity = DEFAULT_SPARSITY
    if v == "contractive" and not config.contractive_weight:
        config.contractive_weight = DEFAULT_CONTRACTIVE_WEIGHT
    config.contractive_weight = float(config.contractive_weight)
    config.beta = float(config.beta)
    stray = [
        name for name, used, active in (
            ("corruption", bool(config.corruption), v == "denoising"),
            ("sparsity", bool(config.sparsity), v == "sparse"),
            ("contractive_weight", config.contractive_weight != 0.0, v == "contractive"),
            ("beta", config.beta != 1.0, v == "vae"),
        ) if used and not active
    ]
    if stray:
        raise ValueError(f"{', '.join(stray)} set, but variant is {v!r}; pick the matching --variant")
    if config.corruption:
        Corruption.parse(config.corruption)
    if config.sparsity:
        Sparsity.parse(config.sparsity)
    if config.contractive_weight < 0 or not math.isfinite(config.contractive_weight):
        raise ValueError(f"contractive_weight must be >= 0, got {config.contractive_weight}")
    if not config.beta > 0 or not math.isfinite(config.beta):
        raise ValueError(f"beta must be > 0, got {config.beta}")
    if config.rate_levels and v != "plain":
        raise ValueError(f"rate_levels (variable rate) are for plain models, not variant {v!r}")


def is_overcomplete(model: Autoencoder) -> bool:
    """More code elements than input elements (conv: per input position, code_size / stride^d > C_in)."""
    c = model.config
    if model.spatial_dims == 0:  # dense: every dim is fixed (DenseAutoencoder refuses None)
        return c.code_size > math.prod(d for d in c.sample_shape if d is not None)
    c_in = c.sample_shape[0]  # conv: a fixed channel count (check_conv_config)
    return c_in is not None and c.code_size > c_in * model.stride ** model.spatial_dims


def warn_if_unregularized(model: Autoencoder, rate_weight: float) -> bool:
    """Warn (and return True) when an overcomplete code has no regularizer at all.

    The rate term counts: with rate_weight > 0 every bit of the code costs, so copying the input
    through is not free. A plain overcomplete autoencoder without it can learn the identity.
    """
    if not is_overcomplete(model) or model.config.variant != "plain" or rate_weight > 0:
        return False
    warnings.warn(
        f"code size {model.config.code_size} is overcomplete (more code elements than input elements) and "
        "no regularizer is set: the model can learn the identity. Use --variant denoising/sparse/contractive/vae "
        "or a --rate-weight > 0",
        OvercompleteCodeWarning,
        stacklevel=2,
    )
    return True


class LossTerms(NamedTuple):
    loss: torch.Tensor  # scalar to minimise
    distortion: torch.Tensor  # scalar, mean per-sample distortion against the CLEAN input
    bits: torch.Tensor  # scalar, mean code length under the density
    penalty: torch.Tensor  # scalar, mean variant penalty (0 for plain / linear / denoising)


def training_loss(
    model: Autoencoder, x: torch.Tensor, rate_weight: float, distortion_fn, generator: torch.Generator | None = None,
) -> LossTerms:
    """One batch's loss for the model's variant (see module docstring).

    distortion_fn(x_hat, x, loss_name) -> (N,) is codec/train.py's per-sample distortion, passed
    in so the two can never disagree on what "distortion" means.
    """
    c = model.config
    mode = "mixed" if rate_weight > 0 else "none"
    zero = torch.zeros((), device=x.device)
    if c.variant == "vae":
        mu, logvar = model.encode_distribution(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        size = tuple(x.shape[2:]) if model.spatial_dims else None
        x_hat = model.decode(z, size)
        d = distortion_fn(x_hat, x, c.loss).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        # the density (entropy tables for round(mu)) is fitted on the side, on detached means
        bits = model.density.bits(mu.detach() + torch.empty_like(mu).uniform_(-0.5, 0.5)).mean()
        return LossTerms(d + c.beta * kl + bits, d, bits, c.beta * kl.detach())
    x_in = x
    if c.variant == "denoising":
        x_in = Corruption.parse(c.corruption).apply(x, generator)
    if c.variant == "contractive":
        x_in = x.detach().clone().requires_grad_(True)
    if c.rate_levels:
        return _variable_rate_loss(model, x_in, x, distortion_fn, generator)
    out = model(x_in, quantize=mode)
    d = distortion_fn(out.x_hat, x, c.loss).mean()
    bits = out.bits.mean()
    loss = d + (rate_weight * bits if rate_weight > 0 else bits)  # rate 0: bits only train the density
    penalty = zero
    if c.variant == "sparse":
        penalty = Sparsity.parse(c.sparsity).penalty(out.y).mean()
    elif c.variant == "contractive":
        penalty = c.contractive_weight * jacobian_estimate(x_in, out.y).mean()
    return LossTerms(loss + penalty, d, bits, penalty.detach())


def level_loss_weights(rate_levels: list[float]) -> torch.Tensor:
    """Per-level factor that puts every level's loss in one currency: distortion / weight + bits
    is each level's Lagrangian in bits, times the weights' geometric mean to stay on the scale of
    a one-rate run's loss (Cui et al. and CompressAI weigh levels the same way)."""
    w = torch.tensor(rate_levels, dtype=torch.float64)
    return (torch.exp(torch.log(w).mean()) / w).float()


def _variable_rate_loss(model: Autoencoder, x_in: torch.Tensor, x: torch.Tensor, distortion_fn,
                        generator: torch.Generator | None) -> LossTerms:
    """Every sample draws a level at random, so one batch trains every rate."""
    c = model.config
    level = torch.randint(len(c.rate_levels), (x.shape[0],), generator=generator).to(x.device)
    out = model(x_in, quantize="mixed", level=level)
    d = distortion_fn(out.x_hat, x, c.loss)
    weights = torch.tensor(c.rate_levels, device=x.device)[level]
    scale = level_loss_weights(c.rate_levels).to(x.device)[level]
    loss = (scale * (d + weights * out.bits)).mean()
    zero = torch.zeros((), device=x.device)
    return LossTerms(loss, d.mean(), out.bits.mean(), zero)


@torch.no_grad()
def prior_samples(model: Autoencoder, n: int, size: tuple[int, ...] | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Decode n draws z ~ N(0, I) (a VAE's prior): new samples shaped (n, *sample_shape).

    Conv families need the spatial size of the samples to generate (size); dense ones know it.
    """
    if model.config.variant != "vae":
        raise ValueError(f"prior samples need a VAE (variant 'vae'), this model is {model.config.variant!r}")
    shape = [d for d in model.latent_shape() if d is not None]  # without spatial dims every one is fixed
    if model.spatial_dims:
        if size is None or len(size) != model.spatial_dims:
            raise ValueError(
                f"{model.family} prior samples need size: the {model.spatial_dims} spatial extent(s) to generate"
            )
        shape = [model.config.code_size, *(math.ceil(int(s) / model.stride) for s in size)]
    device = next(model.parameters()).device
    z = torch.randn((n, *shape), generator=generator).to(device)
    return model.decode(z, tuple(size) if size is not None else None)


__all__ = [
    "VARIANTS", "Corruption", "Sparsity", "LossTerms", "OvercompleteCodeWarning", "check_variant", "code_activity",
    "is_overcomplete", "jacobian_estimate", "jacobian_frobenius_sq", "kl_to_standard_normal", "prior_samples",
    "soft_activity", "training_loss", "warn_if_unregularized",
]
