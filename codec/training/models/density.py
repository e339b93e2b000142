"""Ballé et al.'s factorized prior: one learned, non-parametric density per latent channel.

The rate term of the training loss is the code length of the latents under this density, and
after training the same density, evaluated on integer bins, becomes the entropy coder's tables
(manifest latent.pmf -> codec/calibrate.py). Modelled on CompressAI's EntropyBottleneck
(Ballé, Minnen, Singh, Hwang, Johnston 2018, appendix 6.1): the CDF of each channel is a small
monotone MLP, so densities of any shape (peaked, skewed, multi-modal) can be learned.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOOD_FLOOR = 1e-9


class FactorizedDensity(nn.Module):
    """Learned CDF per channel; channels sit on axis 1 of the latent tensor (N, C, *positions).

    Dense models pass (N, D): every latent dimension is its own channel, which converges much
    faster than one density shared by all dimensions.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels = int(channels)
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, M) -> logit of F_c(v), same shape. Monotone in v by construction."""
        logits = v
        for i, matrix in enumerate(self.matrices):
            logits = torch.matmul(F.softplus(matrix), logits) + self.biases[i]
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i]) * torch.tanh(logits)
        return logits

    def _to_channel_rows(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() < 2 or y.shape[1] != self.channels:
            raise ValueError(f"density expects (N, {self.channels}, ...) latents, got {tuple(y.shape)}")
        return y.transpose(0, 1).reshape(self.channels, 1, -1)

    def likelihood(self, y_tilde: torch.Tensor, width: torch.Tensor | None = None) -> torch.Tensor:
        """P(bin centred on y_tilde), floored so log2 never reaches -inf; y's shape.

        Bins are 1 wide unless width (y's shape) says otherwise: variable-rate models quantize
        y * gain, whose unit bins are 1/gain wide in y."""
        v = self._to_channel_rows(y_tilde)
        half = 0.5 if width is None else 0.5 * self._to_channel_rows(width)
        lower = self._logits_cdf(v - half)
        upper = self._logits_cdf(v + half)
        # Subtract in the tail that is far from 1, where sigmoid keeps its precision.
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = torch.clamp(p, min=LIKELIHOOD_FLOOR)
        moved = y_tilde.transpose(0, 1)
        return p.reshape(moved.shape).transpose(0, 1)

    def bits(self, y_tilde: torch.Tensor, width: torch.Tensor | None = None) -> torch.Tensor:
        """Code length per sample in bits: -sum log2 p over every latent element; shape (N,)."""
        return -torch.log2(self.likelihood(y_tilde, width)).flatten(1).sum(dim=1)

    @torch.no_grad()
    def _quantiles(self, prob: float) -> np.ndarray:
        """Per-channel v with F_c(v) = prob, by bisection (F is monotone); float64."""
        target = math.log(prob / (1.0 - prob))
        lo = torch.full((self.channels, 1, 1), -1e6, dtype=torch.float64)
        hi = torch.full((self.channels, 1, 1), 1e6, dtype=torch.float64)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            below = self._logits_cdf(mid) < target
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).reshape(-1).numpy()

    @torch.no_grad()
    def pmf_tables(
        self, tail_mass: float = 1e-9, max_symbols: int = 1 << 16, gains: np.ndarray | None = None,
    ) -> tuple[list[int], list[np.ndarray]]:
        """Integer-bin pmfs p_c(k) = F_c((k+0.5)/g_c) - F_c((k-0.5)/g_c), renormalised, k from offsets[c].

        g_c = 1 unless ``gains`` (C,) is given: a variable-rate level codes round(y * g_c).
        The range covers all but tail_mass of each channel's mass; these are the tables the
        entropy coder is built from, so they are computed in float64.
        """
        g = np.ones(self.channels) if gains is None else np.asarray(gains, dtype=np.float64).reshape(-1)
        if g.shape != (self.channels,) or not np.all(g > 0):
            raise ValueError(f"gains must be {self.channels} positive factors, got shape {g.shape}")
        first = next(self.parameters())
        was_dtype, was_device = first.dtype, first.device
        self.to(device="cpu", dtype=torch.float64)
        try:
            low = np.floor(self._quantiles(tail_mass / 2.0) * g)
            high = np.ceil(self._quantiles(1.0 - tail_mass / 2.0) * g)
            offsets: list[int] = []
            probs: list[np.ndarray] = []
            for c in range(self.channels):
                start, stop = int(low[c]), int(high[c])
                if stop - start + 1 > max_symbols:
                    raise ValueError(
                        f"latent channel {c} spreads over {stop - start + 1} integer symbols "
                        f"(> {max_symbols}); train with a larger --rate-weight"
                    )
                k = torch.arange(start, stop + 1, dtype=torch.float64).reshape(1, 1, -1)
                lower = self._logits_cdf_channel(c, (k - 0.5) / float(g[c]))
                upper = self._logits_cdf_channel(c, (k + 0.5) / float(g[c]))
                sign = -torch.sign(lower + upper)
                p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).reshape(-1).numpy()
                p = np.maximum(p, 0.0)
                probs.append(p / p.sum())
                offsets.append(start)
            return offsets, probs
        finally:
            self.to(device=was_device, dtype=was_dtype)

    def _logits_cdf_channel(self, c: int, v: torch.Tensor) -> torch.Tensor:
        logits = v
        for i, matrix in enumerate(self.matrices):
            logits = torch.matmul(F.softplus(matrix[c : c + 1]), logits) + self.biases[i][c : c + 1]
            if i < len(self.factors):
                logits = logits + torch.tanh(self.factors[i][c : c + 1]) * torch.tanh(logits)
        return logits
