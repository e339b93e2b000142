"""The transform levels of a `Codec` (series only): packets whose residual is coded in the transform
domain (coding/transform.py), each window with its latent or, where that is cheaper, alone
(coding/transform_mode.py). Split from codec.py, which calls these two functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .coding import bitstream
from .coding.payload import PayloadReader, encode_payload, latent_frame_bits
from .coding.residual import reconstruction_crc
from .coding.transform_mode import choose
from .errors import BitstreamError, BundleError, InputError

if TYPE_CHECKING:  # the Codec owns these levels; the import is for types only
    from .codec import Codec, LatentGrid


def exact_transform(codec: Codec) -> bool:
    """The bundle's transform levels reconstruct exactly (transform.KIND_WAVELET_EXACT): their
    prediction is the exact network's, so a receiver never runs decoder.onnx for them."""
    tr = codec.tables.transform
    if tr is None or not tr.exact:
        return False
    if codec.exact is None:
        raise BundleError("this bundle's transform tables are exact but it has no exact network (exact.npz): "
                          "re-run calibration")
    return True


def _prediction(codec: Codec, symbols: np.ndarray, grid: LatentGrid, shape: tuple[int, ...],
                reference_raw_float: np.ndarray | None) -> np.ndarray:
    """What the transform residual is taken against: the exact network's integers, or the float
    decoder's output (``reference_raw_float`` when the caller already ran it on this grid)."""
    if exact_transform(codec):
        return codec._residual_prediction(symbols, grid, shape)
    if grid == codec.reference_grid and reference_raw_float is not None:
        return reference_raw_float
    return codec._decode_symbols(codec.latent_values(symbols, grid), shape)


def encode_transform_packet(codec: Codec, raw: np.ndarray, symbols: np.ndarray,
                            reference_raw_float: np.ndarray | None, quality: int, grid: LatentGrid, step: float,
                            recon_crc: bool, target_prdn: float | None, mode: str = "auto") -> bytes:
    """One packet at transform level ``quality``: raw (N, C, L), the latents' symbols and, where
    the caller has it, the decoder's output on the reference grid (raw units). mode:
    transform_mode.CHOICES."""
    tr = codec.tables.transform
    if tr is None or raw.ndim != 3:
        raise InputError("transform residual levels need series samples (channels, length) and the bundle's "
                         "transform tables")
    raw_float = _prediction(codec, symbols, grid, tuple(int(d) for d in raw.shape[1:]), reference_raw_float)
    norm = codec.normalization
    axis = codec.manifest.channel_axis
    latent_bits = (latent_frame_bits(codec.tables, symbols, axis, grid.step, grid.level)
                   if mode == "auto" and tr.alone is not None else np.zeros(len(raw)))
    step_idx = None if target_prdn is not None else np.full(len(raw), tr.step_index(step), dtype=np.int64)
    got = choose(tr, raw, raw_float, latent_bits, step_idx=step_idx, target_prdn=target_prdn, raw_min=norm.raw_min,
                 raw_max=norm.raw_max, integer=norm.is_integer, choice=mode)
    payload, _ = encode_payload(codec.tables, symbols, axis, latent_step=grid.step, latent_level=grid.level,
                                transform=(got.q, got.step_idx), modes=got.modes)
    crc = reconstruction_crc(got.recon.astype(np.int64)) if recon_crc and norm.is_integer else None
    return bitstream.write_packet(model_id=codec.model_id, quality=quality,
                                  sample_shape=tuple(int(d) for d in raw.shape[1:]), count=int(raw.shape[0]),
                                  payload=payload, recon_crc=crc, transform=True, modes=got.modes is not None)


def decode_transform(codec: Codec, reader: PayloadReader, header: bitstream.PacketHeader, raw_float: np.ndarray,
                     modes: np.ndarray | None) -> np.ndarray:
    """The receiver's samples of a transform packet whose latents (if any) ``reader`` has read:
    raw_float, the decoder's output for the windows that sent their latent (all of them without
    modes; the exact network's for an exact_transform bundle), in order; modes as the packet's
    FLAG_MODES part said, or None."""
    tr = codec.tables.transform
    shape = tuple(header.sample_shape)
    if tr is None or len(shape) != 2:
        raise BitstreamError("packet has a transform residual, but this bundle has no transform tables for it")
    prediction = raw_float if modes is None else tr.prediction(raw_float, modes, shape)
    qc, idx = reader.transform(header.count, shape[0], shape[1], modes)
    norm = codec.normalization
    rec = tr.reconstruct(prediction, qc, idx, norm.raw_min, norm.raw_max, norm.is_integer)
    return rec.astype(np.int64) if norm.is_integer else rec
