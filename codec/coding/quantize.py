"""Continuous latents <-> the integer symbols the entropy coder and the decoder graph agree on.

The quantizer is deliberately trivial (round half to even, numpy ``rint``) because the bundle
contract fixes it: the density in the manifest was evaluated on exactly these integer bins and
decoder.onnx was trained on ``float(round(y))``. Anything cleverer here would silently break that
agreement.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize(y: np.ndarray) -> np.ndarray:
    """Latent floats -> int32 symbols (round half to even). Refuses NaN/Inf or values outside int32,
    which only a broken encoder graph or a wrong input domain produces."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiu":
        raise InputError(f"latents must be numeric, got dtype {y.dtype}")
    if y.size == 0:
        return y.astype(np.int32)
    # two reductions instead of full-size temporaries: NaN and Inf both surface in min / max, and
    # rint is monotone, so the range check on rint(min) / rint(max) covers every element
    lo, hi = y.min(), y.max()
    if y.dtype.kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError("latents contain NaN or Inf: the encoder output is broken (check the input domain)")
        lo, hi = np.rint(lo), np.rint(hi)
    if float(lo) < INT32_MIN or float(hi) > INT32_MAX:
        raise InputError(
            f"latents out of the int32 symbol range (min {lo}, max {hi}): "
            "the encoder output is not a sane latent (check normalization of the input)"
        )
    if y.dtype.kind == "f":
        # rint in the input's own precision: every float32 rint is an exact integer, so this is
        # the value float64 rounding gave, without the float64 copy
        return np.rint(y).astype(np.int32)
    return y.astype(np.int32)


def dequantize(symbols: np.ndarray) -> np.ndarray:
    """int32 symbols -> the float32 values decoder.onnx consumes."""
    return np.asarray(symbols).astype(np.float32)


def quantize_scaled(y: np.ndarray, step: float = 1.0, gain: np.ndarray | None = None) -> np.ndarray:
    """The symbols a quality level sends: round(y / step), or round(y * gain) for a learned level
    of a variable-rate bundle (gain float32, broadcast over (N, C, ...))."""
    if gain is not None:
        return quantize(y * gain)
    return quantize(y if step == 1.0 else y / np.float32(step))


def dequantize_scaled(symbols: np.ndarray, step: float = 1.0, inverse_gain: np.ndarray | None = None) -> np.ndarray:
    """The inverse map a receiver applies before decoder.onnx: symbols * step, or * inverse gain."""
    values = dequantize(symbols)
    if inverse_gain is not None:
        return values * inverse_gain
    return values if step == 1.0 else values * np.float32(step)


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
