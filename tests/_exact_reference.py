"""An independent evaluation of a stored channels_first_2d exact network (codec/FORMAT.md, "Exact
prediction"): channels first throughout, each conv2d a sum over taps of int64 einsums (numpy's
integer loops: no BLAS, no floats), the inverse GDN's square root by math.isqrt on Python integers.
The runtime (codec/coding/exact*.py) shares none of this code."""

from __future__ import annotations

import io
import json
import math

import numpy as np


def read_exact(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The spec and the named arrays of an exact.npz / hyper.npz, read straight from its bytes."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return json.loads(bytes(z["spec"]).decode()), {k: z[k] for k in z.files if k != "spec"}


def int64_forward(spec: dict, arrays: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """The network on (B, C, H, W) integer maps -> (B, C_out, H_out, W_out), uncropped."""
    h = np.clip(z.astype(np.int64), spec["input"]["lo"], spec["input"]["hi"])
    for layer in spec["layers"]:
        op = layer["op"]
        if op == "dilate2d":
            s = layer["stride"]
            up = np.zeros((*h.shape[:2], (h.shape[2] - 1) * s + 1, (h.shape[3] - 1) * s + 1), np.int64)
            up[:, :, ::s, ::s] = h
            h = up
        elif op == "conv2d":
            w = arrays[layer["weight"]].astype(np.int64)
            hp = np.pad(h, ((0, 0), (0, 0), (layer["pad_top"], layer["pad_bottom"]),
                            (layer["pad_left"], layer["pad_right"])))
            kh, kw = w.shape[2:]
            ho, wo = hp.shape[2] - kh + 1, hp.shape[3] - kw + 1
            acc = np.zeros((h.shape[0], w.shape[0], ho, wo), np.int64)
            for i in range(kh):
                for j in range(kw):
                    acc += np.einsum("nchw,oc->nohw", hp[:, :, i : i + ho, j : j + wo], w[:, :, i, j])
            h = acc + arrays[layer["bias"]].astype(np.int64)[None, :, None, None]
        elif op == "requant":
            s = layer["shift"]
            m = arrays[layer["multiplier"]].astype(np.int64)[None, :, None, None]
            h = np.clip(np.floor_divide(h * m + (1 << s) // 2, 1 << s), layer["lo"], layer["hi"])
        elif op == "igdn":
            g, b = arrays[layer["gamma"]].astype(object), arrays[layer["beta"]].astype(object)
            acc = np.einsum("nchw,oc->nohw", (h * h).astype(object), g) + b[None, :, None, None]
            y = h.astype(object) * np.vectorize(math.isqrt, otypes=[object])(acc)
            p, s = layer["pre_shift"], layer["shift"]
            y = (y + (1 << p) // 2) // (1 << p)
            m = arrays[layer["multiplier"]].astype(object)[None, :, None, None]
            h = np.clip(((y * m + (1 << s) // 2) // (1 << s)).astype(np.int64), layer["lo"], layer["hi"])
        else:
            raise AssertionError(f"the reference does not know {op}")
    return h
