"""Ballé et al.'s photo transform: 5x5 stride-2 convolutions with GDN / inverse GDN between them.

GDN (generalized divisive normalization, Ballé, Laparra, Simoncelli 2016) divides each channel by
a learned norm of all channels at that pixel: y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2).
It Gaussianizes natural-image responses far better than a pointwise nonlinearity, which is why
the factorized-prior codecs that beat JPEG (Ballé et al. 2017/2018) use it. The decoder applies
the inverse (multiplies by the norm). Both export as plain ONNX (Mul, Conv 1x1, Sqrt, Div), so
receivers need nothing beyond onnxruntime.

Layout ("gdn2d", 4 downsamplings for layers [N, N, N] and code_size M):
  encoder: conv(C->N, s2) GDN conv(N->N, s2) GDN conv(N->N, s2) GDN conv(N->M, s2)
  decoder: deconv(M->N, s2) IGDN deconv(N->N, s2) IGDN deconv(N->N, s2) IGDN deconv(N->C, s2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import make_output_activation
from .config import ModelConfig
from .conv import ConvAutoencoder, check_conv_config

# Ballé's reparameterization: beta and gamma are stored as square roots offset by a pedestal,
# which keeps them non-negative and their gradients well scaled near zero (CompressAI does the same).
_REPARAM_OFFSET = 2.0**-18
_PEDESTAL = _REPARAM_OFFSET**2
_BETA_MIN = 1e-6


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it would lift x off the bound; a plain
    clamp would freeze every gamma entry that touches the bound (most of them start there)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


def _non_negative(param: torch.Tensor, minimum: float) -> torch.Tensor:
    bound = (minimum + _PEDESTAL) ** 0.5
    if torch.is_grad_enabled() and param.requires_grad:
        bounded = _LowerBound.apply(param, bound)
    else:  # export and inference: a plain clamp traces to ONNX
        bounded = param.clamp_min(bound)
    return bounded * bounded - _PEDESTAL


class GDN(nn.Module):
    """GDN over channel axis 1 of a 2-D feature map; inverse=True is IGDN (the decoder's)."""

    def __init__(self, channels: int, inverse: bool = False, gamma_init: float = 0.1) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + _PEDESTAL))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + _PEDESTAL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # bf16 training (training/precision.py): the normalizer sums 128 squares and divides by
            # their root, where bf16's 8-bit mantissa costs accuracy for little time; it stays float32
            with torch.autocast(x.device.type, enabled=False):
                return self._normalize(x.float())
        return self._normalize(x)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        beta = _non_negative(self.beta, _BETA_MIN)
        gamma = _non_negative(self.gamma, 0.0).reshape(c, c, 1, 1)
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm


class Gdn2dAutoencoder(ConvAutoencoder):
    """Images of any size; stride 2**(len(layers)+1): the latent itself comes from a stride-2 conv."""

    family = "gdn2d"
    ndim = 2

    def __init__(self, config: ModelConfig) -> None:
        # the conv families' checks (channel-first shape, odd kernel, one stage at least), not their layers
        super(ConvAutoencoder, self).__init__(config)
        c_in = check_conv_config(self, config)
        if config.blocks:
            raise ValueError("gdn2d takes no --blocks: GDN stages are its depth")
        if config.activation != "relu":
            raise ValueError("gdn2d's nonlinearity is GDN; leave --activation at its default")
        k, pad = config.kernel_size, config.kernel_size // 2
        enc: list[nn.Module] = []
        prev = c_in
        for ch in config.layers:
            enc += [nn.Conv2d(prev, ch, k, stride=2, padding=pad), GDN(ch)]
            prev = ch
        enc.append(nn.Conv2d(prev, self.encoder_channels, k, stride=2, padding=pad))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        prev = config.code_size
        for ch in reversed(config.layers):
            dec += [nn.ConvTranspose2d(prev, ch, k, stride=2, padding=pad, output_padding=1), GDN(ch, inverse=True)]
            prev = ch
        dec += [nn.ConvTranspose2d(prev, c_in, k, stride=2, padding=pad, output_padding=1),
                make_output_activation(config.resolved_output_activation)]
        self.decoder = nn.Sequential(*dec)

    @property
    def stride(self) -> int:
        return 2 ** (len(self.config.layers) + 1)
