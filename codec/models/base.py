"""What every autoencoder family shares: the config that rebuilds it, and the quantize/rate step.

A family only supplies an encoder (x -> continuous latent y) and a decoder (integer-valued latent
-> x_hat, at the padded size); this base adds the factorized density and the training-time
quantization proxy, so train.py and export.py treat every family alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from .density import FactorizedDensity

ACTIVATIONS = ("relu", "gelu", "leaky_relu", "tanh", "linear")
LOSSES = ("mse", "bce")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "none")
QUANTIZE_MODES = ("noise", "mixed", "round", "none")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model exactly (stored in checkpoints and the manifest).

    sample_shape is channel-first with None for dynamic dims (conv families: spatial dims).
    code_size: dense -> latent dimensions; conv -> latent channels. layers: dense -> nodes per
    encoder layer (Hinton's 784-1000-500-250-30 is layers [1000, 500, 250], code_size 30);
    conv -> channels per stride-2 stage.
    """

    family: str
    sample_shape: list[int | None]
    code_size: int
    layers: list[int] = field(default_factory=list)
    activation: str = "relu"
    loss: str = "mse"
    kernel_size: int = 5
    # conv: residual blocks (conv, activation, conv, plus the input) after every stride-2 stage of
    # the encoder and the decoder: depth and receptive field without shrinking the latent further
    blocks: int = 0
    output_activation: str = "auto"
    seed: int = 0
    # The autoencoder variant and its parameters (codec/models/variants.py): recorded here so a
    # checkpoint, the manifest's "config" and build_model all keep them.
    variant: str = "plain"
    corruption: str = ""  # denoising: "mask:P" or "gaussian:SIGMA"
    sparsity: str = ""  # sparse: "l1:WEIGHT" or "kl:TARGET[:WEIGHT]"
    contractive_weight: float = 0.0  # contractive: weight of ||d code / d input||_F^2
    beta: float = 1.0  # vae: weight of KL(q(z|x) || N(0, I)) in nats
    # Variable rate: one rate weight per quality level, cheapest first. Each level learns a gain per
    # latent channel that scales the latent before rounding and an inverse gain applied before the
    # decoder (Cui et al. 2021), so one network serves every level. Empty: one rate, no gains.
    rate_levels: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sample_shape = [None if d is None else int(d) for d in self.sample_shape]
        self.layers = [int(n) for n in self.layers]
        self.code_size = int(self.code_size)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r} is not one of {LOSSES}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation {self.output_activation!r} is not one of {OUTPUT_ACTIVATIONS}")
        if self.loss == "bce" and self.output_activation == "none":
            raise ValueError("loss 'bce' needs outputs in [0, 1]: use output_activation 'sigmoid' or 'auto'")
        self.rate_levels = [float(r) for r in self.rate_levels]
        if any(not r > 0 for r in self.rate_levels):
            raise ValueError(f"rate_levels must all be > 0, got {self.rate_levels}")
        if any(a <= b for a, b in zip(self.rate_levels, self.rate_levels[1:])):
            raise ValueError(f"rate_levels go from the cheapest level (largest weight) down, got {self.rate_levels}")
        if len(self.rate_levels) == 1:
            raise ValueError("rate_levels needs two levels or more; one rate is plain --rate-weight")
        self.blocks = int(self.blocks)
        if self.blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {self.blocks}")
        if self.code_size < 1 or any(n < 1 for n in self.layers):
            raise ValueError(f"code_size and layers must be positive, got {self.code_size} and {self.layers}")
        if self.activation == "linear" and self.resolved_output_activation != "none":
            raise ValueError("a linear autoencoder needs output_activation 'none' (and loss 'mse')")
        from .variants import check_variant  # variants imports nothing from here at module level

        check_variant(self)

    @property
    def resolved_output_activation(self) -> str:
        if self.output_activation == "auto":
            return "sigmoid" if self.loss == "bce" else "none"
        return self.output_activation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of to_dict; keys added later (rate_levels) take their defaults when absent."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})


class AutoencoderOutput(NamedTuple):
    x_hat: torch.Tensor  # (N, *sample_shape), cropped to the input size
    y: torch.Tensor  # continuous latent (N, *latent_shape)
    bits: torch.Tensor  # (N,) code length of the quantized latent under the density


def make_activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "linear": nn.Identity}[name]()


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
            return (torch.exp(self.log_gain.double()).cpu().numpy(), torch.exp(self.log_inverse_gain.double()).cpu().numpy())

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

    def forward(self, x: torch.Tensor, quantize: str | None = None, level: torch.Tensor | None = None) -> AutoencoderOutput:
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
