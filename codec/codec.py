"""`Codec`: raw samples in, packets out, and back — the one object users, the server and the
client hold.

It strings the stages together in the one direction data flows (normalize -> encoder.onnx ->
quantize -> entropy code -> packet) and back, and owns the rule that the residual layer is taken
against the very reconstruction the receiver will compute (the sender runs decoder.onnx too, or,
in a bundle with an exact network, the integer prediction every machine computes alike).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import overload

import numpy as np

from .bundle import EXACT, HYPER, Bundle, QualityLevel
from .coding import bitstream
from .coding.bitstream import CUSTOM_QUALITY, CodingPath
from .coding.exact import IntegerNetwork
from .coding.exact_hyper import ExactHyperSynthesis
from .coding.fallback import AnomalyCalibration, ScoredEncoding, compress_raw, decompress_raw, frame_scores
from .coding.hyper_latents import HyperInput, HyperLatentPath, HyperLatents
from .coding.payload import CodingTables, PayloadReader, encode_payload
from .coding.quantize import dequantize_scaled, quantize_scaled
from .coding.residual import check_max_error, reconstruction_crc
from .coding.transform import MODE_LATENT
from .coding.transform_mode import CHOICES
from .errors import BitstreamError, BundleError, InputError, ReconstructionMismatch
from .frame import FramePath
from .raw_input import check_raw_samples
from .residual_levels import PER_FRAME_TRIALS, RESIDUAL_CHOICES, encode_residual_packet
from .runtime import Decoder, Encoder
from .transform_levels import decode_transform, encode_transform_packet, exact_transform

DEFAULT_BUNDLE = "default"


def grid_of(level: QualityLevel) -> LatentGrid:
    return LatentGrid(level.latent_step, level.latent_level)


@dataclass(frozen=True)
class LatentGrid:
    """How a level quantizes the latent: symbols round(y / step), or round(y * gain) for learned
    level ``level`` of a variable-rate bundle (step is then 1)."""

    step: float = 1.0
    level: int | None = None


def default_bundle_path() -> Path:
    """The pretrained MNIST bundle shipped inside the package."""
    return Path(str(resources.files("latentwire.codec.assets") / "mnist-dense"))


def resolve_bundle(bundle: str | Path | Bundle) -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    path = default_bundle_path() if str(bundle) == DEFAULT_BUNDLE else Path(bundle)
    return Bundle.load(path, verify=True)


class Codec:
    """Encodes batches of raw samples into packets and decodes packets back to raw samples."""

    def __init__(self, bundle: Bundle, provider: str = "auto", threads: int | None = None) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.model_id = bundle.model_id
        self.normalization = self.manifest.normalization
        self.raw_dtype = np.dtype(self.normalization.raw_dtype)
        self.sample_shape = tuple(self.manifest.sample_shape)
        self._provider = provider
        self._threads = threads
        self.tables = CodingTables.load(bundle.file("entropy.json"))
        self.per_frame_trials = PER_FRAME_TRIALS  # residual_levels.py: photo packets choose per frame up to this size
        self.qualities = list(self.manifest.quality_levels)
        if not self.qualities:
            raise InputError(f"bundle {bundle.path} has no quality levels: run `latentwire calibrate` on it")
        levels = self.manifest.latent_levels
        broadcast = (1, -1) + (1,) * self.manifest.spatial_dims
        self._gains = [lv.gain.reshape(broadcast) for lv in levels]
        self._inverse_gains = [lv.inverse_gain.reshape(broadcast) for lv in levels]
        bad = [q.name for q in self.qualities if q.latent_level is not None and not 0 <= q.latent_level < len(levels)]
        if bad:
            raise InputError(f"bundle {bundle.path}: quality levels {bad} name latent levels it does not have")
        # The model's own reconstruction (scores, custom max errors): the trained grid, or in a
        # variable-rate bundle its finest learned level (it was never trained at gain 1).
        self.reference_grid = LatentGrid(1.0, len(levels) - 1 if levels else None)
        # what every max-error level predicts from: a coarser step where calibration chose one (ladder.py)
        self.residual_grid = LatentGrid(self.manifest.residual_step, self.reference_grid.level)

    @classmethod
    def load(cls, bundle: str | Path | Bundle = DEFAULT_BUNDLE, provider: str = "auto",
             threads: int | None = None) -> Codec:
        return cls(resolve_bundle(bundle), provider=provider, threads=threads)

    # Sessions are built on first use: a receiver never pays for the encoder graph.
    @cached_property
    def encoder(self) -> Encoder:
        return Encoder(self.bundle, provider=self._provider, threads=self._threads)

    @cached_property
    def decoder(self) -> Decoder:
        return Decoder(self.bundle, provider=self._provider, threads=self._threads)

    @cached_property
    def exact(self) -> IntegerNetwork | None:
        """exact.npz's integer network, or None: every max-error residual is taken against it (coding/exact.py)."""
        if not self.manifest.has_exact:
            return None
        if self.hyper is not None and self.manifest.raw["exact"].get("input_frac_bits") != self.hyper.input_frac_bits:
            raise BundleError(f"{self.bundle.path}: its exact network was not built for hyperprior inputs on a grid of "
                              f"2**-{self.hyper.input_frac_bits} (re-run `latentwire quantize-exact`)")
        return IntegerNetwork.load(self.bundle.file(EXACT))

    def _residual_prediction(self, symbols: np.ndarray | HyperLatents, grid: LatentGrid,
                             sample_shape: Sequence[int]) -> np.ndarray:
        """What a max-error residual is taken against, in raw units: the exact network's integer
        prediction (as float32, which rint and clip leave unchanged) or the float decoder's output."""
        if self.exact is None:
            return self._decode_symbols(self.latent_values(symbols, grid), sample_shape)
        if self.exact.layout == "channels_first_2d":  # a photo network takes the reference level's symbols
            if grid != self.reference_grid:
                raise InputError("this bundle's exact network predicts from its reference level's symbols only")
            if isinstance(symbols, HyperLatents):  # y_hat * gain on a fixed grid: the mean is part of it
                if self.hyper is None:
                    raise InputError("hyperprior latents need a hyperprior bundle")
                symbols = self.hyper.exact_input(symbols, grid.level)
            return self.exact.predict_frames(symbols, tuple(sample_shape)).astype(np.float32)
        return self.exact.predict_frames(self.latent_values(symbols, grid), tuple(sample_shape)).astype(np.float32)

    @cached_property
    def hyper(self) -> HyperLatentPath | None:
        """A hyperprior bundle's latent stage (tables, exact hyper-synthesis, gains); None otherwise."""
        if not self.manifest.has_hyper:
            return None
        if self.tables.hyper is None:
            raise InputError(f"bundle {self.bundle.path} has a hyperprior but entropy.json lacks its tables: "
                             "re-run `latentwire calibrate` on it")
        levels = self.manifest.latent_levels
        return HyperLatentPath(self.tables.hyper, ExactHyperSynthesis.load(self.bundle.file(HYPER)),
                               [lv.gain for lv in levels], [lv.inverse_gain for lv in levels])

    def _encode_model(self, x: np.ndarray) -> np.ndarray | HyperInput:
        """encoder.onnx on model-domain x: the latent y, with the side latent z in a hyperprior bundle."""
        if self.hyper is None:
            return self.encoder.encode(x, validate=False)
        return HyperInput(*self.encoder.encode_with_side(x))

    @cached_property
    def frames(self) -> FramePath:
        """The one-frame fast path (frame.py): same bytes, less work per frame."""
        return FramePath(self)

    @property
    def default_quality(self) -> int:
        """The manifest's choice, else the first level with a residual layer (else 0)."""
        chosen = self.manifest.default_quality
        if chosen is not None and 0 <= chosen < len(self.qualities):
            return chosen
        return next((q.index for q in self.qualities if q.max_error is not None), 0)

    # ---------------------------------------------------------------- validation
    def validate(self, raw: np.ndarray) -> None:
        """Refuse what the model cannot take, saying what to change (shape, dtype, values)."""
        check_raw_samples(raw, self.sample_shape, self.normalization, self.raw_dtype)

    def _level(self, quality: int | None, max_error: int | None) -> tuple[int, int | None, LatentGrid]:
        if max_error is not None:
            if self.tables.residual is None:
                raise InputError("this bundle has no residual model, so max_error is not available")
            return CUSTOM_QUALITY, check_max_error(int(max_error)), self.residual_grid
        q = self.default_quality if quality is None else int(quality)
        if not 0 <= q < len(self.qualities):
            raise InputError(f"quality {q} does not exist: this bundle has levels 0..{len(self.qualities) - 1}")
        return q, self.qualities[q].max_error, grid_of(self.qualities[q])

    def _latent_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        m = self.manifest
        if not m.spatial_dims:
            return tuple(int(d) for d in m.latent_shape)  # type: ignore[arg-type]
        spatial = tuple(math.ceil(int(n) / m.latent_stride) for n in sample_shape[1:])
        return (m.latent_channels, *spatial)

    def _out_size(self, sample_shape: Sequence[int]) -> tuple[int, ...] | None:
        return tuple(int(n) for n in sample_shape[1:]) if self.manifest.spatial_dims else None

    # ---------------------------------------------------------------- encode / decode
    def encode(
        self, raw: np.ndarray, quality: int | None = None, max_error: int | None = None, recon_crc: bool = True,
        target_prdn: float | None = None, transform_mode: str = "auto", residual_mode: str = "auto",
    ) -> bytes:
        """N raw samples -> ONE packet, all frames coded jointly (a packet of one is the compact mode).

        With a residual level the packet carries, by default, a CRC of the reconstruction so a
        receiver whose decoder drifted (another provider) detects it instead of returning wrong data.
        target_prdn (series with a transform residual): each frame gets the coarsest transform step
        that keeps its PRDN (percent, about each channel's own mean) at or below the target; the
        latent part is quality's (default: the first level with a transform residual).
        transform_mode (transform levels): "auto" sends each window with its latent or, where that
        costs more, the transform of the window alone (coding/transform_mode.py); "latent" or
        "alone" sends every window so. residual_mode (max-error levels of a bundle with classical
        residual tables): "auto" sends each frame with its latent or classically, whichever codes
        smaller (photos; series weigh squared error too: residual_levels.py); "latent" or
        "classic" sends every frame so.
        """
        if transform_mode != "auto" and (transform_mode not in CHOICES or max_error is not None or (
                target_prdn is None and self.qualities[self._level(quality, None)[0]].transform_step is None)):
            raise InputError(f"transform_mode {transform_mode!r}: one of {CHOICES}, and other than 'auto' only at a "
                             "transform level (or with target_prdn)")
        if residual_mode not in RESIDUAL_CHOICES:
            raise InputError(f"residual_mode must be one of {RESIDUAL_CHOICES}, got {residual_mode!r}")
        if max_error is None and target_prdn is None and residual_mode == "auto":
            fast = self.frames.encode(raw, self.default_quality if quality is None else quality)
            if fast is not None:
                return fast
        self.validate(raw)
        if target_prdn is not None:
            if max_error is not None:
                raise InputError("give target_prdn or max_error, not both: one residual per packet")
            if not target_prdn > 0:
                raise InputError(f"target_prdn must be > 0 (percent), got {target_prdn}")
            quality = self._transform_level(quality)
        q, bound, grid = self._level(quality, max_error)
        y = self._encode_model(self.normalization.to_model(raw))
        return self._packet(raw, y, q, bound, grid, recon_crc, target_prdn=target_prdn, transform_mode=transform_mode,
                            residual_mode=residual_mode)

    def _transform_level(self, quality: int | None) -> int:
        levels = [lv.index for lv in self.qualities if lv.transform_step is not None]
        if not levels or self.tables.transform is None:
            raise InputError("this bundle has no transform residual levels: target_prdn needs one (calibrate with "
                             "levels such as l2+t8 or t8)")
        if quality is None:
            return levels[0]
        if int(quality) not in levels:
            raise InputError(f"quality {quality} has no transform residual; target_prdn takes one of {levels}")
        return int(quality)

    def _packet(
        self, raw: np.ndarray, y: np.ndarray | HyperInput, q: int, bound: int | None, grid: LatentGrid, recon_crc: bool,
        reference_raw_float: np.ndarray | None = None, target_prdn: float | None = None, transform_mode: str = "auto",
        residual_mode: str = "auto",
    ) -> bytes:
        """Validated raw frames and their continuous latents -> one packet at level (q, bound, grid).

        reference_raw_float: the decoder's output on the reference grid, when the caller already
        has it (scoring computes it), so a residual level there does not run the decoder twice."""
        symbols = self.quantize_latents(y, grid)
        step = None if q == CUSTOM_QUALITY else self.qualities[q].transform_step
        if step is not None:
            if isinstance(symbols, HyperLatents):
                raise InputError("transform residual levels are for series bundles, not hyperprior photo bundles")
            return encode_transform_packet(self, raw, symbols, reference_raw_float, q, grid, step, recon_crc,
                                           target_prdn, transform_mode)
        if bound is not None:
            if grid == self.reference_grid and reference_raw_float is not None and self.exact is None:
                raw_float = reference_raw_float
            else:
                raw_float = self._residual_prediction(symbols, grid, raw.shape[1:])
            return encode_residual_packet(self, raw, symbols, raw_float, q, bound, grid, recon_crc, residual_mode)
        payload, _ = encode_payload(self.tables, symbols, self.manifest.channel_axis, latent_step=grid.step,
                                    latent_level=grid.level, hyper=self.hyper)
        return bitstream.write_packet(model_id=self.model_id, quality=q, count=int(raw.shape[0]), payload=payload,
                                      sample_shape=tuple(int(d) for d in raw.shape[1:]))

    def encode_frames(self, raw: np.ndarray, quality: int | None = None, max_error: int | None = None) -> list[bytes]:
        """One packet per sample (compact per-frame mode): each frame decodable on its own."""
        return [self.encode(raw[i : i + 1], quality, max_error) for i in range(raw.shape[0])]

    # ---------------------------------------------------------------- anomaly score, fallback, features
    def _latent_only(self, raw: np.ndarray) -> tuple[np.ndarray | HyperInput, np.ndarray, np.ndarray]:
        """(continuous latents, the decoder's raw-unit float output for round(y), that output on
        the raw grid): the model's own reconstruction at latent step 1, whatever quality is sent."""
        self.validate(raw)
        y = self._encode_model(self.normalization.to_model(raw))
        grid = self.reference_grid
        raw_float = self._decode_symbols(self.latent_values(self.quantize_latents(y, grid), grid), raw.shape[1:])
        return y, raw_float, self._round_raw(raw_float)

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Per-frame anomaly score (N,): MSE in raw units of the latent-only reconstruction.

        Inputs unlike the training data reconstruct badly; compare with anomaly_threshold()."""
        return frame_scores(raw, self._latent_only(raw)[2])

    def denoise(self, raw: np.ndarray) -> np.ndarray:
        """The model's latent-only reconstruction of (noisy) frames, raw dtype: with a denoising
        variant, the clean sample it believes is behind a corrupted one. A receiver runs this on
        frames that came through a residual or lossless packet (it needs encoder.onnx too)."""
        return self._latent_only(raw)[2]

    def embed(self, raw: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Latent codes (N, *latent_shape) float32 before quantization: features for other models
        (a VAE gives its posterior mean). Runs in batches of batch_size, so memory stays flat."""
        self.validate(raw)
        parts = [np.asarray(self.encoder.encode(self.normalization.to_model(raw[i : i + batch_size]), validate=False),
                            dtype=np.float32) for i in range(0, raw.shape[0], batch_size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def anomaly(self) -> AnomalyCalibration | None:
        """The manifest's anomaly calibration (None before `latentwire calibrate`)."""
        return self.manifest.anomaly

    def anomaly_threshold(self, quantile: float | None = None) -> float:
        """Score threshold from the calibration data's error quantile (default: the bundle's choice)."""
        if self.anomaly is None:
            raise InputError(
                f"bundle {self.bundle.path} has no anomaly calibration: run `latentwire calibrate` on it, "
                "or pass threshold= explicitly"
            )
        return self.anomaly.threshold_at(quantile)

    def encode_lossless(self, raw: np.ndarray) -> bytes:
        """N raw frames -> one lossless fallback packet (zstd of the raw frames, FLAG_LOSSLESS)."""
        self.validate(raw)
        return bitstream.write_packet(
            model_id=self.model_id, quality=0, sample_shape=tuple(int(d) for d in raw.shape[1:]),
            count=int(raw.shape[0]), payload=compress_raw(raw, self.raw_dtype), lossless=True,
        )

    def encode_scored(
        self, raw: np.ndarray, quality: int | None = None, max_error: int | None = None, *,
        threshold: float | None = None, fallback: bool = True, per_frame: bool = False,
    ) -> ScoredEncoding:
        """Encode N frames and score each; with fallback, frames scoring above threshold (default:
        the bundle's calibrated one) go out losslessly instead. Frame order is kept: consecutive
        frames of one path share a packet (or one packet per frame with per_frame)."""
        level = self._level(quality, max_error)
        y, raw_float, recon = self._latent_only(raw)
        scores = frame_scores(raw, recon)
        limit = (self.anomaly_threshold() if threshold is None else float(threshold)) if fallback else None
        lossless = scores > limit if limit is not None else np.zeros(raw.shape[0], dtype=bool)
        runs: list[tuple[int, int]] = []
        start = 0
        for i in range(1, raw.shape[0] + 1):
            if per_frame or i == raw.shape[0] or lossless[i] != lossless[start]:
                runs.append((start, i))
                start = i
        packets = [
            self.encode_lossless(raw[a:b]) if lossless[a]
            else self._packet(raw[a:b], y[a:b], *level, True, reference_raw_float=raw_float[a:b])
            for a, b in runs
        ]
        return ScoredEncoding(packets, runs, scores, lossless, limit)

    def encode_with_fallback(
        self, raw: np.ndarray, quality: int | None = None, max_error: int | None = None, threshold: float | None = None,
    ) -> list[bytes]:
        """encode_scored(...).packets: anomalous frames arrive intact instead of silently destroyed."""
        return self.encode_scored(raw, quality, max_error, threshold=threshold).packets

    def path(self, packet: bytes | memoryview) -> CodingPath:
        """Which path the packet's frames took: CodingPath.LATENT, RESIDUAL or LOSSLESS (a str enum,
        equal to "latent", "residual", "lossless")."""
        return self.header(packet).path

    def header(self, packet: bytes | memoryview) -> bitstream.PacketHeader:
        """Validate a packet (magic, version, CRC, model id) without decoding it."""
        return bitstream.peek_header(packet, expected_model_id=self.model_id)

    @overload
    def quantize_latents(self, y: np.ndarray, grid: LatentGrid) -> np.ndarray: ...
    @overload
    def quantize_latents(self, y: HyperInput, grid: LatentGrid) -> HyperLatents: ...
    def quantize_latents(self, y: np.ndarray | HyperInput, grid: LatentGrid) -> np.ndarray | HyperLatents:
        """Continuous latents -> the integers a level sends: round(y / step), or round(y * gain), or a
        hyperprior bundle's z and symbols (with the codes its exact hyper-synthesis derives from z)."""
        if isinstance(y, HyperInput):
            if self.hyper is None or grid.step != 1.0:
                raise InputError("hyperprior latents need a hyperprior bundle's learned levels")
            return self.hyper.quantize(y, grid.level)
        return quantize_scaled(y, grid.step, None if grid.level is None else self._gains[grid.level])

    def latent_values(self, symbols: np.ndarray | HyperLatents, grid: LatentGrid) -> np.ndarray:
        """Integer symbols -> the latent values decoder.onnx consumes (symbols * step, or * inverse gain,
        or a hyperprior's (symbols + mean * gain) * inverse gain)."""
        if isinstance(symbols, HyperLatents):
            if self.hyper is None:
                raise InputError("hyperprior latents need a hyperprior bundle")
            return self.hyper.values(symbols, grid.level)
        return dequantize_scaled(symbols, grid.step, None if grid.level is None else self._inverse_gains[grid.level])

    def _decode_symbols(self, y_hat: np.ndarray, sample_shape: Sequence[int]) -> np.ndarray:
        x_hat = self.decoder.decode(y_hat, out_size=self._out_size(sample_shape))
        return self.normalization.to_raw_float(x_hat)

    def _round_raw(self, raw_float: np.ndarray) -> np.ndarray:
        if self.normalization.is_integer:
            raw_float = np.rint(raw_float)
        return raw_float.astype(self.raw_dtype)

    def _parse(self, packet: bytes | memoryview) -> tuple[bitstream.PacketHeader, memoryview, int | None, LatentGrid]:
        header, payload = bitstream.read_packet(packet, expected_model_id=self.model_id)
        want = self.manifest.sample_shape
        if len(header.sample_shape) != len(want) or any(
                d is not None and got != d for got, d in zip(header.sample_shape, want, strict=False)):
            raise BitstreamError(f"packet's sample shape {header.sample_shape} does not fit this bundle's "
                                 f"{tuple(want)} (None: any): corrupt or foreign packet")
        grid = self.residual_grid  # a custom max error's (a lossless-fallback packet has no latent)
        if header.is_lossless:
            return header, payload, None, grid
        if header.quality == CUSTOM_QUALITY:
            bound = header.max_error
        elif header.quality < len(self.qualities):
            bound = self.qualities[header.quality].max_error
            grid = grid_of(self.qualities[header.quality])
        else:
            raise BitstreamError(
                f"packet names quality {header.quality}, this bundle has 0..{len(self.qualities) - 1}: "
                "it was coded with a different bundle version"
            )
        if header.has_residual != (bound is not None):
            raise BitstreamError("packet's residual flag disagrees with its quality level: corrupt or foreign packet")
        transform_level = header.quality != CUSTOM_QUALITY and self.qualities[header.quality].transform_step is not None
        if header.has_transform != transform_level:
            raise BitstreamError("packet's transform flag disagrees with its quality level: corrupt or foreign packet")
        if header.has_exact != (bound is not None and self.manifest.has_exact):
            how = "exactly" if self.manifest.has_exact else "with the float decoder"
            raise BitstreamError(f"packet's exact-prediction flag disagrees with the bundle (it predicts {how}): "
                                 "foreign packet")
        return header, payload, bound, grid

    def decode(self, packet: bytes | memoryview) -> np.ndarray:
        """A packet -> (count, *sample_shape) raw samples of the bundle's raw dtype."""
        fast = self.frames.decode(packet)
        return fast if fast is not None else self.decode_many([packet])[0]

    def decode_many(self, packets: Sequence[bytes | memoryview]) -> list[np.ndarray]:
        """Several packets -> one array each, running decoder.onnx once per group of equal sample
        shape: Python and onnxruntime pay per call, so a receiver handed many small packets
        batches them. The output equals decoding each packet alone."""
        parsed = [self._parse(p) for p in packets]
        out: list[np.ndarray | None] = [None] * len(parsed)
        readers: list[PayloadReader | None] = [None] * len(parsed)
        latents: list[np.ndarray | None] = [None] * len(parsed)
        modes: list[np.ndarray | None] = [None] * len(parsed)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (h, payload, _, grid) in enumerate(parsed):
            if h.is_lossless:  # lossless fallback: the raw frames themselves, no model involved
                out[i] = decompress_raw(payload, self.raw_dtype, h.count, h.sample_shape)
                continue
            readers[i] = r = PayloadReader(payload, self.tables)
            # then only these frames' latents
            modes[i] = m = r.modes(h.count, residual=h.has_residual) if h.has_modes else None
            n = h.count if m is None else int((m == MODE_LATENT).sum())
            if n == 0:  # every frame came without its latent: nothing for decoder.onnx
                out[i] = self._finish(r, h, parsed[i][2], np.zeros((0, *h.sample_shape)), m)
                continue
            symbols: np.ndarray | HyperLatents
            if self.hyper is not None:
                symbols = r.hyper_latents(self.hyper, n, self._latent_shape(h.sample_shape), grid.level)
            else:
                symbols = r.latents(n, self._latent_shape(h.sample_shape), self.manifest.channel_axis, grid.step,
                                    grid.level)
            if h.has_exact or (h.has_transform and exact_transform(self)):  # no decoder.onnx for this packet
                out[i] = self._finish(r, h, parsed[i][2], self._residual_prediction(symbols, grid, h.sample_shape), m)
                continue
            latents[i] = self.latent_values(symbols, grid)
            groups.setdefault(h.sample_shape, []).append(i)
        for shape, idx in groups.items():
            raw_float = self._decode_symbols(np.concatenate([latents[i] for i in idx]), shape)
            start = 0
            for i in idx:
                header, _, bound, _ = parsed[i]
                n = len(latents[i])  # type: ignore[arg-type]
                out[i] = self._finish(readers[i], header, bound, raw_float[start : start + n],  # type: ignore[arg-type]
                                      modes[i])
                start += n
        return out  # type: ignore[return-value]

    def _finish(
        self, reader: PayloadReader, header: bitstream.PacketHeader, bound: int | None, raw_float: np.ndarray,
        modes: np.ndarray | None = None,
    ) -> np.ndarray:
        if header.has_transform:
            recon = decode_transform(self, reader, header, raw_float, modes)
        elif bound is None:
            return self._round_raw(raw_float)
        else:
            recon = reader.residual(raw_float, bound, modes, tuple(header.sample_shape))
        if header.recon_crc is not None and reconstruction_crc(recon) != header.recon_crc:
            raise ReconstructionMismatch(
                "the decoded samples differ from what the sender reconstructed (CRC mismatch): this "
                "receiver's decoder output drifted from the sender's (e.g. another execution provider); "
                "decode on the provider the sender used (provider='cpu')"
            )
        return recon.astype(self.raw_dtype)
