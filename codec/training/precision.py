"""Training-time arithmetic: bf16 autocast of the transforms and channels-last memory layout.

Why: a faster step is the cheapest training time there is (issue 23). On a CPU with AVX-512 BF16 / AMX
oneDNN runs bf16 convolutions on NHWC tensors fastest; neither change alone gained as much in the
photo recipe's loop (benchmarks/train_speed.py, BENCHMARKS.md "Training speed").
Only the transforms' convolutions change: the model hands the density, the rate term, the loss and
the optimizer float32 tensors (models/base.py `Autoencoder.network`), GDN's normalizer stays float32
(models/gdn.py), and export rebuilds a float32, contiguous model from the checkpoint's weights, so
the ONNX graphs and the runtime never see bf16.

Both settings are training options recorded in the checkpoint (and, through it, the manifest's
training stages); a resumed run keeps the checkpoint's settings unless the command names others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .models import Autoencoder
from .options import PRECISIONS  # torch-free, for the CLI


@dataclass(frozen=True)
class Precision:
    precision: str = "fp32"  # "fp32" | "bf16": the transforms' convolutions under autocast
    channels_last: bool = False  # NHWC layout for 2-D families' weights and batches

    def summary(self) -> dict[str, Any]:
        """What the checkpoint's options and the manifest's training block record."""
        return {"precision": self.precision, "channels_last": self.channels_last}


FP32 = Precision()  # what every checkpoint from before these options trained with
# family -> the measured fastest setting at equal quality (benchmarks/train_speed.py, BENCHMARKS.md "Training
# speed"): the photo recipe's step is fastest in bf16 channels-last (median 1.3x fp32 on a shared machine, 2.0x
# over 60-step runs), validation within seed noise. Other families are unmeasured and stay FP32.
DEFAULTS: dict[str, Precision] = {"gdn2d": Precision("bf16", True), "hyper2d": Precision("bf16", True)}


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware (AVX-512 BF16 / AMX, or a bf16 GPU): elsewhere it is emulated
    and slower than fp32, so a family's bf16 default falls back to fp32 there."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve(precision: str | None, channels_last: bool | None, saved: dict[str, Any] | None = None,
            family: str = "", device: torch.device | None = None) -> Precision:
    """The settings a run trains with: the command's, else a resumed checkpoint's, else the family's default
    (its bf16 only where ``device`` has native bf16).

    ``saved`` is a resumed checkpoint's options; one without these keys predates them and trained FP32."""
    if saved is None:
        base = DEFAULTS.get(family, FP32)
        if base.precision == "bf16" and device is not None and not native_bf16(device):
            base = Precision(FP32.precision, base.channels_last)
    else:
        base = Precision(saved.get("precision") or FP32.precision,
                         bool(saved.get("channels_last", FP32.channels_last)))
    p = precision or base.precision
    if p not in PRECISIONS:
        raise ValueError(f"precision {p!r} is not one of {', '.join(PRECISIONS)}")
    return Precision(p, base.channels_last if channels_last is None else bool(channels_last))


def apply(model: Autoencoder, setting: Precision, device: torch.device) -> None:
    """Put ``model`` (already on ``device``) in the setting's arithmetic; a no-op for fp32 contiguous."""
    if setting.channels_last:
        if model.spatial_dims != 2:
            raise ValueError(f"--channels-last applies to 2-D convolutional families, not {model.family!r} "
                             f"({model.spatial_dims}-D samples)")
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format
    if setting.precision == "bf16":
        if device.type == "cpu" and not torch.backends.mkldnn.is_available():
            raise ValueError("--precision bf16 needs torch's oneDNN CPU backend, which this torch build lacks")
        model.compute_dtype = torch.bfloat16
    else:
        model.compute_dtype = None


def batch_layout(xb: torch.Tensor, setting: Precision) -> torch.Tensor:
    """A training batch in the layout the model's weights use."""
    return xb.contiguous(memory_format=torch.channels_last) if setting.channels_last else xb
