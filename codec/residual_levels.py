"""The max-error levels of a `Codec`: each frame of a residual packet with its latent, or classical.

Where the bundle has classical tables for the max error (coding/residual_classic.py), the sender
codes every frame both ways and keeps the fewer bytes: the latent + the colour-wavefront residual
against the model, or no latent and the residual against the frame's own decoded neighbours. On
a tie the classical frame wins: it needs no decoder run and decodes alike on every machine. The
choice is the sender's alone; the packet says what was chosen (FLAG_MODES, one mode symbol per
frame, coding/residual_modes.py), and a packet whose frames all send their latent keeps the
layout without modes. Split from codec.py, which calls ``encode_residual_packet``.

On 24 held-out BSDS500 test photos (benchmarks/results/classic-heldout-bsds24.json) the classical
mode won every photo at max errors 0 and 1, 22 at 2 and 14 at 4; bits per pixel fell from 9.80 /
7.23 / 5.85 / 4.18 (every photo with its latent, l7) to 8.81 / 6.41 / 5.20 / 3.87 (JPEG-LS after
a reversible colour transform: 9.55 lossless). Coding each frame both ways costs a second residual
pass at the sender (the receiver decodes one).

Series bundles (residual_series.py's classical levels: the walk on the raw signal, no model) choose
per window by ideal bits and squared error instead, at any packet size (``series_modes``).
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

import numpy as np

from .coding import bitstream
from .coding.bitstream import CUSTOM_QUALITY
from .coding.hyper_latents import HyperLatents
from .coding.payload import encode_payload, latent_frame_bits
from .coding.residual import ResidualEncoding
from .coding.residual_classic import MODE_CLASSIC, MODE_LATENT
from .coding.residual_modes import classic_coding
from .coding.residual_series import ResidualSeriesContext
from .coding.transform_mode import LAMBDA_PER_STEP2
from .errors import InputError

if TYPE_CHECKING:  # the Codec owns these levels; the import is for types only
    from .codec import Codec, LatentGrid

RESIDUAL_CHOICES = ("auto", "latent", "classic")  # per frame by cost (series_modes, _trial), or every frame one way
# "auto" on a photo packet of more frames than this chooses once for the whole packet (two whole
# encodes) instead of per frame: per-frame trials cost two one-frame encodes each, ~30x a packet of
# 256 digits' own encode, which a sender at thousands of frames per second cannot pay. The default
# of Codec.per_frame_trials; set it higher to buy per-frame choices with sender time (logged once
# per codec when a packet passes it)
PER_FRAME_TRIALS = 16
log = logging.getLogger(__name__)
_TOLD: weakref.WeakSet[Codec] = weakref.WeakSet()  # codecs whose sender was told about per_frame_trials


def choose_modes(codec: Codec, raw: np.ndarray, symbols: np.ndarray | HyperLatents, raw_float: np.ndarray, bound: int,
                 grid: LatentGrid) -> np.ndarray:
    """(N,) MODE_LATENT / MODE_CLASSIC: per frame, the mode whose one-frame payload is not larger
    (classical on ties). One-frame payloads are exact trial encodes, so each frame's latent, both
    residuals and the coder's flush are counted as a packet of that frame alone would spend them."""
    return np.array([_trial(codec, raw[i : i + 1], symbols[i : i + 1], raw_float[i : i + 1], bound, grid)[0]
                     for i in range(len(raw))], dtype=np.int64)


def rd_weight(max_error: int) -> float:
    """Bits one unit of squared error is worth at max error D: 1 / lambda with the transform levels'
    lambda = (ln 2 / 6) step^2 (coding/transform_mode.py), step = 2D + 1: the slope of a uniform
    quantizer at high rate, at its own MSE. At D = 0 nothing is lost and only bits count; at large
    D a classical window, whose error spreads over the whole bound, must save bits for it (ECG at
    max error 40: bytes alone chose classical windows with 4x the PRD of the latent ones)."""
    return 1.0 / (LAMBDA_PER_STEP2 * (2 * max_error + 1) ** 2)


def series_modes(codec: Codec, raw: np.ndarray, symbols: np.ndarray, raw_float: np.ndarray, bound: int,
                 grid: LatentGrid) -> np.ndarray:
    """(N,) per window of a series packet, the mode of lower cost bits + rd_weight(D) * squared error
    (classical on ties): the latent's bits plus its residual's against the classical residual's.
    The series walks are vectorised over the packet's windows, so every window chooses alone at
    any packet size, for about two more residual walks at the sender."""
    tables = codec.tables
    coding, model = tables.residual_coding, tables.residual
    classic = classic_coding(coding, bound)
    assert isinstance(coding, ResidualSeriesContext) and isinstance(classic, ResidualSeriesContext) and model
    weight = rd_weight(bound)
    bits, sse = coding.frame_costs(model, raw, raw_float, bound)
    latent = bits + weight * sse + latent_frame_bits(tables, symbols, codec.manifest.channel_axis, grid.step,
                                                     grid.level)
    bits, sse = classic.frame_costs(model, raw, np.zeros(raw.shape, dtype=np.float32), bound)
    return np.where(bits + weight * sse <= latent, MODE_CLASSIC, MODE_LATENT).astype(np.int64)


