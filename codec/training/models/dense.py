"""Fully connected autoencoder (Hinton & Salakhutdinov 2006 style): stacked encoder, mirrored decoder.

For small fixed-size samples (MNIST digits, feature vectors) this is the cheapest family and the
one with the smallest latent; samples are flattened inside the graph so callers keep their
channel-first shape.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from .base import Autoencoder, make_activation, make_output_activation
from .config import ModelConfig


class DenseAutoencoder(Autoencoder):
    family = "dense"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if any(d is None for d in config.sample_shape) or not config.sample_shape:
            raise ValueError(f"dense models need a fixed sample_shape, got {config.sample_shape}")
        if config.blocks:
            raise ValueError(
                f"blocks (residual conv blocks) apply to conv families only, got {config.blocks} for dense"
            )
        self.sample_shape = tuple(int(d) for d in config.sample_shape)  # type: ignore[arg-type]
        n_in = math.prod(self.sample_shape)
        widths = [n_in, *config.layers]
        enc: list[nn.Module] = []
        for a, b in pairwise(widths):
            enc += [nn.Linear(a, b), make_activation(config.activation)]
        enc.append(nn.Linear(widths[-1], self.encoder_channels))
        self.encoder = nn.Sequential(*enc)
        back = [config.code_size, *reversed(config.layers)]
        dec: list[nn.Module] = []
        for a, b in pairwise(back):
            dec += [nn.Linear(a, b), make_activation(config.activation)]
        dec += [nn.Linear(back[-1], n_in), make_output_activation(config.resolved_output_activation)]
        self.decoder = nn.Sequential(*dec)

    def latent_shape(self) -> list[int | None]:
        return [self.config.code_size]

    def encode_params(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(self.encoder, x.flatten(1))

    def decode_padded(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.network(self.decoder, y_hat).reshape(-1, *self.sample_shape)
