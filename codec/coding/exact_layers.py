"""The exact network's layer kinds: a closed list, each with its arithmetic and its bound rule.

Every kind holds integer arrays and evaluates on channels-last int64 tensors: ``(N, C)`` (flat),
``(N, L, C)`` (1-D maps) or ``(N, H, W, C)`` (2-D maps). ``bound`` maps the per-channel bound of
its input to that of its output (for a weighted layer: of every partial sum, refused at 2**53), so
IntegerNetwork can prove a whole stack from the stored numbers before anything runs. The
arithmetic and the proof are described in exact.py and codec/FORMAT.md ("Exact prediction").

The convolutions are float64 BLAS matmuls on integer-valued operands: exact because the proof
holds, fast because BLAS is. Conv2d builds an im2col matrix (one row per output pixel, one column
per (tap, input channel)) in chunks of at most IM2COL_BYTES, so a large photo's map never makes a
huge temporary; each chunk is one matmul. A ``dilate2d`` right before a ``conv2d`` (a transposed
convolution) runs as one sub-pixel convolution (TransposedConv2d), skipping the products with
inserted zeros: the stored layers stay the literal pair, the integers are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..errors import BundleError, InputError

FLOAT64_EXACT = 1 << 53  # every integer of smaller magnitude is exact in float64
INT64_SAFE = 1 << 62  # requant products stay below this (int64 holds 2**63 - 1)
MAX_TABLE = 1 << 20  # a lookup table's entries (4 MiB of int32 at most)
MAX_STRIDE = 64  # a dilation's stride
IM2COL_BYTES = 32 << 20  # one Conv2d im2col chunk (float64): bounded memory whatever the map's size


def rounding_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """floor((x + 2**(shift-1)) / 2**shift) on int64: round half up, negatives included."""
    if shift == 0:
        return x
    return (x + (1 << (shift - 1))) >> shift


def accumulator_bound(weight: np.ndarray, bias: np.ndarray, x_bound: list[int]) -> list[int]:
    """sum_{c,k} |weight[o, c, k]| * x_bound[c] + |bias[o]| per output o (weight (out, in, taps)), in
    Python integers (the proof itself cannot overflow), refused at 2**53."""
    if weight.shape[1] != len(x_bound):
        raise BundleError(f"exact layer takes {weight.shape[1]} input channels, its input has {len(x_bound)}")
    l1 = np.abs(weight).sum(axis=2)  # (out, in): int64, far from overflow for stored weights
    out = [sum(int(a) * b for a, b in zip(row, x_bound, strict=True)) + abs(int(c))
           for row, c in zip(l1.tolist(), bias.tolist(), strict=True)]
    if max(out) >= FLOAT64_EXACT:
        raise BundleError(f"exact layer can reach a partial sum of {max(out)} >= 2**53: float64 would round it; "
                          "quantize with fewer weight or activation bits")
    return out


def _integer_arrays(kind: str, w: np.ndarray, b: np.ndarray, ndim: int, shape: str) -> None:
    if w.ndim != ndim or b.shape != (w.shape[0],) or w.dtype.kind != "i" or b.dtype.kind != "i" or not w.size:
        raise BundleError(f"exact {kind} needs integer weight {shape} and bias (out,), got {w.shape} {w.dtype}, "
                          f"{b.shape} {b.dtype}")


def _pads(kind: str, pads: list[int]) -> None:
    if min(pads) < 0:
        raise BundleError(f"exact {kind} needs pads >= 0, got {pads}")


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
        _integer_arrays("dense layer", w, b, 2, "(out, in)")
        object.__setattr__(self, "weight", w.astype(np.int64))
        object.__setattr__(self, "bias", b.astype(np.int64))
        # the evaluation operands, built once: transposed and contiguous for BLAS
        object.__setattr__(self, "_wt", np.ascontiguousarray(self.weight.T, dtype=np.float64))
        object.__setattr__(self, "_b", self.bias.astype(np.float64))

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    def bound(self, x_bound: list[int]) -> list[int]:
        """Per output channel, the largest |partial sum| any input within x_bound can produce."""
        return accumulator_bound(self.weight[:, :, None], self.bias, x_bound)

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
        _integer_arrays("conv1d", w, b, 3, "(out, in, k)")
        _pads("conv1d", [int(self.pad_left), int(self.pad_right)])
        object.__setattr__(self, "weight", w.astype(np.int64))
        object.__setattr__(self, "bias", b.astype(np.int64))
        object.__setattr__(self, "pad_left", int(self.pad_left))
        object.__setattr__(self, "pad_right", int(self.pad_right))
        # one (in, out) float64 matrix per kernel tap: K matmuls summed, no im2col copy K times the size
        object.__setattr__(self, "_taps", [np.ascontiguousarray(self.weight[:, :, k].T, dtype=np.float64)
                                           for k in range(w.shape[2])])
        object.__setattr__(self, "_b", self.bias.astype(np.float64))

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    def bound(self, x_bound: list[int]) -> list[int]:
        # the padding zeros only lower a sum, so the full kernel's L1 norm bounds every position
        return accumulator_bound(self.weight, self.bias, x_bound)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, length, c = x.shape
        padded = length + self.pad_left + self.pad_right
        out_len = padded - len(self._taps) + 1
        if out_len < 1:
            raise InputError(f"a latent of length {length} is too short for this exact network's convolutions")
        # the frames' padded rows back to back, then one matrix product per tap over all of them: row
        # i * padded + t of the sum is frame i's output t for t < out_len (its taps stay inside the
        # frame); the rows after are dropped. Exact sums, so the blocking changes nothing
        xp = np.zeros((n * padded + len(self._taps) - 1, c), dtype=np.float64)
        xp[: n * padded].reshape(n, padded, c)[:, self.pad_left : self.pad_left + length] = x
        rows = n * padded
        acc = xp[:rows] @ self._taps[0]
        for k in range(1, len(self._taps)):
            acc += xp[k : k + rows] @ self._taps[k]
        acc += self._b
        return acc.reshape(n, padded, -1)[:, :out_len].astype(np.int64)


@dataclass(frozen=True, eq=False)
class Conv2d:
    """acc[y, x, o] = sum_{c,i,j} weight[o, c, i, j] * xp[y + i, x + j, c] + bias[o] on (N, H, W, C),
    xp = x with pad_top / pad_bottom zero rows and pad_left / pad_right zero columns (stride 1).
    A transposed convolution is a ``dilate2d`` then a Conv2d with the kernel flipped on both axes
    and its in/out axes swapped (the quantizer builds it)."""

    weight: np.ndarray
    bias: np.ndarray
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    _wm: np.ndarray = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)
    OP: ClassVar[str] = "conv2d"
    ARRAYS: ClassVar[tuple[str, ...]] = ("weight", "bias")
    SCALARS: ClassVar[tuple[str, ...]] = ("pad_top", "pad_bottom", "pad_left", "pad_right")

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weight), np.asarray(self.bias)
        _integer_arrays("conv2d", w, b, 4, "(out, in, kh, kw)")
        for k in self.SCALARS:
            object.__setattr__(self, k, int(getattr(self, k)))
        _pads("conv2d", [self.pad_top, self.pad_bottom, self.pad_left, self.pad_right])
        object.__setattr__(self, "weight", w.astype(np.int64))
        object.__setattr__(self, "bias", b.astype(np.int64))
        # the im2col weight matrix, columns in (i, j, c) order: each tap's channels are contiguous
        # in a channels-last map, so the im2col copy moves whole channel vectors
        o = w.shape[0]
        object.__setattr__(self, "_wm", np.ascontiguousarray(self.weight.transpose(0, 2, 3, 1).reshape(o, -1).T,
                                                             dtype=np.float64))
        object.__setattr__(self, "_b", self.bias.astype(np.float64))

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    def bound(self, x_bound: list[int]) -> list[int]:
        # padding and dilation zeros only lower a sum: the full kernel's L1 norm bounds every pixel
        return accumulator_bound(self.weight.reshape(*self.weight.shape[:2], -1), self.bias, x_bound)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _conv_im2col(_padded(x, (self.pad_top, self.pad_bottom), (self.pad_left, self.pad_right)), self._wm,
                            self._b, *self.weight.shape[2:])


def _padded(x: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """x (N, H, W, C) as float64 with rows[0] / rows[1] zero rows added above / below and cols[0] /
    cols[1] zero columns left / right; a negative count drops that many instead."""
    n, h, w, c = x.shape
    out = np.zeros((n, h + rows[0] + rows[1], w + cols[0] + cols[1], c), dtype=np.float64)
    src = x[:, max(0, -rows[0]) : h - max(0, -rows[1]), max(0, -cols[0]) : w - max(0, -cols[1])]
    if src.size:
        out[:, max(0, rows[0]) : max(0, rows[0]) + src.shape[1], max(0, cols[0]) : max(0, cols[0]) + src.shape[2]] = src
    return out


def _conv_im2col(xp: np.ndarray, wm: np.ndarray, bias: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """The valid stride-1 convolution of the padded float64 map xp (N, Hp, Wp, C) with the im2col
    weight matrix wm (kh * kw * C, out) plus bias, as int64 (N, Hp - kh + 1, Wp - kw + 1, out): im2col
    chunks of at most IM2COL_BYTES, one BLAS matmul each."""
    n, hp, wp, c = xp.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    if min(ho, wo) < 1:
        raise InputError(f"a {hp}x{wp} padded map is too small for this exact network's {kh}x{kw} convolutions")
    out = np.empty((n, ho, wo, wm.shape[1]), dtype=np.int64)
    rows = max(1, IM2COL_BYTES // (wo * wm.shape[0] * 8))  # output rows per chunk, over all images
    images = max(1, rows // ho)  # whole images per chunk when they fit, else row blocks of one image
    step = min(rows, ho)
    for b0 in range(0, n, images):
        b1 = min(n, b0 + images)
        for r0 in range(0, ho, step):
            r1 = min(ho, r0 + step)
            cols = np.empty((b1 - b0, r1 - r0, wo, kh, kw, c), dtype=np.float64)
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, :, i, j] = xp[b0:b1, r0 + i : r1 + i, j : j + wo]
            acc = cols.reshape(-1, wm.shape[0]) @ wm
            acc += bias
            out[b0:b1, r0:r1] = acc.reshape(b1 - b0, r1 - r0, wo, -1)
    return out


def _sub_pixel_taps(k: int, pad: int, stride: int) -> tuple[list[tuple[int, int, int]], int, int]:
    """On one axis of a stride-``stride`` zero insertion followed by a convolution padded ``pad``
    before: output s*q + a takes kernel tap t from input sample q + d exactly when a + t - pad =
    s*d (the other taps meet inserted zeros). Each tap t has one such phase a. Returns (t, a, d)
    per tap and the smallest and largest d."""
    taps = []
    for t in range(k):
        a = (pad - t) % stride
        taps.append((t, a, (a + t - pad) // stride))
    return taps, min(d for _, _, d in taps), max(d for _, _, d in taps)


class TransposedConv2d:
    """``dilate2d`` then ``conv2d`` as one sub-pixel convolution (an evaluation plan, not a stored kind).

    Of the kernel's taps only those landing on inserted samples contribute, at most a quarter for
    stride 2. Output block q (the s x s pixels s*q + (a, b)) is a convolution of the UNdilated map
    around q: one im2col row per block, holding the samples at offsets d_min..d_max on each axis,
    and one weight matrix whose column (a, b, o) holds output channel o's taps of phase (a, b) at
    their offsets (zeros elsewhere): one BLAS matmul for all s*s phases. Every column holds a subset
    of the kernel, so its partial sums are sub-sums of conv2d's (the same proof), and the skipped
    zeros add nothing: the integers are those of dilate2d + conv2d (tests hold it to the literal pair).
    For 5x5 and stride 2 that is 9 * 4 = 36 tap products per block of 4 outputs instead of 100."""

    def __init__(self, dilate: Dilate2d, conv: Conv2d) -> None:
        s, self.conv = dilate.stride, conv
        self.stride = s
        o, c, kh, kw = conv.weight.shape
        rows, self.rmin, rmax = _sub_pixel_taps(kh, conv.pad_top, s)
        cols, self.cmin, cmax = _sub_pixel_taps(kw, conv.pad_left, s)
        self.dh, self.dw = rmax - self.rmin + 1, cmax - self.cmin + 1
        m = np.zeros((self.dh, self.dw, c, s, s, o), dtype=np.float64)
        for t, a, d in rows:
            for u, b, e in cols:
                m[d - self.rmin, e - self.cmin, :, a, b, :] = conv.weight[:, :, t, u].T
        self.matrix = np.ascontiguousarray(m.reshape(self.dh * self.dw * c, s * s * o))
        self.bias = np.tile(conv._b, s * s)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, h, w, _ = x.shape
        conv, s = self.conv, self.stride
        o, _, kh, kw = conv.weight.shape
        ho = (h - 1) * s + 1 + conv.pad_top + conv.pad_bottom - kh + 1
        wo = (w - 1) * s + 1 + conv.pad_left + conv.pad_right - kw + 1
        if min(ho, wo) < 1:
            raise InputError(f"a {h}x{w} map is too small for this exact network's {kh}x{kw} convolutions")
        qh, qw = -(-ho // s), -(-wo // s)  # output blocks; the last may reach past (ho, wo): cropped
        xp = _padded(x, (-self.rmin, qh - 1 + self.rmin + self.dh - 1 - (h - 1)),
                     (-self.cmin, qw - 1 + self.cmin + self.dw - 1 - (w - 1)))
        acc = _conv_im2col(xp, self.matrix, self.bias, self.dh, self.dw)  # (n, qh, qw, s * s * o)
        out = acc.reshape(n, qh, qw, s, s, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, qh * s, qw * s, o)
        return np.ascontiguousarray(out[:, :ho, :wo])


class TransposedConv1d:
    """``dilate`` then ``conv1d`` as one sub-sample convolution (an evaluation plan, like
    TransposedConv2d): output s*q + a takes tap t from input sample q + d where a + t - pad = s*d,
    so per offset d one (in, s * out) matrix whose column (a, o) holds phase a's tap at d, and
    ceil(k / s) matrix products over the UNdilated frames instead of k over the dilated ones. The
    columns hold subsets of the kernel, so the partial sums are sub-sums of conv1d's (the same
    proof), and the skipped zeros add nothing: the integers are those of dilate + conv1d."""

    def __init__(self, dilate: Dilate, conv: Conv1d) -> None:
        s, self.conv, self.stride = dilate.stride, conv, dilate.stride
        o, c, k = conv.weight.shape
        taps, self.dmin, dmax = _sub_pixel_taps(k, conv.pad_left, s)
        m = np.zeros((dmax - self.dmin + 1, c, s, o), dtype=np.float64)
        for t, a, d in taps:
            m[d - self.dmin, :, a, :] = conv.weight[:, :, t].T
        self.mats = [np.ascontiguousarray(part.reshape(c, s * o)) for part in m]
        self.bias = np.tile(conv._b, s)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, length, c = x.shape
        conv, s = self.conv, self.stride
        o, _, k = conv.weight.shape
        out_len = (length - 1) * s + 1 + conv.pad_left + conv.pad_right - k + 1
        if out_len < 1:
            raise InputError(f"a latent of length {length} is too short for this exact network's convolutions")
        q = -(-out_len // s)  # output blocks of s samples; the last may reach past out_len: cropped
        before = max(0, -self.dmin)
        size = before + length + max(0, q - 1 + self.dmin + len(self.mats) - 1 - (length - 1))
        shift = self.dmin + before  # row of block 0's first tap within its frame
        # frames back to back (as Conv1d does): row i * size + j holds frame i's padded sample j
        xp = np.zeros((n * size + shift + len(self.mats), c), dtype=np.float64)
        xp[: n * size].reshape(n, size, c)[:, before : before + length] = x
        rows = n * size
        acc = xp[shift : shift + rows] @ self.mats[0]
        for d in range(1, len(self.mats)):
            acc += xp[shift + d : shift + d + rows] @ self.mats[d]
        acc += self.bias
        out = acc.reshape(n, size, s * o)[:, :q].reshape(n, q * s, o)[:, :out_len]
        return np.ascontiguousarray(out).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Dilate:
    """(N, L, C) -> (N, (L - 1) * stride + 1, C): stride - 1 zeros between positions."""

    stride: int
    OP: ClassVar[str] = "dilate"
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    SCALARS: ClassVar[tuple[str, ...]] = ("stride",)

    def __post_init__(self) -> None:
        if not 1 <= int(self.stride) <= MAX_STRIDE:
            raise BundleError(f"exact dilate needs a stride in 1..{MAX_STRIDE}, got {self.stride}")
        object.__setattr__(self, "stride", int(self.stride))

    def bound(self, x_bound: list[int]) -> list[int]:
        return x_bound

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, length, c = x.shape
        out = np.zeros((n, (length - 1) * self.stride + 1, c), dtype=np.int64)
        out[:, :: self.stride] = x
        return out


@dataclass(frozen=True, eq=False)
class Dilate2d:
    """(N, H, W, C) -> (N, (H - 1) * stride + 1, (W - 1) * stride + 1, C): stride - 1 zero rows
    between rows and zero columns between columns (zero insertion)."""

    stride: int
    OP: ClassVar[str] = "dilate2d"
    ARRAYS: ClassVar[tuple[str, ...]] = ()
    SCALARS: ClassVar[tuple[str, ...]] = ("stride",)

    def __post_init__(self) -> None:
        if not 1 <= int(self.stride) <= MAX_STRIDE:
            raise BundleError(f"exact dilate2d needs a stride in 1..{MAX_STRIDE}, got {self.stride}")
        object.__setattr__(self, "stride", int(self.stride))

    def bound(self, x_bound: list[int]) -> list[int]:
        return x_bound

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        s = self.stride
        out = np.zeros((n, (h - 1) * s + 1, (w - 1) * s + 1, c), dtype=np.int64)
        out[:, ::s, ::s] = x
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


Layer = Dense | Conv1d | Conv2d | Dilate | Dilate2d | Save | Add | Requant | Lookup
Weighted = Dense | Conv1d | Conv2d
KINDS: dict[str, type] = {k.OP: k for k in (Dense, Conv1d, Conv2d, Dilate, Dilate2d, Save, Add, Requant, Lookup)}
WEIGHTED = (Dense, Conv1d, Conv2d)
# which layout each map-shaped kind belongs to (the others work on any: they act on the channel axis)
LAYOUT_OF: dict[type, str] = {Conv1d: "channels_first", Dilate: "channels_first",
                              Conv2d: "channels_first_2d", Dilate2d: "channels_first_2d"}
