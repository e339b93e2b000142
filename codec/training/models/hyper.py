"""The photo transform with a mean-scale hyperprior (Ballé et al. 2018; Minnen, Ballé, Toderici 2018).

Why: the factorized prior codes every latent element with one fixed table per channel, so an edge
and a flat sky cost the same table. A hyperprior sends a little side information z (a quarter of
the latent's resolution) from which a small network predicts, per latent element, a mean and a
scale; the element is then coded with a discretized Gaussian of that scale around that mean. The
CompressAI zoo measures -21 % (scale) and -7 % more (mean) at equal training.

Layout ("hyper2d": gdn2d's analysis and synthesis, N = layers[-1], M = code_size):
  hyper-analysis  h_a: conv3x3(M->N) ReLU conv5x5(N->N, s2) ReLU conv5x5(N->N, s2)   -> z
  hyper-synthesis h_s: deconv5x5(N->M, s2) ReLU deconv5x5(M->M, s2) ReLU conv3x3(M->2M) -> (mu, log sigma)
ReLU (not leaky) and plain convolutions, so that h_s can be turned into an integer network whose
outputs, and hence the entropy coder's table choices, are identical on every machine (issue 23).

Variable rate keeps gdn2d's per-level gain vectors: at level l the symbol is round(y*g - mu*g),
coded with a Gaussian of scale sigma*g, and the decoder sees (symbol + mu*g) * inverse_gain. z is
level-independent (one unit bin), so h_a and h_s are shared by all levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...coding.exact_hyper import LOG_SCALE_RANGE, SCALE_MIN
from ...coding.hyper_latents import HYPER_STRIDE
from .base import AutoencoderOutput
from .config import ModelConfig
from .density import LIKELIHOOD_FLOOR, FactorizedDensity
from .gdn import Gdn2dAutoencoder

# SCALE_MIN (the smallest scale the coder's tables tell apart) and LOG_SCALE_RANGE (log sigma's clamp)
# are defined once, in the numpy-only runtime that computes h_s exactly (codec/coding/exact_hyper.py)


class _LowerBound(torch.autograd.Function):
    """max(x, bound), passing the gradient where it would lift x off the bound (CompressAI's LowerBound)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def gaussian_bits(symbols: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """-log2 P(bin of width 1 centred on ``symbols``) under N(0, scale^2); elementwise.

    Computed on the lower tail (|s| only), where the normal CDF keeps its precision."""
    scale = _LowerBound.apply(scale, SCALE_MIN) if scale.requires_grad else scale.clamp_min(SCALE_MIN)
    v = symbols.abs()
    upper = torch.special.ndtr((0.5 - v) / scale)
    lower = torch.special.ndtr((-0.5 - v) / scale)
    return -torch.log2(torch.clamp(upper - lower, min=LIKELIHOOD_FLOOR))


class HyperAnalysis(nn.Module):
    def __init__(self, m: int, n: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(m, n, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(n, n, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(n, n, 5, stride=2, padding=2),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y of any size: padded (edge replication) to a multiple of HYPER_STRIDE first."""
        h, w = y.shape[2:]
        return self.net(F.pad(y, [0, (-w) % HYPER_STRIDE, 0, (-h) % HYPER_STRIDE], mode="replicate"))


class HyperSynthesis(nn.Module):
    """z_hat -> (mu, log sigma), each (N, M, h, w), cropped to the latent's size."""

    def __init__(self, m: int, n: int) -> None:
        super().__init__()
        self.m = m
        self.net = nn.Sequential(
            nn.ConvTranspose2d(n, m, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(m, m, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
            nn.Conv2d(m, 2 * m, 3, stride=1, padding=1),
        )

    def forward(self, z_hat: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(z_hat)[:, :, : size[0], : size[1]]
        return out[:, : self.m], out[:, self.m :].clamp(*LOG_SCALE_RANGE)


class HyperGdn2dAutoencoder(Gdn2dAutoencoder):
    """gdn2d plus a mean-scale hyperprior; ``self.density`` is z's factorized prior (N channels)."""

    family = "hyper2d"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if config.variant != "plain":
            raise ValueError(f"hyper2d takes the plain variant only, not {config.variant!r}")
        m, n = config.code_size, config.layers[-1]
        self.density = FactorizedDensity(n)
        self.hyper_analysis = HyperAnalysis(m, n)
        self.hyper_synthesis = HyperSynthesis(m, n)

    @property
    def hyper_channels(self) -> int:
        return self.config.layers[-1]

    def warmup_parameters(self) -> list[nn.Parameter]:
        """What a warm start from a factorized-prior bundle fits first, the inherited network frozen."""
        return [*self.density.parameters(), *self.hyper_analysis.parameters(), *self.hyper_synthesis.parameters()]

    def _gains(self, y: torch.Tensor, level: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.levels:
            if level is None:
                raise ValueError(f"this model has {self.levels} rate levels: pass level= (one index per sample)")
            return self.level_gains(level)
        one = torch.ones((), dtype=y.dtype, device=y.device)
        return one, one

    def rate_terms(self, y: torch.Tensor, level: torch.Tensor | None, mode: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scaled residual y*g - mu*g before rounding, scaled mean mu*g, inverse gain, bits per sample).

        The rate is measured on the noisy residual (or the rounded one in "round" mode); z's rate on
        z + noise, while h_s sees round(z) as the decoder will."""
        gain, inverse = self._gains(y, level)
        z = self.hyper_analysis(y)
        z_rated = _ste_round(z) if mode == "round" else z + torch.empty_like(z).uniform_(-0.5, 0.5)
        mu, log_sigma = self.hyper_synthesis(_ste_round(z), (y.shape[2], y.shape[3]))
        mean = mu * gain
        scaled = y * gain - mean
        rated = _ste_round(scaled) if mode == "round" else scaled + torch.empty_like(scaled).uniform_(-0.5, 0.5)
        bits = gaussian_bits(rated, torch.exp(log_sigma) * gain).flatten(1).sum(1) + self.density.bits(z_rated)
        return scaled, mean, inverse, bits

    def forward(self, x: torch.Tensor, quantize: str | None = None,
                level: torch.Tensor | None = None) -> AutoencoderOutput:
        mode = quantize or ("mixed" if self.training else "round")
        if mode not in ("mixed", "noise", "round"):
            raise ValueError(f"hyper2d quantizes with 'mixed', 'noise' or 'round', not {mode!r}")
        y = self.encode(x)
        scaled, mean, inverse, bits = self.rate_terms(y, level, "round" if mode == "round" else "noise")
        symbols = scaled + torch.empty_like(scaled).uniform_(-0.5, 0.5) if mode == "noise" else _ste_round(scaled)
        x_hat = self.decode((symbols + mean) * inverse, tuple(x.shape[2:]))
        return AutoencoderOutput(x_hat, y, bits)

    def warmup_bits(self, y: torch.Tensor, level: torch.Tensor | None) -> torch.Tensor:
        return self.rate_terms(y, level, "noise")[3]
