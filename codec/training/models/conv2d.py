"""Images (grayscale or RGB) of any height and width: strided 2-D convolutions."""

from __future__ import annotations

from .conv import ConvAutoencoder


class Conv2dAutoencoder(ConvAutoencoder):
    family = "conv2d"
    ndim = 2
