"""The one-frame path: ``Codec.encode`` / ``Codec.decode`` of a single sample at a latent-only level.

A camera or sensor that sends each frame as it comes pays, per frame, for what the bulk path
spreads over a batch: layers of validation, the coder's grouping of symbols by table, header
assembly, onnxruntime's input conversion. Everything that does not depend on the frame is done
once per quality level here: the packet's header bytes, the tables in stream order, the gains,
and onnxruntime I/O bindings over preallocated buffers (one set per thread). Per frame what is
left is one onnxruntime call and one range-coder call per latent symbol.

It writes and reads exactly the bytes of the general path (tests/codec/test_frame_path.py holds
them equal) and declines, returning None, whatever it does not cover (a residual or transform
level, a context-coded level, a batch, another dtype, out-of-range values, an escaped symbol, a
packet with other header fields), so the general path remains the one place that explains errors.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .coding import bitstream
from .coding.coder import StreamDecoder, StreamEncoder
from .coding.quantize import dequantize_scaled, quantize_scaled
from .errors import BitstreamError

if TYPE_CHECKING:  # the Codec owns this path; the import is for types only
    from .codec import Codec

MAX_SYMBOLS = 512  # beyond this many latent symbols per frame the general path's array calls win


@dataclass(frozen=True)
class _Level:
    """What one latent-only quality level needs, fixed for every frame."""

    quality: int
    header: bytes  # the packet's bytes from the magic to the count field
    models: tuple[object, ...]  # constriction model of each latent symbol, in stream order
    lo: np.ndarray  # (n,) int64 table range of each symbol, stream order
    hi: np.ndarray
    escape: np.ndarray  # (n,) each symbol's escape index
    order: np.ndarray  # stream position -> flat C-order latent index
    identity: bool  # the stream order is C order (one latent axis, or one position per channel)
    step: float
    gain: np.ndarray | None
    inverse_gain: np.ndarray | None


class _Graph(threading.local):
    """One graph's per-thread I/O binding: onnxruntime reads and writes preallocated arrays
    (threading.local runs __init__ again in each thread that uses it)."""

    def __init__(self, session: ort.InferenceSession, names: tuple[str, str],
                 shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        self.session = session
        self.input = np.empty((1, *shapes[0]), np.float32)
        self.output = np.empty((1, *shapes[1]), np.float32)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(names[0], ort.OrtValue.ortvalue_from_numpy(self.input))
        self.binding.bind_ortvalue_output(names[1], ort.OrtValue.ortvalue_from_numpy(self.output))

    def run(self) -> np.ndarray:
        self.session.run_with_iobinding(self.binding)
        return self.output


class FramePath:
    """A Codec's one-frame fast path; built by the Codec, used by encode() and decode()."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        m = codec.manifest
        shape = tuple(codec.sample_shape)
        fixed = all(d is not None for d in shape) and m.spatial_dims == 0
        self.sample_shape: tuple[int, ...] = tuple(int(d) for d in shape) if fixed else ()  # type: ignore[arg-type]
        self.latent_shape: tuple[int, ...] = tuple(int(d) for d in m.latent_shape) if fixed else ()  # type: ignore[arg-type]
        self.levels: dict[int, _Level] = {}
        by_header: dict[bytes, _Level] = {}
        if fixed and math.prod(self.latent_shape) <= MAX_SYMBOLS:
            for q in codec.qualities:
                level = self._level(q.index)
                if level is not None:
                    self.levels[q.index] = level
                    by_header[level.header] = level
        self.by_header = by_header
        self.header_length = len(next(iter(by_header))) if by_header else 0
        norm = codec.normalization
        info = np.iinfo(codec.raw_dtype) if norm.is_integer else None
        # integer samples whose whole dtype lies inside the model's range need no range check
        self.range_free = info is not None and norm.raw_min <= info.min and info.max <= norm.raw_max

    def _level(self, quality: int) -> _Level | None:
        codec = self.codec
        q = codec.qualities[quality]
        if q.max_error is not None or q.transform_step is not None:
            return None
        step, level = q.latent_step, q.latent_level
        if codec.tables.context_for(step, level) is not None:
            return None
        tables = codec.tables.latent_for(step, level)
        # stream order: channel by channel (one table each), C order inside (payload._by_channel)
        axis = codec.manifest.channel_axis % len(self.latent_shape)
        flat = np.arange(math.prod(self.latent_shape)).reshape(self.latent_shape)
        order = np.moveaxis(flat, axis, 0).reshape(-1)
        channel = np.repeat(np.arange(self.latent_shape[axis]), order.size // self.latent_shape[axis])
        meta = tables.coding_meta
        header = bitstream.write_packet(model_id=codec.model_id, quality=quality, sample_shape=self.sample_shape,
                                        count=1, payload=b"")[:-5]  # drop payload length 0 and the CRC
        return _Level(
            quality=quality, header=header, models=tuple(meta.models[c] for c in channel),
            lo=meta.lo[channel].astype(np.int64), hi=meta.hi[channel].astype(np.int64),
            escape=meta.escape[channel].astype(np.int64), order=order,
            identity=bool((order == np.arange(order.size)).all()), step=step,
            gain=None if level is None else codec._gains[level],
            inverse_gain=None if level is None else codec._inverse_gains[level],
        )

    # built on first use, so a receiver never creates the encoder session (Codec's rule)
    @cached_property
    def _encoder(self) -> _Graph:
        return _Graph(self.codec.encoder.session, ("x", "y"), (self.sample_shape, self.latent_shape))

    @cached_property
    def _decoder(self) -> _Graph:
        return _Graph(self.codec.decoder.session, ("y_hat", "x_hat"), (self.latent_shape, self.sample_shape))

    # ------------------------------------------------------------------ encode
    def encode(self, raw: object, quality: int) -> bytes | None:
        level = self.levels.get(quality)
        if level is None or not isinstance(raw, np.ndarray) or raw.shape[1:] != self.sample_shape \
                or raw.shape[0] != 1 or raw.dtype != self.codec.raw_dtype:
            return None
        norm = self.codec.normalization
        if not self.range_free:
            lo, hi = raw.min(), raw.max()
            if not (norm.raw_min <= lo and hi <= norm.raw_max):  # NaN fails too: the general path says why
                return None
        graph = self._encoder
        graph.input[...] = norm.to_model(raw)
        symbols = quantize_scaled(graph.run(), level.step, level.gain).reshape(-1).astype(np.int64)
        if not level.identity:
            symbols = symbols[level.order]
        if (symbols < level.lo).any() or (symbols > level.hi).any():
            return None  # an escape: rare, and the general path codes it
        enc = StreamEncoder()
        enc.encode_indices((symbols - level.lo).tolist(), level.models)
        payload = enc.finish()
        body = level.header + bitstream.write_uvarint(len(payload)) + payload
        return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)

    # ------------------------------------------------------------------ decode
    def decode(self, packet: object) -> np.ndarray | None:
        if not isinstance(packet, bytes) or not self.by_header:
            return None
        level = self.by_header.get(packet[: self.header_length])
        if level is None:
            return None
        first = packet[self.header_length] if len(packet) > self.header_length else 0x80
        if first < 0x80:  # payloads under 128 bytes: a one-byte length
            length, pos = first, self.header_length + 1
        else:
            try:
                length, pos = bitstream.read_uvarint(memoryview(packet), self.header_length, "payload length")
            except BitstreamError:
                return None
        if pos + length + 4 != len(packet):
            return None
        (stored,) = struct.unpack_from("<I", packet, len(packet) - 4)
        if zlib.crc32(memoryview(packet)[:-4]) & 0xFFFFFFFF != stored:
            return None
        idx = np.asarray(StreamDecoder(packet[pos : pos + length]).decode_indices(level.models), dtype=np.int64)
        if (idx == level.escape).any():
            return None
        idx += level.lo
        symbols = idx.astype(np.int32) if level.identity else np.empty(idx.size, np.int32)
        if not level.identity:
            symbols[level.order] = idx
        graph = self._decoder
        graph.input[...] = dequantize_scaled(symbols.reshape(1, *self.latent_shape), level.step, level.inverse_gain)
        return self.codec._round_raw(self.codec.normalization.to_raw_float(graph.run()))
