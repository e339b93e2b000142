"""Max-error residual packets whose frames choose their mode: with the latent, or classical.

A packet with FLAG_RESIDUAL and FLAG_MODES (codec/FORMAT.md, "Per-frame modes of residual
packets") codes, in its one range-coder stream: each frame's mode (MODE_LATENT or MODE_CLASSIC,
the transform levels' mode table), the latents of the MODE_LATENT frames only, the residual of
those frames against the model's prediction (colour wavefront for photos, the series walk for
series), then the residual of the MODE_CLASSIC frames with the bundle's classical tables (photos:
residual_classic.py; series: residual_series.py's model-free levels). Each group keeps its frame
order; the receiver puts the frames back where the modes say.
"""

from __future__ import annotations

import numpy as np

from ..errors import BitstreamError, InputError
from .coder import StreamDecoder, StreamEncoder
from .residual import ResidualEncoding, ResidualModel
from .residual_classic import MODE_CLASSIC, MODE_LATENT, MODE_TABLES
from .residual_colour import ResidualColourContext
from .residual_series import ResidualSeriesContext

MODES = (MODE_LATENT, MODE_CLASSIC)
CLASSIC_KINDS = (ResidualColourContext, ResidualSeriesContext)


def classic_coding(coding: object, max_error: int) -> ResidualColourContext | ResidualSeriesContext | None:
    """The classical tables that code max error D, or None where the bundle has none for it (the
    latent mode's tables must cover D too: a packet may hold either kind). Photos: the colour
    wavefront's classical tables; series: the series walk's classical levels."""
    if not isinstance(coding, CLASSIC_KINDS) or coding.classic is None:
        return None
    return coding.classic if coding.classic.covers(max_error) and coding.covers(max_error) else None


def check_modes(modes: np.ndarray, count: int) -> np.ndarray:
    m = np.asarray(modes)
    if m.shape != (count,) or not np.isin(m, MODES).all():
        raise InputError(f"modes must be {count} values, each 0 (latent) or 1 (alone, classical)")
    return m.astype(np.int64)


def write_modes(enc: StreamEncoder, modes: np.ndarray) -> None:
    enc.encode_grouped([(0, np.asarray(modes, dtype=np.int32))], MODE_TABLES)


def read_modes(dec: StreamDecoder, count: int) -> np.ndarray:
    m = dec.decode_grouped([(0, count)], MODE_TABLES).astype(np.int64)
    if not np.isin(m, MODES).all():
        raise BitstreamError("packet names a frame mode that does not exist: corrupt payload")
    return m


def write_residual(enc: StreamEncoder, coding: object, model: ResidualModel, x_raw: np.ndarray,
                   raw_float: np.ndarray, max_error: int, modes: np.ndarray) -> ResidualEncoding:
    """x_raw (N, C, H, W) of every frame; raw_float: the model's output for the MODE_LATENT frames,
    in order (or for all N frames: the others' rows are ignored)."""
    classic = classic_coding(coding, max_error)
    x = np.asarray(x_raw)
    m = check_modes(modes, len(x))
    if classic is None or not isinstance(coding, CLASSIC_KINDS):
        raise InputError(f"this bundle has no classical residual tables for max error {max_error} (recalibrate it)")
    lat = m == MODE_LATENT
    f = np.asarray(raw_float)
    if len(f) == len(x):
        f = f[lat]
    recon = np.empty(x.shape, dtype=np.int32)
    if lat.any():
        recon[lat] = coding.write(enc, model, x[lat], f, max_error).recon
    if not lat.all():
        recon[~lat] = classic.write(enc, model, x[~lat], np.zeros(x[~lat].shape, np.float32), max_error).recon
    n = len(x)
    return ResidualEncoding(recon=recon, shifts=np.zeros(n, dtype=np.int64), at_risk=np.zeros(n, dtype=bool))


def read_residual(dec: StreamDecoder, coding: object, model: ResidualModel, raw_float: np.ndarray, max_error: int,
                  modes: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
    """The reconstruction of every frame; raw_float: the model's output for the MODE_LATENT frames."""
    classic = classic_coding(coding, max_error)
    if classic is None or not isinstance(coding, CLASSIC_KINDS):
        raise BitstreamError(f"packet has per-frame modes at max error {max_error}, but this bundle has no classical "
                             "residual tables for it: foreign packet")
    lat = modes == MODE_LATENT
    if len(raw_float) != int(lat.sum()):
        raise InputError(f"{int(lat.sum())} frames send their latent, got the model's output for {len(raw_float)}")
    recon = np.empty((len(modes), *sample_shape), dtype=np.int32)
    if lat.any():
        recon[lat] = coding.read(dec, model, raw_float, max_error)
    if not lat.all():
        recon[~lat] = classic.read(dec, model, np.zeros((int((~lat).sum()), *sample_shape), np.float32), max_error)
    return recon
