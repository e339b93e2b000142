"""The exact prediction: an integer network that every machine evaluates to the same integers.

A residual is taken against the receiver's prediction, so that prediction must not depend on the
machine: a float decoder rounds differently under another SIMD width, thread count or BLAS, and a
value near a .5 boundary then moves by one (issue 24: 7 of 1.6 M MNIST values between onnxruntime
and the onnx reference evaluator). This network has integer weights, integer biases, integer
activations, and only three operations (codec/FORMAT.md, "Exact prediction"):

  * ``dense``: acc = x @ W.T + b, all integers;
  * ``requant``: u = clip((acc * m_j + 2**(s-1)) >> s, lo, hi) per output channel j: an integer
    multiply and a rounding right shift (round half up; ``>>`` floors, so it is defined on
    negatives too), the integer form of ``acc * scale_j``;
  * ``lookup``: x' = table[u - lo]: any pointwise activation (GELU, ReLU, sigmoid, tanh...) as an
    integer table computed once at quantization time and stored, so no transcendental function is
    ever evaluated at decode time.

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
kind (conv1d/conv2d as im2col + dense, GDN as an integer sum of squares, exact integer square
root and rounding division) adds a dataclass here, its bound rule, and a FORMAT.md paragraph.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import BundleError, InputError

EXACT_VERSION = 1
FLOAT64_EXACT = 1 << 53  # every integer of smaller magnitude is exact in float64
INT64_SAFE = 1 << 62  # requant products stay below this (int64 holds 2**63 - 1)
MAX_TABLE = 1 << 20  # a lookup table's entries (4 MiB of int32 at most)


def rounding_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """floor((x + 2**(shift-1)) / 2**shift) on int64: round half up, negatives included."""
    if shift == 0:
        return x
    return (x + (1 << (shift - 1))) >> shift


@dataclass(frozen=True, eq=False)
class Dense:
    """acc = x @ weight.T + bias; weight (out, in), bias (out,), both integer-valued."""

    weight: np.ndarray
    bias: np.ndarray

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

    def bound(self, x_bound: np.ndarray) -> np.ndarray:
        """Per output channel, the largest |partial sum| any input within x_bound can produce."""
        if x_bound.shape != (self.weight.shape[1],):
            raise BundleError(f"exact dense layer takes {self.weight.shape[1]} inputs, its input has "
                              f"{x_bound.shape[0]}")
        # in Python integers, so the proof itself cannot overflow
        w = [[abs(int(v)) for v in row] for row in self.weight.tolist()]
        xb = [int(v) for v in x_bound.tolist()]
        out = [sum(a * c for a, c in zip(row, xb)) + abs(int(b)) for row, b in zip(w, self.bias.tolist())]
        if max(out) >= FLOAT64_EXACT:
            raise BundleError(f"exact dense layer can reach a partial sum of {max(out)} >= 2**53: float64 would round "
                              "it; quantize with fewer weight or activation bits")
        return np.asarray(out, dtype=object)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        acc = x.astype(np.float64) @ self._wt
        acc += self._b
        return acc.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Requant:
    """u = clip(rounding_shift(acc * multiplier_j, shift), lo, hi), per output channel j."""

    multiplier: np.ndarray
    shift: int
    lo: int
    hi: int

    def __post_init__(self) -> None:
        m = np.asarray(self.multiplier)
        if m.ndim != 1 or m.dtype.kind != "i" or not 0 <= int(self.shift) < 62 or int(self.lo) > int(self.hi):
            raise BundleError("exact requant needs integer multipliers (out,), a shift in 0..61 and lo <= hi")
        object.__setattr__(self, "multiplier", m.astype(np.int64))
        for k in ("shift", "lo", "hi"):
            object.__setattr__(self, k, int(getattr(self, k)))

    def bound(self, acc_bound: np.ndarray) -> np.ndarray:
        if acc_bound.shape != self.multiplier.shape:
            raise BundleError(f"exact requant has {self.multiplier.size} multipliers for {acc_bound.size} channels")
        worst = max(int(a) * abs(int(m)) for a, m in zip(acc_bound.tolist(), self.multiplier.tolist()))
        if worst + (1 << self.shift) >= INT64_SAFE:
            raise BundleError(f"exact requant product can reach {worst} >= 2**62: int64 would overflow")
        return np.full(self.multiplier.shape, max(abs(self.lo), abs(self.hi)), dtype=object)

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        u = rounding_shift(acc * self.multiplier, self.shift)
        return np.clip(u, self.lo, self.hi, out=u)


@dataclass(frozen=True, eq=False)
class Lookup:
    """x' = table[u - lo] for u in [lo, lo + len(table) - 1] (the preceding requant clips to it)."""

    table: np.ndarray
    lo: int

    def __post_init__(self) -> None:
        t = np.asarray(self.table)
        if t.ndim != 1 or t.dtype.kind != "i" or not 1 <= t.size <= MAX_TABLE:
            raise BundleError(f"exact lookup needs an integer table of 1..{MAX_TABLE} entries, got {t.shape} {t.dtype}")
        object.__setattr__(self, "table", t.astype(np.int64))
        object.__setattr__(self, "lo", int(self.lo))

    def bound(self, u_bound: np.ndarray) -> np.ndarray:
        return np.full(u_bound.shape, int(np.abs(self.table).max()), dtype=object)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return self.table.take(u - self.lo)


