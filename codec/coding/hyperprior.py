"""Coding one packet's latents under the mean-scale hyperprior (the photo model "hyper2d").

A packet's latent part holds the side information z first, then the latent symbols y:

1. z_hat (B, N, hz, wz), one coding call, z channel c with z table c (a factorized table per
   channel, like the latent tables of a factorized-prior bundle), channel by channel, each
   channel's values in C order over (B, hz, wz);
2. the receiver runs the exact hyper-synthesis on z_hat, giving integer mean_code and scale_code
   (B, M, h, w) on grids of 2**-mean_frac_bits and 2**-scale_frac_bits;
3. y's symbols round(y*g - mu*g), one coding call, symbol (b, c, i, j) with Gaussian table
   ``table_ids(scale_code, level)`` (gaussian.py): grouped by table, ascending, each group in
   C order over (B, M, h, w); then that call's escapes.

Everything the receiver's table choice depends on is an integer (z_hat, scale_code, the stored
thresholds), so every machine decodes the same symbols. The floats only enter afterwards, in
``latent_values`` (float64 elementwise, no reduction), and in the sender's ``symbols_for``.
"""

from __future__ import annotations

import binascii
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .coder import StreamDecoder, StreamEncoder, as_int32, ideal_bits
from .gaussian import (
    DEFAULT_FRAC_BITS,
    MAX_FRAC_BITS,
    TAIL_MASS,
    TableChooser,
    check_scales,
    gaussian_tables,
    scale_table,
    scale_thresholds,
)
from .tables import DEFAULT_PRECISION, TableSet, pack_array, table_from_pmf, unpack_array

KIND = "gaussian-hyperprior"
HYPER_LATENT_VERSION = 1
THRESHOLD_DTYPE = "<i4"  # packed thresholds (gaussian.scale_thresholds keeps them inside int32)
FLOAT64_EXACT = 1 << 53  # |mean_code| below this: mean_code / 2**F is exact in float64


@dataclass(frozen=True)
class HyperLatentBits:
    """Ideal code length of one packet's hyperprior latents (escapes at their exact cost)."""

    z_bits: float
    y_bits: float

    @property
    def total(self) -> float:
        return self.z_bits + self.y_bits


