"""Fully convolutional autoencoder shared by the 1-D and 2-D families.

Stride-2 conv stages (conv + activation, no GDN so the ONNX export stays plain) shrink the input
by s = 2**stages, each optionally followed by `blocks` residual blocks at that resolution; any size
is accepted because the encoder pads to a multiple of s (edge replication, so the border carries no
artificial step) and the decoder's output is cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Autoencoder, latent_extent, make_activation, make_output_activation
from .config import ModelConfig


def check_conv_config(model: ConvAutoencoder, config: ModelConfig) -> int:
    """What every convolutional family needs from its config, with errors that name the fix; the
    (fixed) channel count."""
    ndim = len(config.sample_shape) - 1
    c_in = config.sample_shape[0]
    if ndim != model.ndim or c_in is None:
        axes = ", ".join("L" if model.ndim == 1 else "HW"[i] for i in range(model.ndim))
        raise ValueError(
            f"{model.family} samples are (channels, {axes}) with a fixed channel count, "
            f"got sample_shape {config.sample_shape}"
        )
    if not config.layers:
        raise ValueError(f"{model.family} needs at least one stage in layers (channels per stride-2 stage)")
    k = config.kernel_size
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be odd so stride-2 stages halve sizes exactly, got {k}")
    return c_in


class ResidualBlock(nn.Module):
    """x + conv(act(conv(x))): deepens a stage without moving its resolution; exports as plain ONNX."""

    def __init__(self, conv: type[nn.Module], channels: int, kernel_size: int, activation: str) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            conv(channels, channels, kernel_size, padding=pad), make_activation(activation),
            conv(channels, channels, kernel_size, padding=pad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvAutoencoder(Autoencoder):
    ndim: int = 2

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c_in = check_conv_config(self, config)
        k = config.kernel_size
        conv = nn.Conv1d if self.ndim == 1 else nn.Conv2d
        convt = nn.ConvTranspose1d if self.ndim == 1 else nn.ConvTranspose2d
        act = config.activation
        nb = config.blocks
        enc: list[nn.Module] = []
        prev = c_in
        for ch in config.layers:
            enc += [conv(prev, ch, k, stride=2, padding=k // 2), make_activation(act)]
            enc += [ResidualBlock(conv, ch, k, act) for _ in range(nb)]
            prev = ch
        enc.append(conv(prev, self.encoder_channels, k, stride=1, padding=k // 2))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [
            conv(config.code_size, config.layers[-1], k, stride=1, padding=k // 2),
            make_activation(act),
        ]
        dec += [ResidualBlock(conv, config.layers[-1], k, act) for _ in range(nb)]
        outs = [*reversed(config.layers[:-1]), c_in]
        prev = config.layers[-1]
        for i, ch in enumerate(outs):
            dec.append(convt(prev, ch, k, stride=2, padding=k // 2, output_padding=1))
            last = i == len(outs) - 1
            dec.append(make_output_activation(config.resolved_output_activation) if last else make_activation(act))
            if not last:
                dec += [ResidualBlock(conv, ch, k, act) for _ in range(nb)]
            prev = ch
        self.decoder = nn.Sequential(*dec)

    @property
    def stride(self) -> int:
        return 2 ** len(self.config.layers)

    def latent_shape(self) -> list[int | None]:
        return [self.config.code_size, *(latent_extent(n, self.stride) for n in self.config.sample_shape[1:])]

    def encode_params(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        pads: list[int] = []
        for n in reversed(x.shape[2:]):
            pads += [0, (-n) % s]
        return self.network(self.encoder, F.pad(x, pads, mode="replicate"))

    def decode_padded(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.network(self.decoder, y_hat)