def _trial(codec: Codec, raw: np.ndarray, symbols: np.ndarray | HyperLatents, raw_float: np.ndarray, bound: int,
           grid: LatentGrid) -> tuple[int, tuple[bytes, ResidualEncoding | None]]:
    """One frame coded both ways -> (the mode that won, its payload and residual info)."""
    lat = _payload(codec, raw, symbols, raw_float, bound, grid, None)
    cla = _payload(codec, raw, symbols, raw_float, bound, grid, np.array([MODE_CLASSIC]))
    return (MODE_CLASSIC, cla) if len(cla[0]) <= len(lat[0]) else (MODE_LATENT, lat)


def _payload(codec: Codec, raw: np.ndarray, symbols: np.ndarray | HyperLatents, raw_float: np.ndarray, bound: int,
             grid: LatentGrid, modes: np.ndarray | None) -> tuple[bytes, ResidualEncoding | None]:
    return encode_payload(codec.tables, symbols, codec.manifest.channel_axis, x_raw=raw, raw_float=raw_float,
                          max_error=bound, latent_step=grid.step, latent_level=grid.level, hyper=codec.hyper,
                          modes=modes)


def encode_residual_packet(codec: Codec, raw: np.ndarray, symbols: np.ndarray | HyperLatents, raw_float: np.ndarray,
                           quality: int, bound: int, grid: LatentGrid, recon_crc: bool, mode: str = "auto") -> bytes:
    """One packet at max error ``bound``: raw (N, *sample_shape), the latents' symbols and the
    prediction for them (raw units). mode: RESIDUAL_CHOICES ("classic" needs the bundle's
    classical tables for bound)."""
    if mode not in RESIDUAL_CHOICES:
        raise InputError(f"residual_mode must be one of {RESIDUAL_CHOICES}, got {mode!r}")
    can = classic_coding(codec.tables.residual_coding, bound) is not None
    if mode == "classic" and not can:
        raise InputError(f"this bundle has no classical residual tables for max error {bound}: residual_mode "
                         "'classic' needs them (recalibrate it)")
    modes = None
    if can and mode == "classic":
        modes = np.full(len(raw), MODE_CLASSIC, dtype=np.int64)
    elif can and mode == "auto" and isinstance(codec.tables.residual_coding, ResidualSeriesContext):
        assert not isinstance(symbols, HyperLatents)
        modes = series_modes(codec, raw, symbols, raw_float, bound, grid)
        if not (modes == MODE_CLASSIC).any():
            modes = None
    elif can and mode == "auto":
        if len(raw) == 1:  # the trial payloads are the packet's own
            won, (payload, info) = _trial(codec, raw, symbols, raw_float, bound, grid)
            return _packet(codec, raw, quality, bound, recon_crc, payload, info, won == MODE_CLASSIC)
        if len(raw) > codec.per_frame_trials:  # the whole packet one way: the smaller of the two (classical on a tie)
            if codec not in _TOLD:
                log.info("residual_mode auto: a packet of %d frames is over per_frame_trials (%d): its frames take one "
                         "mode together (raise Codec.per_frame_trials to choose per frame)", len(raw),
                         codec.per_frame_trials)
                _TOLD.add(codec)
            lat = _payload(codec, raw, symbols, raw_float, bound, grid, None)
            cla = _payload(codec, raw, symbols, raw_float, bound, grid, np.full(len(raw), MODE_CLASSIC))
            classical = len(cla[0]) <= len(lat[0])
            payload, info = cla if classical else lat
            return _packet(codec, raw, quality, bound, recon_crc, payload, info, classical)
        modes = choose_modes(codec, raw, symbols, raw_float, bound, grid)
        if not (modes == MODE_CLASSIC).any():  # nothing to signal: the layout without modes
            modes = None
    payload, info = _payload(codec, raw, symbols, raw_float, bound, grid, modes)
    return _packet(codec, raw, quality, bound, recon_crc, payload, info, modes is not None)


def _packet(codec: Codec, raw: np.ndarray, quality: int, bound: int, recon_crc: bool, payload: bytes,
            info: ResidualEncoding | None, modes: bool) -> bytes:
    return bitstream.write_packet(
        model_id=codec.model_id, quality=quality, sample_shape=tuple(int(d) for d in raw.shape[1:]),
        count=int(raw.shape[0]), payload=payload, max_error=bound if quality == CUSTOM_QUALITY else None,
        residual=True, recon_crc=info.crc if (info is not None and recon_crc) else None,
        exact=codec.exact is not None, modes=modes,
    )