@dataclass(frozen=True, eq=False)
class HyperLatentCoding:
    """What entropy.json stores for a hyperprior bundle (section kind ``gaussian-hyperprior``).

    z_tables: one table per z channel (N). gaussian: K zero-mean tables at ``scales``.
    thresholds (levels, M, K-1) int64 on the scale_code grid (gaussian.py gives the rule)."""

    z_tables: TableSet
    gaussian: TableSet
    scales: tuple[float, ...]
    thresholds: np.ndarray
    mean_frac_bits: int = DEFAULT_FRAC_BITS
    scale_frac_bits: int = DEFAULT_FRAC_BITS
    _chooser: TableChooser = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        try:
            check_scales(self.scales)
            chooser = TableChooser(self.thresholds)
        except InputError as exc:
            raise BundleError(f"hyperprior coding: {exc}") from exc
        t = chooser.thresholds
        if t.size and (int(t.min()) < -(2**31) or int(t.max()) >= 2**31):
            raise BundleError("hyperprior coding: thresholds leave int32 (the stored form)")
        t.setflags(write=False)
        object.__setattr__(self, "thresholds", t)
        object.__setattr__(self, "_chooser", chooser)
        k = len(self.scales)
        if len(self.gaussian) != k or t.shape[2] != k - 1:
            raise BundleError(
                f"hyperprior coding: {len(self.gaussian)} Gaussian tables and thresholds for {t.shape[2] + 1}, "
                f"expected one per scale ({k})"
            )
        if len(self.z_tables) < 1:
            raise BundleError("hyperprior coding: no z tables")
        widths = [tab.hi for tab in self.gaussian]
        if any(tab.lo != -tab.hi for tab in self.gaussian) or any(b < a for a, b in pairwise(widths)):
            raise BundleError("hyperprior coding: Gaussian tables must be centred on 0 and widen with the scale")
        for name, bits in (("mean_frac_bits", self.mean_frac_bits), ("scale_frac_bits", self.scale_frac_bits)):
            if not 0 <= int(bits) <= MAX_FRAC_BITS:
                raise BundleError(f"hyperprior coding: {name} {bits} not in 0..{MAX_FRAC_BITS}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HyperLatentCoding):
            return NotImplemented
        return self.dumps() == other.dumps()

    def __hash__(self) -> int:
        return hash(self.dumps())

    @property
    def levels(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def channels(self) -> int:
        """M: latent channels (y)."""
        return int(self.thresholds.shape[1])

    @property
    def z_channels(self) -> int:
        """N: side-information channels (z)."""
        return len(self.z_tables)

    # ------------------------------------------------------------------ table choice
    def table_ids(self, scale_code: np.ndarray, level: int) -> np.ndarray:
        """Gaussian table of every element: #{k : scale_code > thresholds[level, c, k]}; integers only."""
        return self._chooser(scale_code, level)

    # ------------------------------------------------------------------ coding
    def write(self, enc: StreamEncoder, z_hat: np.ndarray, y_symbols: np.ndarray, scale_code: np.ndarray,
              level: int, first: np.ndarray | None = None) -> None:
        """z_hat (B, N, hz, wz), then y_symbols (B, M, h, w) with the tables scale_code (B, M, h, w) picks;
        with ``first`` (a bool mask broadcasting to y's shape: a checkerboard's anchors), y in two
        calls: the elements it marks, then the rest, so the receiver can decode the first part before
        it knows the second part's tables.

        Everything is checked before the first symbol is coded, so a refusal leaves ``enc`` as it was."""
        rows = self._z_rows(z_hat)
        s = _integers(y_symbols, "y_symbols")
        if s.ndim != 4 or s.shape[0] != np.shape(z_hat)[0]:
            raise InputError(f"y_symbols must be (B, M, h, w) with z's batch {np.shape(z_hat)[0]}, got {s.shape}")
        s32 = as_int32(s)
        ids = self.table_ids(_same_shape(scale_code, s.shape), level)
        enc.encode_grouped(list(enumerate(rows)), self.z_tables)
        if first is None:
            enc.encode(s32.ravel(), ids.ravel(), self.gaussian)
            return
        mask = np.broadcast_to(np.asarray(first, dtype=bool), s.shape)
        for part in (mask, ~mask):
            enc.encode(s32[part], ids[part], self.gaussian)

    def read_z(self, dec: StreamDecoder, shape: Sequence[int]) -> np.ndarray:
        """z_hat (B, N, hz, wz) int32; run the exact hyper-synthesis on it before ``read_y``."""
        b, n, *rest = self._z_shape(shape)
        per = b * int(np.prod(rest))
        flat = dec.decode_grouped([(c, per) for c in range(n)], self.z_tables)
        return np.ascontiguousarray(np.moveaxis(flat.reshape((n, b, *rest)), 0, 1))

    def read_y(self, dec: StreamDecoder, scale_code: np.ndarray, level: int,
               where: np.ndarray | None = None) -> np.ndarray:
        """y's symbols, int32 of scale_code's shape (B, M, h, w); with ``where`` (a bool mask of that
        shape) only the elements it marks, in C order (one of ``write``'s two calls)."""
        code = np.asarray(scale_code)
        if where is None:
            return dec.decode(self.table_ids(code, level).ravel(), self.gaussian).reshape(code.shape)
        return dec.decode(self.table_ids(code, level)[where], self.gaussian)

    def ideal_bits(self, z_hat: np.ndarray, y_symbols: np.ndarray, scale_code: np.ndarray,
                   level: int) -> HyperLatentBits:
        """-sum log2 p under the stored integer tables (what ``write`` costs, to within the coder's
        few bytes of flush), without coding."""
        rows = self._z_rows(z_hat)
        z_ids = np.repeat(np.arange(rows.shape[0], dtype=np.int64), rows.shape[1])
        s = _integers(y_symbols, "y_symbols")
        ids = self.table_ids(_same_shape(scale_code, s.shape), level)
        return HyperLatentBits(
            z_bits=ideal_bits(rows.ravel(), z_ids, self.z_tables),
            y_bits=ideal_bits(s.ravel(), ids.ravel(), self.gaussian),
        )

    def _z_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        out = tuple(int(d) for d in shape)
        if len(out) != 4 or out[1] != self.z_channels or min(out) < 1:
            raise InputError(f"z must be (B, {self.z_channels}, hz, wz) with every size >= 1, got {out}")
        return out

    def _z_rows(self, z_hat: np.ndarray) -> np.ndarray:
        """(N, B*hz*wz) int32: row c is z channel c in stream order."""
        z = _integers(z_hat, "z_hat")
        self._z_shape(z.shape)
        return np.ascontiguousarray(np.moveaxis(as_int32(z), 1, 0).reshape(z.shape[1], -1))

    # ------------------------------------------------------------------ storage
    def to_json_obj(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "version": HYPER_LATENT_VERSION,
            "mean_frac_bits": int(self.mean_frac_bits),
            "scale_frac_bits": int(self.scale_frac_bits),
            "scales": list(self.scales),  # JSON floats round-trip float64 exactly (repr)
            "z_tables": self.z_tables.to_json_obj(),
            "gaussian_tables": self.gaussian.to_json_obj(),
            "thresholds": {"shape": list(self.thresholds.shape),
                           "packed": pack_array(self.thresholds, THRESHOLD_DTYPE)},
        }

    @cached_property
    def _dumped(self) -> str:
        return json.dumps(self.to_json_obj(), sort_keys=True, separators=(",", ":"))

    def dumps(self) -> str:
        """Canonical JSON (sorted keys, compact): equal codings give equal bytes."""
        return self._dumped

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> HyperLatentCoding:
        if not isinstance(obj, dict) or obj.get("kind") != KIND:
            raise BundleError(f"{where}: the hyperprior section is not of kind {KIND!r}; re-run calibration")
        if obj.get("version") != HYPER_LATENT_VERSION:
            raise BundleError(
                f"{where}: hyperprior section version {obj.get('version')!r}, this latentwire reads "
                f"{HYPER_LATENT_VERSION}: upgrade latentwire or re-calibrate the bundle"
            )
        try:
            shape = tuple(int(d) for d in obj["thresholds"]["shape"])
            flat = unpack_array(obj["thresholds"]["packed"], THRESHOLD_DTYPE)
            if len(shape) != 3 or int(np.prod(shape)) != flat.size:
                raise ValueError(f"{flat.size} thresholds for shape {shape}")
            return cls(
                z_tables=TableSet.from_json_obj(obj["z_tables"]),
                gaussian=TableSet.from_json_obj(obj["gaussian_tables"]),
                scales=tuple(float(s) for s in obj["scales"]),
                thresholds=flat.reshape(shape),
                mean_frac_bits=int(obj["mean_frac_bits"]),
                scale_frac_bits=int(obj["scale_frac_bits"]),
            )
        except BundleError as exc:
            raise BundleError(f"{where}: {exc}") from exc
        except (KeyError, TypeError, ValueError, binascii.Error, zlib.error) as exc:
            raise BundleError(f"{where}: malformed hyperprior section ({exc}); re-run calibration") from exc


def build_hyper_latent_coding(
    z_pmfs: tuple[Sequence[int], Sequence[np.ndarray]] | TableSet,
    gains: np.ndarray,
    *,
    scales: Sequence[float] | None = None,
    tail_mass: float = TAIL_MASS,
    precision: int = DEFAULT_PRECISION,
    mean_frac_bits: int = DEFAULT_FRAC_BITS,
    scale_frac_bits: int = DEFAULT_FRAC_BITS,
) -> HyperLatentCoding:
    """The coding a bundle stores, built once (calibration), float64 throughout.

    z_pmfs: (offsets, probabilities) per z channel as FactorizedDensity.pmf_tables returns them
    (tail mass beyond each range goes to ESCAPE), or ready tables. gains: (levels, M) positive,
    the per-level channel gains g (np.ones((1, M)) for a single-rate model). scales: the Gaussian
    tables' scales (default: gaussian.scale_table(), 64 from 0.11 to 256)."""
    if isinstance(z_pmfs, TableSet):
        z_tables = z_pmfs
    else:
        offsets, probs = z_pmfs
        if len(offsets) != len(probs) or not len(offsets):
            raise InputError(f"z pmfs: {len(offsets)} offsets and {len(probs)} probability arrays")
        z_tables = TableSet(tuple(table_from_pmf(p, int(o), precision) for o, p in zip(offsets, probs, strict=True)),
                            precision=precision)
    scale_list = scale_table() if scales is None else tuple(float(s) for s in scales)
    thresholds = scale_thresholds(np.asarray(gains, dtype=np.float64), scale_list, scale_frac_bits)
    return HyperLatentCoding(
        z_tables=z_tables,
        gaussian=gaussian_tables(scale_list, tail_mass, precision),
        scales=scale_list,
        thresholds=thresholds,
        mean_frac_bits=mean_frac_bits,
        scale_frac_bits=scale_frac_bits,
    )


# ---------------------------------------------------------------------- latent values


def _integers(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size and arr.dtype.kind not in "iu":
        raise InputError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr


def _same_shape(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape != shape:
        raise InputError(f"scale_code has shape {arr.shape}, the symbols {shape}")
    return arr


def exact_input(symbols: np.ndarray, mean_code: np.ndarray, gain: np.ndarray, frac_bits: int) -> np.ndarray:
    """What a hyperprior bundle's exact decoder takes (int64, the shape of symbols): y_hat * gain on
    the mean's grid, symbols * 2**F + rint(mean_code * gain).

    The float64 product of two exact operands is correctly rounded by IEEE 754 and rint is exact,
    so every machine computes the same integers; the exact network folds inverse_gain / 2**F into
    its first layer (training/quantize_exact2d.py). A coarser grid saves accumulator bits but not
    enough: 1/16 of a symbol moved 10 % of a photo's predicted values, against 0.9 % at 1/256."""
    s = _integers(symbols, "symbols")
    g = _channel_vector(gain, s.shape, "gain")
    mean = np.rint(_mean(mean_code, s.shape, frac_bits) * g * float(1 << frac_bits))
    return s.astype(np.int64) * (1 << frac_bits) + mean.astype(np.int64)


def _mean(mean_code: np.ndarray, shape: tuple[int, ...], frac_bits: int) -> np.ndarray:
    """mu = mean_code / 2**frac_bits in float64: exact (a power-of-two scaling of an integer < 2**53)."""
    code = _integers(mean_code, "mean_code")
    if code.shape != shape:
        raise InputError(f"mean_code has shape {code.shape}, the latents {shape}")
    if not 0 <= frac_bits <= MAX_FRAC_BITS:
        raise InputError(f"frac_bits must be in 0..{MAX_FRAC_BITS}, got {frac_bits}")
    if code.size and max(-int(code.min()), int(code.max())) >= FLOAT64_EXACT:
        raise InputError("mean_code beyond 2**53: not exact in float64")
    return code.astype(np.float64) / float(1 << frac_bits)


def _channel_vector(v: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    g = np.asarray(v, dtype=np.float64).reshape(-1)
    if len(shape) < 2 or g.shape != (shape[1],) or not np.all(np.isfinite(g)) or not np.all(g > 0):
        raise InputError(f"{name} must be {shape[1] if len(shape) > 1 else '?'} positive finite factors, got {g.shape}")
    return g.reshape((1, -1) + (1,) * (len(shape) - 2))


def symbols_for(y: np.ndarray, mean_code: np.ndarray, gain: np.ndarray, frac_bits: int) -> np.ndarray:
    """The sender's symbols: rint(y*g - mu*g) (half to even, like torch.round) in float64, int32.

    y (B, M, h, w) float, mean_code (B, M, h, w) integer, gain (M,) the level's channel gains.
    Only the sender evaluates this, so its rounding need not match any other machine's."""
    yy = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(yy)):
        raise InputError("latents hold NaN or Inf")
    g = _channel_vector(gain, yy.shape, "gain")
    s = np.rint(yy * g - _mean(mean_code, yy.shape, frac_bits) * g)
    if s.size and (s.min() < -(2**31) or s.max() > 2**31 - 1):
        raise InputError("latent symbols leave int32")
    return s.astype(np.int32)


def latent_values(symbols: np.ndarray, mean_code: np.ndarray, gain: np.ndarray, inverse_gain: np.ndarray,
                  frac_bits: int) -> np.ndarray:
    """The receiver's y_hat = (symbols + mu*g) * inverse_gain, float32 (what the synthesis sees).

    float64 elementwise products and sums, each correctly rounded by IEEE 754, with no reduction,
    then one rounding to float32: the same values on every machine."""
    s = _integers(symbols, "symbols")
    g = _channel_vector(gain, s.shape, "gain")
    inv = _channel_vector(inverse_gain, s.shape, "inverse_gain")
    return ((s.astype(np.float64) + _mean(mean_code, s.shape, frac_bits) * g) * inv).astype(np.float32)
