"""A model's config: everything that rebuilds it exactly (stored in checkpoints and the manifest).

Kept apart from base.py so the variant checks (variants.py) and the networks (base.py and the
families) each import it, and nothing imports back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

from ..options import ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
from .variants import check_variant


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
        if any(a <= b for a, b in pairwise(self.rate_levels)):
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
        check_variant(self)

    @property
    def resolved_output_activation(self) -> str:
        if self.output_activation == "auto":
            return "sigmoid" if self.loss == "bce" else "none"
        return self.output_activation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; keys added later (rate_levels) take their defaults when absent."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        fields: dict[str, Any] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()}
        return cls(**fields)
