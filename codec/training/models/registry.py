"""The one table of autoencoder families: a config's "family" picks the class, nothing else does."""

from __future__ import annotations

import torch

from .base import Autoencoder
from .config import ModelConfig
from .conv1d import Conv1dAutoencoder
from .conv2d import Conv2dAutoencoder
from .dense import DenseAutoencoder
from .gdn import Gdn2dAutoencoder
from .hyper import HyperGdn2dAutoencoder

MODELS: dict[str, type[Autoencoder]] = {
    "dense": DenseAutoencoder,
    "conv2d": Conv2dAutoencoder,
    "conv1d": Conv1dAutoencoder,
    "gdn2d": Gdn2dAutoencoder,
    "hyper2d": HyperGdn2dAutoencoder,
}


def build_model(config: ModelConfig) -> Autoencoder:
    """Same config (seed included) -> same initial weights, so a config alone rebuilds a model."""
    try:
        cls = MODELS[config.family]
    except KeyError:
        raise ValueError(f"unknown model family {config.family!r}; known: {sorted(MODELS)}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return cls(config)
