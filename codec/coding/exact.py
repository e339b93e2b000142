"""The exact prediction: an integer network that every machine evaluates to the same integers.

A residual is taken against the receiver's prediction, so that prediction must not depend on the
machine: a float decoder rounds differently under another SIMD width, thread count or BLAS, and a
value near a .5 boundary then moves by one (issue 24: 7 of 1.6 M MNIST values between onnxruntime
and the onnx reference evaluator). This network has integer weights, integer biases, integer
activations, and a handful of operations (codec/FORMAT.md, "Exact prediction"):

  * ``dense`` / ``conv1d``: acc = sum of integer products + bias (a 1-D convolution with zero
    padding; ``dilate`` inserts zeros, so a transposed convolution is dilate + conv1d);
  * ``requant``: u = clip((acc * m_j + 2**(s-1)) >> s, lo, hi) per output channel j: an integer
    multiply and a rounding right shift (round half up; ``>>`` floors, so it is defined on
    negatives too), the integer form of ``acc * scale_j``;
  * ``lookup``: x' = table[u - lo]: any pointwise activation (GELU, ReLU, sigmoid, tanh...) as an
    integer table computed once at quantization time and stored, so no transcendental function is
    ever evaluated at decode time;
  * ``save`` / ``add``: skip connections, both operands on one integer grid.

Why float64 matmuls: BLAS evaluates ``dense`` fast, in any summation order and blocking, on any
thread count; for integer-valued float64 operands every partial sum is an integer, and every
integer below 2**53 is exact in float64, so any order gives the same exact sum PROVIDED every
|partial sum| < 2**53. ``IntegerNetwork.__post_init__`` proves that from the stored numbers
before anything runs: per output channel, sum_i |W_ji| * max|x_i| + |b_j| bounds every partial sum
(the input is clipped to its declared range first, and every later activation is bounded by its
clip or its table), and a network that cannot guarantee it is refused (``BundleError``). numpy's
int64 matmul would be exact too, but it has no BLAS path (about 20x slower here); the int64
arithmetic is kept for ``requant``, whose products are proved below 2**63 the same way.

The output is the integer prediction itself (raw units, already clipped to the raw range), so no
float rounding boundary exists anywhere. Layer kinds are a closed list checked at load; a new
kind (conv2d, GDN as an integer sum of squares, exact integer square root and rounding division)
adds a dataclass here (OP, ARRAYS, SCALARS, bound, __call__), and a FORMAT.md row.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import BundleError, InputError

EXACT_VERSION = 1
FLOAT64_EXACT = 1 << 53  # every integer of smaller magnitude is exact in float64
INT64_SAFE = 1 << 62  # requant products stay below this (int64 holds 2**63 - 1)
MAX_TABLE = 1 << 20  # a lookup table's entries (4 MiB of int32 at most)
LAYOUTS = ("flat", "channels_first")
CONV_CHUNK = 32  # frames per pass of a channels_first network (ECG: ~70 MB of float64 activations)


def rounding_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """floor((x + 2**(shift-1)) / 2**shift) on int64: round half up, negatives included."""
    if shift == 0:
        return x
    return (x + (1 << (shift - 1))) >> shift


@dataclass(frozen=True, eq=False)
class Dense:
    """acc = x @ weight.T + bias over the last (channel) axis; weight (out, in), bias (out,)."""

    weight: np.ndarray
    bias: np.ndarray
    _wt: np.ndarray = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)
    OP: ClassVar[str] = "dense"
    ARRAYS: ClassVar[tuple[str, ...]] = ("weight", "bias")
    SCALARS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weight), np.asarray(self.bias)
        if w.ndim != 2 or b.shape != (w.shape[0],) or w.dtype.kind != "i" or b.dtype.kind != "i":
            raise BundleError(f"exact dense layer needs integer weight (out, in) and bias (out,), got {w.shape}, "
                              f"{b.shape}")
        object.__setattr__(self, "weight", w.astype(np.int64))
        object.__setattr__(self, "bias", b.astype(np.int64))
        # the evaluation operands, built once: transposed and contiguous for BLAS
        object.__setattr__(self, "_wt", np.ascontiguousarray(self.weight.T, dtype=np.float64))
        object.__setattr__(self, "_b", self.bias.astype(np.float64))

    def bound(self, x_bound: list[int]) -> list[int]:
        """Per output channel, the largest |partial sum| any input within x_bound can produce."""
        return _accumulator_bound(self.weight[:, :, None], self.bias, x_bound)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acc = x.astype(np.float64) @ self._wt
        acc += self._b
        return acc.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Conv1d:
    """acc[t, o] = sum_{c,k} weight[o, c, k] * xpad[t + k, c] + bias[o] on (N, length, channels),
    xpad = x with pad_left / pad_right zeros on the length axis (stride 1). A transposed
    convolution is a ``dilate`` then a Conv1d with the kernel flipped (the quantizer builds it)."""

    weight: np.ndarray
    bias: np.ndarray
    pad_left: int
    pad_right: int
    _taps: list[np.ndarray] = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)
    OP: ClassVar[str] = "conv1d"
    ARRAYS: ClassVar[tuple[str, ...]] = ("weight", "bias")
    SCALARS: ClassVar[tuple[str, ...]] = ("pad_left", "pad_right")

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weight), np.asarray(self.bias)
        if w.ndim != 3 or b.shape != (w.shape[0],) or w.dtype.kind != "i" or b.dtype.kind != "i" \
                or min(int(self.pad_left), int(self.pad_right)) < 0:
            raise BundleError(f"exact conv1d needs integer weight (out, in, k), bias (out,) and pads >= 0, got "
                              f"{w.shape}, {b.shape}")
        object.__setattr__(self, "weight", w.astype(np.int64))
        object.__setattr__(self, "bias", b.astype(np.int64))
        object.__setattr__(self, "pad_left", int(self.pad_left))
        object.__setattr__(self, "pad_right", int(self.pad_right))
        # one (in, out) float64 matrix per kernel tap: K matmuls summed, no im2col copy K times the size
        object.__setattr__(self, "_taps", [np.ascontiguousarray(self.weight[:, :, k].T, dtype=np.float64)
                                           for k in range(w.shape[2])])
        object.__setattr__(self, "_b", self.bias.astype(np.float64))

    def bound(self, x_bound: list[int]) -> list[int]:
        # the padding zeros only lower a sum, so the full kernel's L1 norm bounds every position
        return _accumulator_bound(self.weight, self.bias, x_bound)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, length, c = x.shape
        xp = np.zeros((n, length + self.pad_left + self.pad_right, c), dtype=np.float64)
        xp[:, self.pad_left : self.pad_left + length] = x
        out_len = xp.shape[1] - len(self._taps) + 1
        if out_len < 1:
            raise InputError(f"a latent of length {length} is too short for this exact network's convolutions")
        acc = xp[:, :out_len] @ self._taps[0]
        for k in range(1, len(self._taps)):
            acc += xp[:, k : k + out_len] @ self._taps[k]
        acc += self._b
        return acc.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Dilate:
    """(N, L, C) -> (N, (L - 1) * stride + 1, C): stride - 1 zeros between positions."""

    stride: int
    OP: ClassVar[str] = "dilate"
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    SCALARS: ClassVar[tuple[str, ...]] = ("stride",)

    def __post_init__(self) -> None:
        if not 1 <= int(self.stride) <= 64:
            raise BundleError(f"exact dilate needs a stride in 1..64, got {self.stride}")
        object.__setattr__(self, "stride", int(self.stride))

    def bound(self, x_bound: list[int]) -> list[int]:
        return x_bound

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, length, c = x.shape
        out = np.zeros((n, (length - 1) * self.stride + 1, c), dtype=np.int64)
        out[:, :: self.stride] = x
        return out


@dataclass(frozen=True, eq=False)
class Save:
    """Keep the current tensor under ``slot`` for a later ``add`` (a skip connection)."""

    slot: int
    OP: ClassVar[str] = "save"
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    SCALARS: ClassVar[tuple[str, ...]] = ("slot",)

    def bound(self, x_bound: list[int]) -> list[int]:
        return x_bound


@dataclass(frozen=True, eq=False)
class Add:
    """current + the tensor saved under ``slot`` (both on the same integer grid: the quantizer
    requantizes the branch onto the skip's grid)."""

    slot: int
    OP: ClassVar[str] = "add"
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    SCALARS: ClassVar[tuple[str, ...]] = ("slot",)


@dataclass(frozen=True, eq=False)
class Requant:
    """u = clip(rounding_shift(acc * multiplier_j, shift), lo, hi), per channel j (the last axis)."""

    multiplier: np.ndarray
    shift: int
    lo: int
    hi: int
    OP: ClassVar[str] = "requant"
    ARRAYS: ClassVar[tuple[str, ...]] = ("multiplier",)
    SCALARS: ClassVar[tuple[str, ...]] = ("shift", "lo", "hi")

    def __post_init__(self) -> None:
        m = np.asarray(self.multiplier)
        if m.ndim != 1 or m.dtype.kind != "i" or not 0 <= int(self.shift) < 62 or int(self.lo) > int(self.hi):
            raise BundleError("exact requant needs integer multipliers (out,), a shift in 0..61 and lo <= hi")
        object.__setattr__(self, "multiplier", m.astype(np.int64))
        for k in ("shift", "lo", "hi"):
            object.__setattr__(self, k, int(getattr(self, k)))

    def bound(self, acc_bound: list[int]) -> list[int]:
        if len(acc_bound) != self.multiplier.size:
            raise BundleError(f"exact requant has {self.multiplier.size} multipliers for {len(acc_bound)} channels")
        worst = max(int(a) * abs(int(m)) for a, m in zip(acc_bound, self.multiplier.tolist(), strict=True))
        if worst + (1 << self.shift) >= INT64_SAFE:
            raise BundleError(f"exact requant product can reach {worst} >= 2**62: int64 would overflow")
        return [max(abs(self.lo), abs(self.hi))] * self.multiplier.size

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        u = rounding_shift(acc * self.multiplier, self.shift)
        return np.clip(u, self.lo, self.hi, out=u)


@dataclass(frozen=True, eq=False)
class Lookup:
    """x' = table[u - lo] for u in [lo, lo + len(table) - 1] (the preceding requant clips to it)."""

    table: np.ndarray
    lo: int
    OP: ClassVar[str] = "lookup"
    ARRAYS: ClassVar[tuple[str, ...]] = ("table",)
    SCALARS: ClassVar[tuple[str, ...]] = ("lo",)

    def __post_init__(self) -> None:
        t = np.asarray(self.table)
        if t.ndim != 1 or t.dtype.kind != "i" or not 1 <= t.size <= MAX_TABLE:
            raise BundleError(f"exact lookup needs an integer table of 1..{MAX_TABLE} entries, got {t.shape} {t.dtype}")
        object.__setattr__(self, "table", t.astype(np.int64))
        object.__setattr__(self, "lo", int(self.lo))

    def bound(self, u_bound: list[int]) -> list[int]:
        return [int(np.abs(self.table).max())] * len(u_bound)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return self.table.take(u - self.lo)


Layer = Dense | Conv1d | Dilate | Save | Add | Requant | Lookup
KINDS: dict[str, type] = {k.OP: k for k in (Dense, Conv1d, Dilate, Save, Add, Requant, Lookup)}


def _accumulator_bound(weight: np.ndarray, bias: np.ndarray, x_bound: list[int]) -> list[int]:
    """sum_{c,k} |weight[o, c, k]| * x_bound[c] + |bias[o]| per output o, in Python integers (the
    proof itself cannot overflow), refused at 2**53."""
    if weight.shape[1] != len(x_bound):
        raise BundleError(f"exact layer takes {weight.shape[1]} input channels, its input has {len(x_bound)}")
    l1 = np.abs(weight).sum(axis=2)  # (out, in): int64, far from overflow for stored weights
    out = [sum(int(a) * b for a, b in zip(row, x_bound, strict=True)) + abs(int(c))
           for row, c in zip(l1.tolist(), bias.tolist(), strict=True)]
    if max(out) >= FLOAT64_EXACT:
        raise BundleError(f"exact layer can reach a partial sum of {max(out)} >= 2**53: float64 would round it; "
                          "quantize with fewer weight or activation bits")
    return out


def _narrow(a: np.ndarray) -> np.ndarray:
    """The smallest little-endian integer type holding a (16-bit weights stored as int16, not int64)."""
    if a.dtype.kind != "i":
        return np.ascontiguousarray(a)
    for t in ("<i1", "<i2", "<i4"):
        info = np.iinfo(t)
        if not a.size or (info.min <= int(a.min()) and int(a.max()) <= info.max):
            return np.ascontiguousarray(a, dtype=t)
    return np.ascontiguousarray(a, dtype="<i8")


@dataclass(frozen=True, eq=False)
class IntegerNetwork:
    """Integer latents -> integer predictions in [out_lo, out_hi].

    ``layout`` "flat": latents (N, n_in) -> (N, *out_shape). "channels_first": latents (N, C, L)
    -> (N, C_out, L_out) cropped to the caller's out_size (out_shape holds None for the length;
    layers see channels last). The input is clipped to [in_lo, in_hi] (both sides clip alike, so an
    out-of-range latent still predicts identically); the layers end in a requant clipped to the
    output range. The constructor proves the 2**53 / 2**62 bounds and refuses otherwise."""

    in_lo: int
    in_hi: int
    layers: tuple[Layer, ...]
    out_shape: tuple[int | None, ...]
    out_lo: int
    out_hi: int
    layout: str = "flat"

    def __post_init__(self) -> None:
        first = self.layers[0] if self.layers else None
        if self.layout not in LAYOUTS or not isinstance(first, (Dense, Conv1d)):
            raise BundleError(f"an exact network has a layout in {LAYOUTS} and starts with a dense or conv1d layer")
        last = self.layers[-1]
        if not isinstance(last, Requant) or (last.lo, last.hi) != (self.out_lo, self.out_hi):
            raise BundleError("an exact network ends in a requant clipped to its output range")
        conv = self.layout == "channels_first"
        channels = self.out_shape[0] if conv else math.prod(int(d or 0) for d in self.out_shape)
        if channels != last.multiplier.size:
            raise BundleError(f"exact network output shape {self.out_shape} does not match its "
                              f"{last.multiplier.size} output channels")
        bound = [max(abs(int(self.in_lo)), abs(int(self.in_hi)))] * int(first.weight.shape[1])
        saved: dict[int, list[int]] = {}
        prev: Layer | None = None
        largest = 0
        for layer in self.layers:
            if isinstance(layer, Lookup) and not (isinstance(prev, Requant) and prev.lo == layer.lo
                                                  and prev.hi == layer.lo + layer.table.size - 1):
                raise BundleError("an exact lookup must follow a requant clipped to exactly its table's domain")
            if isinstance(layer, Requant) and not isinstance(prev, (Dense, Conv1d)):
                raise BundleError("an exact requant must follow a dense or conv1d layer")
            if isinstance(layer, (Conv1d, Dilate)) and self.layout != "channels_first":
                raise BundleError("exact conv1d and dilate layers need the channels_first layout")
            if isinstance(layer, Save):
                saved[layer.slot] = bound
            elif isinstance(layer, Add):
                other = saved.get(layer.slot)
                if other is None or len(other) != len(bound):
                    raise BundleError(f"exact add names slot {layer.slot}, which holds no tensor of its width")
                bound = [a + b for a, b in zip(bound, other, strict=True)]
            else:
                bound = layer.bound(bound)
            if isinstance(layer, (Dense, Conv1d)):
                largest = max(largest, max(bound))
            if isinstance(layer, Add) and max(bound) >= FLOAT64_EXACT:
                raise BundleError("exact add can reach 2**53")
            prev = layer
        object.__setattr__(self, "max_partial_sum", largest)  # the proof's worst case, reported by the quantizer

    @property
    def n_in(self) -> int:
        return int(self.layers[0].weight.shape[1])  # type: ignore[union-attr]

    def predict(self, latents: np.ndarray, out_size: int | None = None) -> np.ndarray:
        """Integer-valued latents (any numeric dtype) -> int32 predictions: (N, n_in) -> (N, *out_shape),
        or (N, C, L) -> (N, C_out, out_size or the full length)."""
        x = np.asarray(latents)
        flat = self.layout == "flat"
        if (x.ndim != 2 if flat else x.ndim != 3) or x.shape[1] != self.n_in:
            want = f"(N, {self.n_in})" if flat else f"(N, {self.n_in}, L)"
            raise InputError(f"the exact network takes latents shaped {want}, got {x.shape}")
        if x.dtype.kind == "f":
            if x.size and not np.array_equal(x, np.rint(x)):
                raise InputError("the exact network takes integer latents (an integer latent step); this level's "
                                 "latents are not integers")
            x = np.rint(x)
        if not flat and x.shape[0] > CONV_CHUNK:  # bounded memory; exact, so chunking changes nothing
            return np.concatenate([self.predict(x[i : i + CONV_CHUNK], out_size)
                                   for i in range(0, x.shape[0], CONV_CHUNK)])
        h = np.clip(x.astype(np.int64), self.in_lo, self.in_hi)
        if not flat:
            h = np.ascontiguousarray(h.transpose(0, 2, 1))
        saved: dict[int, np.ndarray] = {}
        for layer in self.layers:
            if isinstance(layer, Save):
                saved[layer.slot] = h
            elif isinstance(layer, Add):
                h = h + saved[layer.slot]
            else:
                h = layer(h)
        if flat:
            return h.astype(np.int32).reshape(x.shape[0], *self.out_shape)
        if out_size is not None and not 1 <= out_size <= h.shape[1]:
            raise InputError(f"out_size {out_size} exceeds the {h.shape[1]} samples this latent predicts")
        return np.ascontiguousarray(h[:, :out_size].transpose(0, 2, 1), dtype=np.int32)

    def predict_frames(self, latent_values: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
        """A batch of latent values as the decoder takes them (N, *latent_shape) -> the prediction
        (N, *sample_shape) int32: what a residual is taken against."""
        v = np.asarray(latent_values)
        if self.layout == "flat":
            return self.predict(v.reshape(v.shape[0], -1)).reshape(v.shape[0], *sample_shape)
        return self.predict(v, int(sample_shape[-1]))

    # ---- storage: one .npz, arrays plus a JSON description (codec/FORMAT.md)

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        specs = []
        for i, layer in enumerate(self.layers):
            entry: dict = {"op": layer.OP, **{k: getattr(layer, k) for k in layer.SCALARS}}
            for name in layer.ARRAYS:
                arrays[f"{i}.{name}"] = getattr(layer, name)
                entry[name] = f"{i}.{name}"
            specs.append(entry)
        spec = {"version": EXACT_VERSION,
                "input": {"lo": int(self.in_lo), "hi": int(self.in_hi), "layout": self.layout},
                "output": {"shape": list(self.out_shape), "lo": int(self.out_lo), "hi": int(self.out_hi)},
                "layers": specs}
        arrays["spec"] = np.frombuffer(json.dumps(spec, sort_keys=True).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        # an .npz numpy reads, written with a fixed zip timestamp and little-endian integer arrays, so
        # the same network always gives the same bytes (and so the same model id)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                a = io.BytesIO()
                np.lib.format.write_array(a, _narrow(arrays[name]), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), a.getvalue(),
                            compress_type=zipfile.ZIP_DEFLATED)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "exact.npz") -> IntegerNetwork:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                spec = json.loads(bytes(z["spec"]).decode())
                if spec.get("version") != EXACT_VERSION:
                    raise BundleError(f"{where}: exact network version {spec.get('version')!r} is not supported "
                                      f"(this latentwire reads {EXACT_VERSION}); upgrade latentwire")
                layers = []
                for entry in spec["layers"]:
                    kind = KINDS.get(entry["op"])
                    if kind is None:
                        raise BundleError(f"{where}: unknown exact layer {entry['op']!r}; upgrade latentwire")
                    layers.append(kind(**{k: z[entry[k]] for k in kind.ARRAYS},  # type: ignore[attr-defined]
                                       **{k: int(entry[k]) for k in kind.SCALARS}))  # type: ignore[attr-defined]
                out, inp = spec["output"], spec["input"]
                return cls(int(inp["lo"]), int(inp["hi"]), tuple(layers),
                           tuple(None if d is None else int(d) for d in out["shape"]), int(out["lo"]), int(out["hi"]),
                           str(inp.get("layout", "flat")))
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{where} is not a readable exact network ({exc!r}); re-run "
                              "`latentwire quantize-exact`") from exc

    @classmethod
    def load(cls, path: str | Path) -> IntegerNetwork:
        return cls.from_bytes(Path(path).read_bytes(), str(path))
