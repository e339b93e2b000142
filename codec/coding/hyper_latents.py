"""A hyperprior bundle's latents through the codec: y and z in, integer codes out, and back.

Why apart from hyperprior.py: that module codes given integers; this one owns the order of the
steps around it, which both the sender and the receiver must follow exactly:

  sender:   z_hat = round(z)  ->  (mean_code, scale_code) = h_s(z_hat)  ->  symbols = rint(y*g - mu*g)
  receiver: z_hat from the stream  ->  the same h_s(z_hat)  ->  symbols from the stream, tables by scale_code
  both:     y_hat = (symbols + mu*g) * inverse_gain  ->  decoder.onnx

h_s is the exact integer hyper-synthesis (hyper.npz), so the receiver's table choices are the
sender's on every machine. A bundle trained at one rate has gains of 1.

With a checkerboard context in hyper.npz (exact_checkerboard.py), y goes in two halves:

  sender:   symbols as above  ->  the anchors' y_hat codes  ->  the context refines the other
            elements' (mean_code, scale_code)  ->  their symbols again around the new means
  receiver: the anchors' symbols (h_s's tables)  ->  the same context  ->  the rest (the new tables)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import BitstreamError, InputError
from .coder import StreamDecoder, StreamEncoder
from .exact_checkerboard import anchor_codes, anchor_mask
from .exact_hyper import ExactHyperSynthesis
from .hyperprior import HyperLatentCoding, exact_input, latent_values, symbols_for

HYPER_STRIDE = 4  # z has a quarter of the latent's resolution (two stride-2 convolutions in h_a)
# z_hat beyond this is refused by the sender: h_a's outputs are O(10) on real photos, and the
# exact hyper-synthesis proves its sums for inputs within its declared range
Z_LIMIT = 1 << 15


@dataclass(frozen=True, eq=False)
class HyperInput:
    """What the sender's encoder graph gives for N frames: the latent y (N, M, h, w) and z (N, Nz, hz, wz)."""

    y: np.ndarray
    z: np.ndarray

    def __getitem__(self, frames: slice) -> HyperInput:
        return HyperInput(self.y[frames], self.z[frames])


@dataclass(frozen=True, eq=False)
class HyperLatents:
    """One level's integer latents of N frames: what a packet carries (z, symbols) and what both
    sides compute from z (mean_code, scale_code)."""

    z: np.ndarray  # int32 (N, Nz, hz, wz)
    symbols: np.ndarray  # int32 (N, M, h, w)
    mean_code: np.ndarray  # int64 (N, M, h, w), mu = mean_code / 2**mean_frac_bits
    scale_code: np.ndarray  # int64 (N, M, h, w), log sigma = scale_code / 2**scale_frac_bits

    def __getitem__(self, frames: slice | np.ndarray) -> HyperLatents:
        """Some frames: a slice, or a boolean mask over them (the latent frames of a packet with modes)."""
        return HyperLatents(self.z[frames], self.symbols[frames], self.mean_code[frames], self.scale_code[frames])

    @property
    def count(self) -> int:
        return int(self.symbols.shape[0])


