"""Continuous latents <-> the integer symbols the entropy coder and the decoder graph agree on.

The quantizer is deliberately trivial (round half to even, numpy ``rint``) because the bundle
contract fixes it: the density in the manifest was evaluated on exactly these integer bins and
decoder.onnx was trained on ``float(round(y))``. Anything cleverer here would silently break that
agreement.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize(y: np.ndarray) -> np.ndarray:
    """Latent floats -> int32 symbols (round half to even). Refuses NaN/Inf or values outside int32,
    which only a broken encoder graph or a wrong input domain produces."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiu":
        raise InputError(f"latents must be numeric, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise InputError("latents contain NaN or Inf: the encoder output is broken (check the input domain)")
        r = np.rint(y.astype(np.float64, copy=False))
    else:
        r = y.astype(np.int64, copy=False)
    if r.size and (r.min() < INT32_MIN or r.max() > INT32_MAX):
        raise InputError(
            f"latents out of the int32 symbol range (min {r.min()}, max {r.max()}): "
            "the encoder output is not a sane latent (check normalization of the input)"
        )
    return r.astype(np.int32)


def dequantize(symbols: np.ndarray) -> np.ndarray:
    """int32 symbols -> the float32 values decoder.onnx consumes."""
    return np.asarray(symbols).astype(np.float32)


def channel_index(latent_shape: tuple[int, ...], channel_axis: int = 0, batch: int = 1) -> np.ndarray:
    """Channel of every latent element of ``batch`` samples, flattened in C order (frame-major).

    Dense latents (shape (C,)) have each dim as its own channel; conv latents (C, h, w) or (C, l)
    share one table per channel across positions. Both are "the index along channel_axis", so one
    rule covers every family.
    """
    shape = tuple(int(d) for d in latent_shape)
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"latent shape must be non-empty with positive dims, got {shape}")
    if not -len(shape) <= channel_axis < len(shape):
        raise InputError(f"channel_axis {channel_axis} out of range for latent shape {shape}")
    if batch < 0:
        raise InputError(f"batch must be >= 0, got {batch}")
    axis = channel_axis % len(shape)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    per_sample = np.broadcast_to(np.arange(shape[axis], dtype=np.int32).reshape(view), shape).ravel()
    return np.tile(per_sample, batch)