Layer = Union[Dense, Requant, Lookup]


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
    """Integer latents (N, n_in) -> integer predictions (N, *out_shape) in [out_lo, out_hi].

    The input is clipped to [in_lo, in_hi] (both sides clip the same way, so an out-of-range
    latent still predicts identically); every layer chain must end in a requant whose clip is the
    output range. The constructor proves the 2**53 / 2**62 bounds and refuses otherwise."""

    in_lo: int
    in_hi: int
    layers: tuple[Layer, ...]
    out_shape: tuple[int, ...]
    out_lo: int
    out_hi: int

    def __post_init__(self) -> None:
        if not self.layers or not isinstance(self.layers[0], Dense):
            raise BundleError("an exact network starts with a dense layer")
        last = self.layers[-1]
        if not isinstance(last, Requant) or (last.lo, last.hi) != (self.out_lo, self.out_hi):
            raise BundleError("an exact network ends in a requant clipped to its output range")
        if int(np.prod(self.out_shape)) != last.multiplier.size:
            raise BundleError(f"exact network output shape {self.out_shape} does not match its "
                              f"{last.multiplier.size} outputs")
        bound = np.full(self.layers[0].weight.shape[1], max(abs(int(self.in_lo)), abs(int(self.in_hi))), dtype=object)
        prev: Layer | None = None
        largest = 0
        for layer in self.layers:
            if isinstance(layer, Lookup) and not (isinstance(prev, Requant) and prev.lo == layer.lo
                                                  and prev.hi == layer.lo + layer.table.size - 1):
                raise BundleError("an exact lookup must follow a requant clipped to exactly its table's domain")
            if isinstance(layer, Requant) and not isinstance(prev, Dense):
                raise BundleError("an exact requant must follow a dense layer")
            bound = layer.bound(bound)
            if isinstance(layer, Dense):
                largest = max(largest, int(max(bound)))
            prev = layer
        object.__setattr__(self, "max_partial_sum", largest)  # the proof's worst case, reported by the quantizer

    @property
    def n_in(self) -> int:
        return int(self.layers[0].weight.shape[1])  # type: ignore[union-attr]

    def predict(self, latents: np.ndarray) -> np.ndarray:
        """(N, n_in) integer-valued latents (any numeric dtype) -> (N, *out_shape) int32."""
        x = np.asarray(latents)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise InputError(f"the exact network takes latents shaped (N, {self.n_in}), got {x.shape}")
        if x.dtype.kind == "f":
            if x.size and not np.array_equal(x, np.rint(x)):
                raise InputError("the exact network takes integer latents (an integer latent step); this level's "
                                 "latents are not integers")
            x = np.rint(x)
        h = np.clip(x.astype(np.int64), self.in_lo, self.in_hi)
        for layer in self.layers:
            h = layer(h)
        return h.astype(np.int32).reshape(x.shape[0], *self.out_shape)

    # ---- storage: one .npz, arrays plus a JSON description (codec/FORMAT.md)

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        specs = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                arrays[f"w{i}"], arrays[f"b{i}"] = layer.weight, layer.bias
                specs.append({"op": "dense", "weight": f"w{i}", "bias": f"b{i}"})
            elif isinstance(layer, Requant):
                arrays[f"m{i}"] = layer.multiplier
                specs.append({"op": "requant", "multiplier": f"m{i}", "shift": layer.shift, "lo": layer.lo,
                              "hi": layer.hi})
            else:
                arrays[f"t{i}"] = layer.table
                specs.append({"op": "lookup", "table": f"t{i}", "lo": layer.lo})
        spec = {"version": EXACT_VERSION, "input": {"lo": int(self.in_lo), "hi": int(self.in_hi)},
                "output": {"shape": list(self.out_shape), "lo": int(self.out_lo), "hi": int(self.out_hi)},
                "layers": specs}
        arrays["spec"] = np.frombuffer(json.dumps(spec, sort_keys=True).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        # an .npz numpy reads, written with a fixed zip timestamp and little-endian int64 arrays, so
        # the same network always gives the same bytes (and so the same model id)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                a = io.BytesIO()
                np.lib.format.write_array(a, _narrow(arrays[name]), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), a.getvalue(),
                            compress_type=zipfile.ZIP_DEFLATED)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "exact.npz") -> "IntegerNetwork":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                spec = json.loads(bytes(z["spec"]).decode())
                if spec.get("version") != EXACT_VERSION:
                    raise BundleError(f"{where}: exact network version {spec.get('version')!r} is not supported "
                                      f"(this latentwire reads {EXACT_VERSION}); upgrade latentwire")
                layers: list[Layer] = []
                for ls in spec["layers"]:
                    op = ls["op"]
                    if op == "dense":
                        layers.append(Dense(z[ls["weight"]], z[ls["bias"]]))
                    elif op == "requant":
                        layers.append(Requant(z[ls["multiplier"]], ls["shift"], ls["lo"], ls["hi"]))
                    elif op == "lookup":
                        layers.append(Lookup(z[ls["table"]], ls["lo"]))
                    else:
                        raise BundleError(f"{where}: unknown exact layer {op!r}; upgrade latentwire")
                out = spec["output"]
                return cls(int(spec["input"]["lo"]), int(spec["input"]["hi"]), tuple(layers),
                           tuple(int(d) for d in out["shape"]), int(out["lo"]), int(out["hi"]))
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{where} is not a readable exact network ({exc!r}); re-run "
                              "`latentwire quantize-exact`") from exc

    @classmethod
    def load(cls, path: str | Path) -> "IntegerNetwork":
        return cls.from_bytes(Path(path).read_bytes(), str(path))
