"""The exact prediction: an integer network that every machine evaluates to the same integers.

A residual is taken against the receiver's prediction, so that prediction must not depend on the
machine: a float decoder rounds differently under another SIMD width, thread count or BLAS, and a
value near a .5 boundary then moves by one (issue 24: 7 of 1.6 M MNIST values between onnxruntime
and the onnx reference evaluator). The same holds for a hyperprior's scales, which pick the entropy
coder's tables (exact_hyper.py). This network has integer weights, integer biases, integer
activations, and a handful of operations (codec/FORMAT.md, "Exact prediction"; the kinds live in
exact_layers.py):

  * ``dense`` / ``conv1d`` / ``conv2d``: acc = sum of integer products + bias (convolutions with
    zero padding; ``dilate`` / ``dilate2d`` insert zeros, so a transposed convolution is a dilation
    then a convolution with the flipped kernel);
  * ``requant``: u = clip((acc * m_j + 2**(s-1)) >> s, lo, hi) per output channel j: an integer
    multiply and a rounding right shift (round half up; ``>>`` floors, so it is defined on
    negatives too), the integer form of ``acc * scale_j``; with lo = 0 it is also a ReLU;
  * ``lookup``: x' = table[u - lo]: any pointwise activation (GELU, ReLU, sigmoid, tanh...) as an
    integer table computed once at quantization time and stored, so no transcendental function is
    ever evaluated at decode time;
  * ``save`` / ``add``: skip connections, both operands on one integer grid.

Why float64 matmuls: BLAS evaluates the weighted layers fast, in any summation order and blocking,
on any thread count; for integer-valued float64 operands every partial sum is an integer, and every
integer below 2**53 is exact in float64, so any order gives the same exact sum PROVIDED every
|partial sum| < 2**53. ``IntegerNetwork.__post_init__`` proves that from the stored numbers
before anything runs: per output channel, sum_i |W_ji| * max|x_i| + |b_j| bounds every partial sum
(the input is clipped to its declared range first, and every later activation is bounded by its
clip or its table), and a network that cannot guarantee it is refused (``BundleError``). numpy's
int64 matmul would be exact too, but it has no BLAS path (about 20x slower here); the int64
arithmetic is kept for ``requant``, whose products are proved below 2**63 the same way.

The output is the integer prediction itself (already clipped to its range), so no float rounding
boundary exists anywhere. Layer kinds are a closed list checked at load; a new kind adds a
dataclass to exact_layers.py (OP, ARRAYS, SCALARS, bound, __call__) and a FORMAT.md row.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .exact_gdn import Igdn
from .exact_layers import (
    FLOAT64_EXACT,
    INT64_SAFE,
    LAYOUT_OF,
    MAX_TABLE,
    WEIGHTED,
    Add,
    Conv1d,
    Conv2d,
    Dense,
    Dilate,
    Dilate2d,
    Lookup,
    Requant,
    Save,
    TransposedConv1d,
    TransposedConv2d,
    Weighted,
    rounding_shift,
)
from .exact_layers import KINDS as _BASE_KINDS
from .exact_layers import Layer as _BaseLayer

__all__ = ["CONV_CHUNK", "EXACT_VERSION", "FLOAT64_EXACT", "INT64_SAFE", "LAYOUTS", "MAP_PASS_VALUES", "MAX_TABLE",
           "Add", "Conv1d", "Conv2d", "Dense", "Dilate", "Dilate2d", "Igdn", "IntegerNetwork", "Layer", "Lookup",
           "Requant", "Save", "read_npz", "rounding_shift", "write_npz"]

EXACT_VERSION = 1
LAYOUTS = ("flat", "channels_first", "channels_first_2d")
CONV_CHUNK = 32  # frames per pass of a channels_first network (ECG: ~70 MB of float64 activations)
MAP_PASS_VALUES = 1 << 24  # a 2-D pass takes as many images as keep its largest activation under this
Layer = _BaseLayer | Igdn
KINDS: dict[str, type] = {**_BASE_KINDS, Igdn.OP: Igdn}


def _integers(x: np.ndarray) -> np.ndarray:
    """Integer-valued input (any numeric dtype) as int64; a fractional value is refused."""
    if x.dtype.kind == "f":
        if x.size and not np.array_equal(x, np.rint(x)):
            raise InputError("the exact network takes integer latents (an integer latent step); this level's "
                             "latents are not integers")
        x = np.rint(x)
    return x.astype(np.int64)


@dataclass(frozen=True, eq=False)
class IntegerNetwork:
    """Integer latents -> integer predictions in [out_lo, out_hi].

    ``layout`` "flat": latents (N, n_in) -> (N, *out_shape). "channels_first": latents (N, C, L)
    -> (N, C_out, L_out) cropped to the caller's out_size (out_shape holds None for the length).
    "channels_first_2d": maps (N, C, H, W) -> (N, C_out, H_out, W_out) cropped to the caller's
    (h, w) (out_shape (C_out, None, None); ``predict_maps``). Layers see channels last. The input
    is clipped to [in_lo, in_hi] (both sides clip alike, so an out-of-range latent still predicts
    identically); the layers end in a requant clipped to the output range. The constructor proves
    the 2**53 / 2**62 bounds and refuses otherwise."""

    in_lo: int
    in_hi: int
    layers: tuple[Layer, ...]
    out_shape: tuple[int | None, ...]
    out_lo: int
    out_hi: int
    layout: str = "flat"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise BundleError(f"an exact network has a layout in {LAYOUTS}, not {self.layout!r}")
        first = next((layer for layer in self.layers if isinstance(layer, WEIGHTED)), None)
        lead = self.layers[: self.layers.index(first)] if first is not None else ()
        if first is None or not all(isinstance(layer, (Dilate, Dilate2d)) for layer in lead):
            raise BundleError("an exact network starts with a weighted layer (dense, conv1d, conv2d), only "
                              "dilations before it")
        last = self.layers[-1]
        if not isinstance(last, Requant) or (last.lo, last.hi) != (self.out_lo, self.out_hi):
            raise BundleError("an exact network ends in a requant clipped to its output range")
        maps = self.layout != "flat"
        if maps and (len(self.out_shape) != (3 if self.layout == "channels_first_2d" else 2)
                     or any(d is not None for d in self.out_shape[1:])):
            raise BundleError(f"a {self.layout} exact network's output shape is (channels, None...), got "
                              f"{self.out_shape}")
        channels = self.out_shape[0] if maps else math.prod(int(d or 0) for d in self.out_shape)
        if channels != last.multiplier.size:
            raise BundleError(f"exact network output shape {self.out_shape} does not match its "
                              f"{last.multiplier.size} output channels")
        bound = [max(abs(int(self.in_lo)), abs(int(self.in_hi)))] * first.in_channels
        saved: dict[int, list[int]] = {}
        prev: Layer | None = None
        largest = 0
        area, growth = 1, first.in_channels  # 2-D: values per input pixel, at the widest activation
        for layer in self.layers:
            if isinstance(layer, Lookup) and not (isinstance(prev, Requant) and prev.lo == layer.lo
                                                  and prev.hi == layer.lo + layer.table.size - 1):
                raise BundleError("an exact lookup must follow a requant clipped to exactly its table's domain")
            if isinstance(layer, Requant) and not isinstance(prev, WEIGHTED):
                raise BundleError("an exact requant must follow a dense, conv1d or conv2d layer")
            need = LAYOUT_OF.get(type(layer))
            if need is not None and need != self.layout:
                raise BundleError(f"exact {layer.OP} layers need the {need} layout, not {self.layout}")
            if isinstance(layer, Save):
                saved[layer.slot] = bound
            elif isinstance(layer, Add):
                other = saved.get(layer.slot)
                if other is None or len(other) != len(bound):
                    raise BundleError(f"exact add names slot {layer.slot}, which holds no tensor of its width")
                bound = [a + b for a, b in zip(bound, other, strict=True)]
            else:
                bound = layer.bound(bound)
            if isinstance(layer, WEIGHTED):
                largest = max(largest, max(bound))
            if isinstance(layer, Add) and max(bound) >= FLOAT64_EXACT:
                raise BundleError("exact add can reach 2**53")
            if isinstance(layer, Dilate2d):
                area *= layer.stride**2
            growth = max(growth, area * len(bound))
            prev = layer
        object.__setattr__(self, "max_partial_sum", largest)  # the proof's worst case, reported by the quantizer
        object.__setattr__(self, "_growth", growth)
        # what runs: each dilate(2d) right before a conv1d (conv2d) evaluated as one transposed convolution
        plan: list[Layer | TransposedConv1d | TransposedConv2d] = []
        for layer in self.layers:
            if isinstance(layer, Conv2d) and plan and isinstance(plan[-1], Dilate2d):
                plan[-1] = TransposedConv2d(plan[-1], layer)
            elif isinstance(layer, Conv1d) and plan and isinstance(plan[-1], Dilate):
                plan[-1] = TransposedConv1d(plan[-1], layer)
            else:
                plan.append(layer)
        object.__setattr__(self, "_plan", tuple(plan))

    @property
    def n_in(self) -> int:
        first: Weighted = next(layer for layer in self.layers if isinstance(layer, WEIGHTED))
        return first.in_channels

    def _run(self, h: np.ndarray) -> np.ndarray:
        """The layers on a channels-last int64 tensor already clipped to the input range."""
        saved: dict[int, np.ndarray] = {}
        for layer in self._plan:  # type: ignore[attr-defined]
            if isinstance(layer, Save):
                saved[layer.slot] = h
            elif isinstance(layer, Add):
                h = h + saved[layer.slot]
            else:
                h = layer(h)
        return h

    def predict(self, latents: np.ndarray, out_size: int | None = None) -> np.ndarray:
        """Integer-valued latents (any numeric dtype) -> int32 predictions: (N, n_in) -> (N, *out_shape),
        or (N, C, L) -> (N, C_out, out_size or the full length)."""
        x = np.asarray(latents)
        if self.layout == "channels_first_2d":
            raise InputError("a 2-D exact network predicts maps: call predict_maps")
        flat = self.layout == "flat"
        if (x.ndim != 2 if flat else x.ndim != 3) or x.shape[1] != self.n_in:
            want = f"(N, {self.n_in})" if flat else f"(N, {self.n_in}, L)"
            raise InputError(f"the exact network takes latents shaped {want}, got {x.shape}")
        x = _integers(x)
        if not flat and x.shape[0] > CONV_CHUNK:  # bounded memory; exact, so chunking changes nothing
            return np.concatenate([self.predict(x[i : i + CONV_CHUNK], out_size)
                                   for i in range(0, x.shape[0], CONV_CHUNK)])
        h = np.clip(x, self.in_lo, self.in_hi)
        h = self._run(h if flat else np.ascontiguousarray(h.transpose(0, 2, 1)))
        if flat:
            return h.astype(np.int32).reshape(x.shape[0], *self.out_shape)
        if out_size is not None and not 1 <= out_size <= h.shape[1]:
            raise InputError(f"out_size {out_size} exceeds the {h.shape[1]} samples this latent predicts")
        return np.ascontiguousarray(h[:, :out_size].transpose(0, 2, 1), dtype=np.int32)

    def predict_maps(self, maps: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Integer-valued maps (N, n_in, H, W) -> int64 (N, C_out, h, w): the output's top-left
        (h, w) = size (default: all of it). Passes of whole images keep memory bounded."""
        if self.layout != "channels_first_2d":
            raise InputError(f"a {self.layout} exact network predicts with predict, not predict_maps")
        x = np.asarray(maps)
        if x.ndim != 4 or x.shape[1] != self.n_in or min(x.shape[2:], default=0) < 1:
            raise InputError(f"the exact network takes maps shaped (N, {self.n_in}, H, W), got {x.shape}")
        x = _integers(x)
        per_pass = max(1, MAP_PASS_VALUES // (x.shape[2] * x.shape[3] * self._growth))  # type: ignore[attr-defined]
        parts = []
        for i in range(0, max(x.shape[0], 1), per_pass):
            h = np.clip(x[i : i + per_pass], self.in_lo, self.in_hi)
            h = self._run(np.ascontiguousarray(h.transpose(0, 2, 3, 1)))
            top = h.shape[1:3]
            hh, ww = size if size is not None else top
            if not (1 <= hh <= top[0] and 1 <= ww <= top[1]):
                raise InputError(f"size {(hh, ww)} exceeds the {top[0]}x{top[1]} map this input predicts")
            parts.append(np.ascontiguousarray(h[:, :hh, :ww].transpose(0, 3, 1, 2)))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def predict_frames(self, latent_values: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
        """A batch of latent values as the decoder takes them (N, *latent_shape) -> the prediction
        (N, *sample_shape) int32: what a residual is taken against."""
        v = np.asarray(latent_values)
        if self.layout == "channels_first_2d":
            return self.predict_maps(v, (int(sample_shape[1]), int(sample_shape[2]))).astype(np.int32)
        if self.layout == "flat":
            return self.predict(v.reshape(v.shape[0], -1)).reshape(v.shape[0], *sample_shape)
        return self.predict(v, int(sample_shape[-1]))

    # ---- storage: one .npz, arrays plus a JSON description (codec/FORMAT.md)

    def to_spec(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The JSON description and the named arrays it refers to (what to_bytes stores)."""
        arrays: dict[str, np.ndarray] = {}
        specs = []
        for i, layer in enumerate(self.layers):
            entry: dict[str, Any] = {"op": layer.OP, **{k: getattr(layer, k) for k in layer.SCALARS}}
            for name in layer.ARRAYS:
                arrays[f"{i}.{name}"] = getattr(layer, name)
                entry[name] = f"{i}.{name}"
            specs.append(entry)
        spec = {"version": EXACT_VERSION,
                "input": {"lo": int(self.in_lo), "hi": int(self.in_hi), "layout": self.layout},
                "output": {"shape": list(self.out_shape), "lo": int(self.out_lo), "hi": int(self.out_hi)},
                "layers": specs}
        return spec, arrays

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str) -> IntegerNetwork:
        """The network a spec and its arrays describe; BundleError on another version or an unknown op
        (a missing key or a malformed value raises KeyError / TypeError / ValueError: read_npz's
        callers turn those into BundleError)."""
        if spec.get("version") != EXACT_VERSION:
            raise BundleError(f"{where}: exact network version {spec.get('version')!r} is not supported "
                              f"(this latentwire reads {EXACT_VERSION}); upgrade latentwire")
        layers = []
        for entry in spec["layers"]:
            kind = KINDS.get(entry["op"])
            if kind is None:
                raise BundleError(f"{where}: unknown exact layer {entry['op']!r}; upgrade latentwire")
            layers.append(kind(**{k: arrays[entry[k]] for k in kind.ARRAYS},  # type: ignore[attr-defined]
                               **{k: int(entry[k]) for k in kind.SCALARS}))  # type: ignore[attr-defined]
        out, inp = spec["output"], spec["input"]
        return cls(int(inp["lo"]), int(inp["hi"]), tuple(layers),
                   tuple(None if d is None else int(d) for d in out["shape"]), int(out["lo"]), int(out["hi"]),
                   str(inp.get("layout", "flat")))

    def to_bytes(self) -> bytes:
        return write_npz(*self.to_spec())

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "exact.npz") -> IntegerNetwork:
        try:
            spec, arrays = read_npz(data)
            return cls.from_spec(spec, arrays, where)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{where} is not a readable exact network ({exc!r}); re-run "
                              "`latentwire quantize-exact`") from exc

    @classmethod
    def load(cls, path: str | Path) -> IntegerNetwork:
        return cls.from_bytes(Path(path).read_bytes(), str(path))


def _narrow(a: np.ndarray) -> np.ndarray:
    """The smallest little-endian integer type holding a (16-bit weights stored as int16, not int64)."""
    if a.dtype.kind != "i":
        return np.ascontiguousarray(a)
    for t in ("<i1", "<i2", "<i4"):
        info = np.iinfo(t)
        if not a.size or (info.min <= int(a.min()) and int(a.max()) <= info.max):
            return np.ascontiguousarray(a, dtype=t)
    return np.ascontiguousarray(a, dtype="<i8")


def write_npz(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz numpy reads: spec.npy (the JSON, sorted keys) and the arrays, written with a fixed zip
    timestamp and little-endian integer arrays, so the same network always gives the same bytes (and
    so the same model id)."""
    entries = {**arrays, "spec": np.frombuffer(json.dumps(spec, sort_keys=True).encode(), dtype=np.uint8)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(entries):
            a = io.BytesIO()
            np.lib.format.write_array(a, _narrow(np.asarray(entries[name])), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), a.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def read_npz(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """write_npz's inverse: the spec (a JSON object) and every other array, loaded without pickles.
    Malformed data raises what numpy, zipfile or json raise; callers name the file in a BundleError."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        spec = json.loads(bytes(z["spec"]).decode())
        if not isinstance(spec, dict):
            raise ValueError("spec is not a JSON object")
        return spec, {name: z[name] for name in z.files if name != "spec"}
