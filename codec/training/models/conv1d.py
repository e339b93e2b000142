"""Multichannel signal windows (ECG leads x samples) of any length: strided 1-D convolutions."""

from __future__ import annotations

from .conv import ConvAutoencoder


class Conv1dAutoencoder(ConvAutoencoder):
    family = "conv1d"
    ndim = 1
