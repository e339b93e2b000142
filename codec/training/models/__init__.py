"""Autoencoder families (torch; training and export only, never on the runtime path)."""

from .base import Autoencoder, AutoencoderOutput
from .config import ModelConfig
from .density import FactorizedDensity
from .registry import MODELS, build_model

__all__ = ["MODELS", "Autoencoder", "AutoencoderOutput", "FactorizedDensity", "ModelConfig", "build_model"]
