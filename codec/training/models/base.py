"""What every autoencoder family shares: the config that rebuilds it, and the quantize/rate step.

A family only supplies an encoder (x -> continuous latent y) and a decoder (integer-valued latent
-> x_hat, at the padded size); this base adds the factorized density and the training-time
quantization proxy, so train.py and export.py treat every family alike.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from .config import ModelConfig
from .density import FactorizedDensity

QUANTIZE_MODES = ("noise", "mixed", "round", "none")


class AutoencoderOutput(NamedTuple):
    x_hat: torch.Tensor  # (N, *sample_shape), cropped to the input size
    y: torch.Tensor  # continuous latent (N, *latent_shape)
    bits: torch.Tensor  # (N,) code length of the quantized latent under the density


def make_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "linear": nn.Identity}[
        name
    ]()


def make_output_activation(name: str) -> nn.Module:
    return nn.Sigmoid() if name == "sigmoid" else nn.Identity()


class Autoencoder(nn.Module):
    """encoder + decoder + per-channel factorized density.

    Quantization proxy: "noise" adds U(-0.5, 0.5) everywhere (Ballé et al.); "mixed" (the
    training default) decodes round(y) with a straight-through gradient but measures the rate on
    y + noise (Minnen & Singh 2020), so the decoder trains on exactly the integer latents the
    codec sends; "round" rounds with a straight-through gradient (evaluation, what the codec does),
    "none" feeds y unchanged (plain autoencoder); in that mode the density is still fitted, on
    detached noisy latents, so the bundle always gets pmfs.
    """

    family: ClassVar[str] = ""
    # training-time autocast of the transforms (training/precision.py); not config: export and the
    # runtime rebuild a float32 model from the weights
    compute_dtype: torch.dtype | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.density = FactorizedDensity(config.code_size)
        if config.rate_levels:
            # finer bins for the high-quality levels: gain ~ sqrt(reference weight / level weight)
            ref = math.exp(sum(math.log(r) for r in config.rate_levels) / len(config.rate_levels))
            init = torch.tensor([0.5 * math.log(ref / r) for r in config.rate_levels]).reshape(-1, 1)
            self.log_gain = nn.Parameter(init.repeat(1, config.code_size))
            self.log_inverse_gain = nn.Parameter(-init.repeat(1, config.code_size))

    # -- supplied by families -------------------------------------------------------------
    @property
    def stride(self) -> int:
        return 1

    def latent_shape(self) -> list[int | None]:
        """Latent shape without the batch axis, None where it follows a dynamic input dim."""
        raise NotImplementedError

    def encode_params(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder network's output: encoder_channels channels on axis 1 (VAE: mean, log-variance)."""
        raise NotImplementedError

    def decode_padded(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Decoder output before cropping (conv: spatial size = latent size * stride)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def network(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``net(x)``, under autocast to compute_dtype when set; always float32 out, so quantization,
        the density, the rate term and the loss stay float32 whatever the transforms ran in."""
        if self.compute_dtype is None:
            return net(x)
        with torch.autocast(x.device.type, dtype=self.compute_dtype):
            out = net(x)
        return out.float()

    @property
    def encoder_channels(self) -> int:
        """Channels the encoder network emits: a VAE also emits a log-variance per code channel."""
        return self.config.code_size * (2 if self.config.variant == "vae" else 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x -> the code the codec quantizes and sends (a VAE's posterior mean: encoder.onnx)."""
        params = self.encode_params(x)
        return params[:, : self.config.code_size] if self.config.variant == "vae" else params

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE only: (mean, log-variance) of q(z|x), each shaped like the code."""
        if self.config.variant != "vae":
            raise ValueError(f"encode_distribution needs variant 'vae', this model is {self.config.variant!r}")
        params = self.encode_params(x)
        c = self.config.code_size
        return params[:, :c], params[:, c:].clamp(-30.0, 20.0)

    @property
    def spatial_dims(self) -> int:
        return len(self.config.sample_shape) - 1 if self.family != "dense" else 0

    def decode(self, y_hat: torch.Tensor, out_size: tuple[int, ...] | None = None) -> torch.Tensor:
        x_hat = self.decode_padded(y_hat)
        if out_size is None or self.spatial_dims == 0:
            return x_hat
        index = (slice(None), slice(None)) + tuple(slice(0, int(n)) for n in out_size)
        return x_hat[index]

    def density_parameters(self) -> list[nn.Parameter]:
        return list(self.density.parameters())

    def warmup_parameters(self) -> list[nn.Parameter]:
        """What a warm start fits first on cached latents, the network frozen (training/warmstart.py)."""
        return self.density_parameters()

    def warmup_bits(self, y: torch.Tensor, level: torch.Tensor | None) -> torch.Tensor:
        """(N,) training-time code length of given latents y, at random noise: the warm-up's loss."""
        if level is None:
            return self.density.bits(self.quantize(y, "noise"))
        gain, _ = self.level_gains(level)
        rated = y * gain.detach() + torch.empty_like(y).uniform_(-0.5, 0.5)
        return self.density.bits(rated / gain.detach(), (1.0 / gain.detach()).expand_as(rated))

    def network_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.density.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def quantize(self, y: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "noise":
            return y + torch.empty_like(y).uniform_(-0.5, 0.5)
        if mode == "round":
            return y + (torch.round(y) - y).detach()
        if mode == "none":
            return y
        raise ValueError(f"quantize mode {mode!r} is not one of {QUANTIZE_MODES}")

    @property
    def levels(self) -> int:
        """Quality levels of a variable-rate model; 0 for a model trained at one rate."""
        return len(self.config.rate_levels)

    def level_gains(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain, inverse gain) for each sample's level (N,), shaped to broadcast over (N, C, ...)."""
        shape = (level.shape[0], self.config.code_size) + (1,) * self.spatial_dims
        return torch.exp(self.log_gain[level]).reshape(shape), torch.exp(self.log_inverse_gain[level]).reshape(shape)

    def level_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 (levels, C) gains and inverse gains, as the codec applies them."""
        with torch.no_grad():
            return (
                torch.exp(self.log_gain.double()).cpu().numpy(),
                torch.exp(self.log_inverse_gain.double()).cpu().numpy(),
            )

    def _forward_levels(self, x: torch.Tensor, y: torch.Tensor, mode: str, level: torch.Tensor) -> AutoencoderOutput:
        """Variable rate: symbols round(y * gain) decoded from symbols * inverse gain; the density
        stays over y, so a symbol's probability is its bin of width 1/gain (per channel)."""
        size = tuple(x.shape[2:]) if self.spatial_dims else None
        gain, inverse = self.level_gains(level)
        scaled = y * gain
        rounded = scaled + (torch.round(scaled) - scaled).detach()
        if mode == "mixed":
            x_hat = self.decode(rounded * inverse, size)
            rated = scaled + torch.empty_like(scaled).uniform_(-0.5, 0.5)
        elif mode in ("noise", "round"):
            rated = rounded if mode == "round" else scaled + torch.empty_like(scaled).uniform_(-0.5, 0.5)
            x_hat = self.decode(rated * inverse, size)
        else:
            raise ValueError(f"a variable-rate model quantizes with 'mixed', 'noise' or 'round', not {mode!r}")
        width = (1.0 / gain).expand_as(rated)
        return AutoencoderOutput(x_hat, y, self.density.bits(rated / gain, width))

    def forward(
        self, x: torch.Tensor, quantize: str | None = None, level: torch.Tensor | None = None
    ) -> AutoencoderOutput:
        mode = quantize or ("mixed" if self.training else "round")
        y = self.encode(x)
        if self.levels:
            if level is None:
                raise ValueError(f"this model has {self.levels} rate levels: pass level= (one index per sample)")
            return self._forward_levels(x, y, mode, level)
        size = tuple(x.shape[2:]) if self.spatial_dims else None
        if mode == "mixed":
            x_hat = self.decode(self.quantize(y, "round"), size)
            return AutoencoderOutput(x_hat, y, self.density.bits(self.quantize(y, "noise")))
        y_tilde = self.quantize(y, mode)
        x_hat = self.decode(y_tilde, size)
        if mode == "none":
            bits = self.density.bits(self.quantize(y.detach(), "noise" if self.training else "round"))
        else:
            bits = self.density.bits(y_tilde)
        return AutoencoderOutput(x_hat, y, bits)


def latent_extent(n: int | None, stride: int) -> int | None:
    return None if n is None else math.ceil(n / stride)