class HyperLatentPath:
    """The codec's hyperprior stage: coding tables + exact hyper-synthesis + the levels' gains."""

    def __init__(self, coding: HyperLatentCoding, synthesis: ExactHyperSynthesis, gains: Sequence[np.ndarray],
                 inverse_gains: Sequence[np.ndarray]) -> None:
        if len(gains) != len(inverse_gains):
            raise InputError(f"{len(gains)} gain vectors but {len(inverse_gains)} inverse gains")
        if len(gains) != coding.levels and not (not gains and coding.levels == 1):
            raise InputError(f"the hyperprior tables hold {coding.levels} levels, the bundle {len(gains)}")
        self.coding = coding
        self.synthesis = synthesis
        ones = np.ones(coding.channels, dtype=np.float64)
        self._gains = [np.asarray(g, dtype=np.float64).reshape(-1) for g in gains] or [ones]
        self._inverse = [np.asarray(g, dtype=np.float64).reshape(-1) for g in inverse_gains] or [ones]

    def with_coding(self, coding: HyperLatentCoding) -> HyperLatentPath:
        """The same stage with other tables (calibration refits them)."""
        return HyperLatentPath(coding, self.synthesis, self._gains, self._inverse)

    def with_synthesis(self, synthesis: ExactHyperSynthesis) -> HyperLatentPath:
        """The same stage with another exact synthesis (a checkerboard context added or removed)."""
        return HyperLatentPath(self.coding, synthesis, self._gains, self._inverse)

    @property
    def gains(self) -> list[np.ndarray]:
        """Each level's channel gains (M,), float64; [ones] for a single-rate bundle."""
        return list(self._gains)

    def prior_codes(self, latents: HyperInput) -> tuple[np.ndarray, np.ndarray]:
        """h_s's (mean_code, scale_code) for these frames, before any checkerboard refinement (what a
        context trains on)."""
        _, _, mean_code, scale_code = self._side(latents)
        return mean_code, scale_code

    def _index(self, level: int | None) -> int:
        k = 0 if level is None else int(level)
        if not 0 <= k < len(self._gains):
            raise InputError(f"latent level {level} does not exist (0..{len(self._gains) - 1})")
        return k

    def _codes(self, z_hat: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        mean_code, scale_code = self.synthesis(z_hat, size)
        return np.asarray(mean_code, dtype=np.int64), np.asarray(scale_code, dtype=np.int64)

    def quantize(self, latents: HyperInput, level: int | None) -> HyperLatents:
        """The sender's integers for one level."""
        y, z_int, mean_code, scale_code = self._side(latents)
        return self._level(y, z_int, mean_code, scale_code, self._index(level))

    def quantize_levels(self, latents: HyperInput) -> list[HyperLatents]:
        """Every level's integers for the same frames, level 0 first: z and the hyper-synthesis do not
        depend on the level, so they are computed once (calibration counts every level's symbols)."""
        y, z_int, mean_code, scale_code = self._side(latents)
        return [self._level(y, z_int, mean_code, scale_code, k) for k in range(len(self._gains))]

    def _level(self, y: np.ndarray, z_int: np.ndarray, mean_code: np.ndarray, scale_code: np.ndarray,
               k: int) -> HyperLatents:
        """One level's symbols around h_s's means; with a context, the non-anchors' again around its."""
        g = self._gains[k]
        symbols = symbols_for(y, mean_code, g, self.coding.mean_frac_bits)
        if self.synthesis.context is None:
            return HyperLatents(z_int, symbols, mean_code, scale_code)
        mean_code, scale_code = self._refine(symbols, mean_code, scale_code, k)
        return HyperLatents(z_int, symbols_for(y, mean_code, g, self.coding.mean_frac_bits), mean_code, scale_code)

    def _refine(self, symbols: np.ndarray, mean_code: np.ndarray, scale_code: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
        """The context's codes from the anchors' symbols (the other elements' symbols are not read)."""
        g = self._gains[k]
        anchors = anchor_codes(exact_input(symbols, mean_code, g, self.coding.mean_frac_bits), g)
        return self.synthesis.refine(anchors, mean_code, scale_code, k)

    @property
    def has_context(self) -> bool:
        """y is coded in two checkerboard halves (hyper.npz holds a context)."""
        return self.synthesis.context is not None

    def _side(self, latents: HyperInput) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(y, z_hat int32, mean_code, scale_code): the level-free part of ``quantize``."""
        y, z = np.asarray(latents.y), np.asarray(latents.z)
        if y.ndim != 4 or z.ndim != 4 or z.shape[0] != y.shape[0]:
            raise InputError(f"hyperprior latents must be y (N, M, h, w) and z (N, Nz, hz, wz), got {y.shape}, "
                             f"{z.shape}")
        if not np.all(np.isfinite(z)):
            raise InputError("side latents z hold NaN or Inf")
        z_hat = np.rint(z)
        if z_hat.size and float(np.max(np.abs(z_hat))) >= Z_LIMIT:
            raise InputError(f"side latent z reaches {float(np.max(np.abs(z_hat))):.0f} (limit {Z_LIMIT}): the input "
                             "is far from anything the model was trained on")
        z_int = z_hat.astype(np.int32)
        mean_code, scale_code = self._codes(z_int, (int(y.shape[2]), int(y.shape[3])))
        return y, z_int, mean_code, scale_code

    def values(self, latents: HyperLatents, level: int | None) -> np.ndarray:
        """y_hat (N, M, h, w) float32: what decoder.onnx is fed, the same on both sides."""
        k = self._index(level)
        return latent_values(latents.symbols, latents.mean_code, self._gains[k], self._inverse[k],
                             self.coding.mean_frac_bits)

    def unrounded_values(self, y: np.ndarray, level: int | None) -> np.ndarray:
        """y * gain * inverse gain: what decoder.onnx would be fed at a level if nothing were rounded,
        the transforms' own quality ceiling there (benchmarks.photo_ceiling)."""
        k = self._index(level)
        return (np.asarray(y, dtype=np.float64) * (self._gains[k] * self._inverse[k]).reshape(1, -1, 1, 1)).astype(
            np.float32)

    @property
    def input_frac_bits(self) -> int:
        """The fractional bits of exact_input's grid: the mean's."""
        return self.coding.mean_frac_bits

    def exact_input(self, latents: HyperLatents, level: int | None) -> np.ndarray:
        """The exact decoder's integer input (hyperprior.exact_input): y_hat * gain on a fixed grid."""
        return exact_input(latents.symbols, latents.mean_code, self._gains[self._index(level)],
                           self.coding.mean_frac_bits)

    def write(self, enc: StreamEncoder, latents: HyperLatents, level: int | None) -> None:
        first = anchor_mask(*latents.symbols.shape[2:]) if self.has_context else None
        self.coding.write(enc, latents.z, latents.symbols, latents.scale_code, self._index(level), first)

    def read(self, dec: StreamDecoder, count: int, latent_shape: tuple[int, ...], level: int | None) -> HyperLatents:
        """A packet's latents: z, then the exact h_s on it, then y with the tables it picks."""
        if len(latent_shape) != 3:
            raise BitstreamError(f"hyperprior latents are (channels, h, w), the packet implies {latent_shape}")
        _, h, w = (int(d) for d in latent_shape)
        z_shape = (count, self.coding.z_channels, -(-h // HYPER_STRIDE), -(-w // HYPER_STRIDE))
        z_hat = self.coding.read_z(dec, z_shape)
        mean_code, scale_code = self._codes(z_hat, (h, w))
        k = self._index(level)
        if not self.has_context:
            return HyperLatents(z_hat, self.coding.read_y(dec, scale_code, k), mean_code, scale_code)
        first = np.broadcast_to(anchor_mask(h, w), scale_code.shape)
        symbols = np.zeros(scale_code.shape, dtype=np.int32)
        symbols[first] = self.coding.read_y(dec, scale_code, k, first)
        mean_code, scale_code = self._refine(symbols, mean_code, scale_code, k)
        symbols[~first] = self.coding.read_y(dec, scale_code, k, ~first)
        return HyperLatents(z_hat, symbols, mean_code, scale_code)


def concat_latents(parts: Sequence[HyperLatents]) -> HyperLatents:
    """Frames of several batches of one size, in order (calibration codes them in batches)."""
    if not parts:
        raise InputError("no hyperprior latents to join")
    return HyperLatents(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("z", "symbols", "mean_code", "scale_code")))
