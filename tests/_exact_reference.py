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


def int64_flat_forward(spec: dict, arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """A flat network (dense and requant layers) on (N, C) integers, numpy's int64 matmul (no floats)."""
    h = np.clip(x.astype(np.int64), spec["input"]["lo"], spec["input"]["hi"])
    for layer in spec["layers"]:
        if layer["op"] == "dense":
            h = h @ arrays[layer["weight"]].astype(np.int64).T + arrays[layer["bias"]].astype(np.int64)
        elif layer["op"] == "requant":
            s = layer["shift"]
            h = np.clip(np.floor_divide(h * arrays[layer["multiplier"]].astype(np.int64) + (1 << s) // 2, 1 << s),
                        layer["lo"], layer["hi"])
        else:
            raise AssertionError(f"the flat reference does not know {layer['op']}")
    return h


def checkerboard_deltas(context: dict, arrays: dict[str, np.ndarray], anchors: np.ndarray, mean_code: np.ndarray,
                        scale_code: np.ndarray, level: int) -> np.ndarray:
    """codec/FORMAT.md's checkerboard step, element by element: for each non-anchor (b, i, j) the anchor
    values at the 12 offsets (di, dj), |di|, |dj| <= 2, di + dj odd (row-major), zero off the map."""
    b, m, h, w = anchors.shape
    taps = [(di, dj) for di in range(-2, 3) for dj in range(-2, 3) if (di + dj) % 2]
    limit = context["anchor"]["input"]["hi"]
    out = np.zeros((b, 2 * m, h, w), np.int64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                if (i + j) % 2 == 0:
                    continue
                v = []
                for di, dj in taps:
                    ii, jj = i + di, j + dj
                    inside = 0 <= ii < h and 0 <= jj < w
                    v.append(anchors[n, :, ii, jj] if inside else np.zeros(m, np.int64))
                feats = int64_flat_forward(context["anchor"], arrays, np.concatenate(v)[None])[0]
                x = np.concatenate([feats, np.clip(mean_code[n, :, i, j], -limit, limit), scale_code[n, :, i, j],
                                    [context["level_codes"][level]]])
                out[n, :, i, j] = int64_flat_forward(context["params"], arrays, x[None])[0]
    return out
