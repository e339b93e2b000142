"""The versioned, checksummed packet: the only thing latentwire writes to a wire or a file.

A packet carries 1..N frames of one model, one quality and one sample shape whose symbols are
entropy-coded jointly in one payload (the transport batches frames; one frame per packet is the
compact per-frame mode). The layout is specified in codec/FORMAT.md; this module is its only
implementation. Reading never trusts a length field before checking it against the bytes that
exist and against sane limits, so any byte string yields a header or a BitstreamError subclass.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from ..errors import (
    BadMagic,
    BitstreamError,
    ChecksumMismatch,
    CompactFrameNotPacket,
    InputError,
    ModelMismatch,
    TruncatedFrame,
    UnsupportedVersion,
)

MAGIC = b"LW"
VERSION = 1
FLAG_RESIDUAL = 0x01  # the payload continues with the residual layer
FLAG_RECON_CRC = 0x02  # a CRC32 of the sender's reconstruction follows the frame count
FLAG_LOSSLESS = 0x04  # lossless fallback: the payload is zstd of the raw frames, no latents (codec/fallback.py)
FLAG_TRANSFORM = 0x08  # the payload continues with the transform residual (codec/coding/transform.py)
FLAG_EXACT = 0x10  # the residual was taken against the bundle's exact integer prediction (codec/coding/exact.py)
# per-frame modes, only with FLAG_TRANSFORM (some windows carry the transform of the raw window alone) or
# FLAG_RESIDUAL (some frames carry the classical residual, no latent: coding/residual_modes.py)
FLAG_MODES = 0x20
KNOWN_FLAGS = FLAG_RESIDUAL | FLAG_RECON_CRC | FLAG_LOSSLESS | FLAG_TRANSFORM | FLAG_EXACT | FLAG_MODES
# A compact stream frame (codec/coding/compact.py) starts with 0b110xxxxx; "LW" starts with 0x4C
COMPACT_MARKER_MASK = 0xE0
COMPACT_MARKER = 0xC0
CUSTOM_QUALITY = 0xFF  # quality byte meaning "custom max_error, varint follows"


class CodingPath(str, Enum):
    """Which route a packet's frames took, as its flags byte tells: the model alone, the model
    plus the bounded residual layer, or the lossless fallback (raw frames, no model)."""

    LATENT = "latent"
    RESIDUAL = "residual"
    LOSSLESS = "lossless"
    TRANSFORM = "transform"

    @classmethod
    def from_flags(cls, flags: int) -> CodingPath:
        if flags & FLAG_LOSSLESS:
            return cls.LOSSLESS
        if flags & FLAG_TRANSFORM:
            return cls.TRANSFORM
        return cls.RESIDUAL if flags & FLAG_RESIDUAL else cls.LATENT
MODEL_PREFIX_BYTES = 8

MAX_DIMS = 8
MAX_DIM = 2**31 - 1
MAX_SAMPLE_ELEMENTS = 2**31 - 1
MAX_MAX_ERROR = 2**30
DEFAULT_MAX_COUNT = 65536
DEFAULT_MAX_PAYLOAD = 1 << 30
_MAX_VARINT_BYTES = 9  # values < 2**63


@dataclass(frozen=True)
class PacketHeader:
    """Everything before the payload. ``max_error`` is set only for a custom quality (0xFF);
    ladder levels resolve through the bundle manifest's quality_levels."""

    version: int
    flags: int
    model_id_prefix: bytes
    quality: int
    max_error: int | None
    sample_shape: tuple[int, ...]
    count: int
    payload_length: int
    recon_crc: int | None = None
    header_length: int = 0

    @property
    def has_residual(self) -> bool:
        return bool(self.flags & FLAG_RESIDUAL)

    @property
    def has_transform(self) -> bool:
        """The payload continues with the transform residual (a level with a transform step)."""
        return bool(self.flags & FLAG_TRANSFORM)

    @property
    def has_modes(self) -> bool:
        """The payload starts with per-frame modes (a transform or residual packet whose frames do not all send
        the latent)."""
        return bool(self.flags & FLAG_MODES)

    @property
    def has_exact(self) -> bool:
        """The residual was taken against the exact integer prediction, not the float decoder's."""
        return bool(self.flags & FLAG_EXACT)

    @property
    def is_lossless(self) -> bool:
        """A lossless-fallback packet: raw frames (zstd), decoded without the model."""
        return bool(self.flags & FLAG_LOSSLESS)

    @property
    def path(self) -> CodingPath:
        return CodingPath.from_flags(self.flags)

    @property
    def packet_length(self) -> int:
        return self.header_length + self.payload_length + 4


# --------------------------------------------------------------------------------------------
# varints (unsigned LEB128, canonical)


def write_uvarint(value: int) -> bytes:
    v = int(value)
    if v < 0 or v >= 1 << 63:
        raise InputError(f"varint value out of range: {value}")
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_uvarint(buf: memoryview, pos: int, what: str) -> tuple[int, int]:
    """(value, new position). Truncation -> TruncatedFrame; over-long or non-canonical -> BitstreamError."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            raise TruncatedFrame(
                f"packet ends inside the {what} field (byte {pos + i}): the packet was cut short; "
                "check that the transport delivers whole packets"
            )
        b = buf[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if i and b == 0:
                raise BitstreamError(f"non-canonical varint in the {what} field at byte {pos}: corrupt packet")
            return value, pos + i + 1
    raise BitstreamError(f"varint in the {what} field at byte {pos} is longer than 9 bytes: corrupt packet")


# --------------------------------------------------------------------------------------------
# writing


def model_id_prefix(model_id: str | bytes) -> bytes:
    """The first 8 bytes of a model id given as its hex string (as in manifest.json) or raw bytes."""
    if isinstance(model_id, (bytes, bytearray, memoryview)):
        raw = bytes(model_id)
    else:
        try:
            raw = bytes.fromhex(str(model_id))
        except ValueError as exc:
            raise InputError(f"model id {model_id!r} is not a hex SHA-256 string") from exc
    if len(raw) < MODEL_PREFIX_BYTES:
        raise InputError(f"model id must have at least {MODEL_PREFIX_BYTES} bytes, got {len(raw)}")
    return raw[:MODEL_PREFIX_BYTES]


def write_packet(
    *,
    model_id: str | bytes,
    quality: int,
    sample_shape: tuple[int, ...],
    count: int,
    payload: bytes,
    max_error: int | None = None,
    residual: bool = False,
    recon_crc: int | None = None,
    lossless: bool = False,
    transform: bool = False,
    exact: bool = False,
    modes: bool = False,
) -> bytes:
    """Assemble one packet. ``quality`` is a ladder index 0..254, or CUSTOM_QUALITY with max_error.

    lossless: a fallback packet (FLAG_LOSSLESS); quality must be 0, no residual, no recon CRC.
    transform: the payload holds the transform residual (FLAG_TRANSFORM), never with the max-error one.
    exact: the max-error residual was taken against the exact integer prediction (FLAG_EXACT).
    modes: the payload starts with per-frame modes (FLAG_MODES); only with transform or residual.
    """
    prefix = model_id_prefix(model_id)
    q = int(quality)
    if lossless and (q != 0 or residual or recon_crc is not None or max_error is not None or transform):
        raise InputError("a lossless fallback packet has quality 0 and no residual layer or reconstruction CRC")
    if transform and (residual or q == CUSTOM_QUALITY):
        raise InputError("a packet carries the transform residual or the max-error residual, not both")
    if exact and not residual:
        raise InputError("the exact flag says what a max-error residual was taken against: pass residual=True")
    if modes and not (transform or residual):
        raise InputError("per-frame modes choose how a transform or max-error residual is coded: pass transform=True "
                         "or residual=True")
    if q == CUSTOM_QUALITY:
        if max_error is None or not 0 <= int(max_error) <= MAX_MAX_ERROR:
            raise InputError(f"custom quality needs max_error in 0..{MAX_MAX_ERROR}, got {max_error!r}")
        if not residual:
            raise InputError("a custom max_error is a residual-layer setting: pass residual=True")
    elif not 0 <= q < CUSTOM_QUALITY:
        raise InputError(f"quality must be a ladder index 0..254 or CUSTOM_QUALITY (255), got {quality}")
    elif max_error is not None:
        raise InputError("max_error is only written for CUSTOM_QUALITY; ladder levels live in the manifest")
    shape = tuple(int(d) for d in sample_shape)
    if not 1 <= len(shape) <= MAX_DIMS or any(not 1 <= d <= MAX_DIM for d in shape):
        raise InputError(f"sample_shape must have 1..{MAX_DIMS} positive dims, got {sample_shape}")
    elements = 1
    for d in shape:
        elements *= d
    if elements > MAX_SAMPLE_ELEMENTS:
        raise InputError(f"sample_shape {shape} has more than {MAX_SAMPLE_ELEMENTS} elements")
    if int(count) < 1:
        raise InputError(f"count must be >= 1, got {count}")
    flags = (
        (FLAG_RESIDUAL if residual else 0) | (FLAG_RECON_CRC if recon_crc is not None else 0)
        | (FLAG_LOSSLESS if lossless else 0) | (FLAG_TRANSFORM if transform else 0) | (FLAG_EXACT if exact else 0)
        | (FLAG_MODES if modes else 0)
    )
    body = bytearray(MAGIC)
    body += bytes([VERSION, flags])
    body += prefix
    body.append(q)
    if q == CUSTOM_QUALITY:
        body += write_uvarint(int(max_error))  # type: ignore[arg-type]
    body += write_uvarint(len(shape))
    for d in shape:
        body += write_uvarint(d)
    body += write_uvarint(int(count))
    if recon_crc is not None:
        body += struct.pack("<I", int(recon_crc) & 0xFFFFFFFF)
    payload = bytes(payload)
    body += write_uvarint(len(payload))
    body += payload
    body += struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    return bytes(body)


# --------------------------------------------------------------------------------------------
# reading


def _need(buf: memoryview, pos: int, n: int, what: str) -> None:
    if pos + n > len(buf):
        raise TruncatedFrame(
            f"packet ends inside the {what} (needs {pos + n} bytes, has {len(buf)}): the packet was cut "
            "short; check that the transport delivers whole packets"
        )


def read_packet(
    data: bytes | bytearray | memoryview,
    expected_model_id: str | bytes | None = None,
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    allow_trailing: bool = False,
) -> tuple[PacketHeader, memoryview]:
    """Validate one whole packet and return (header, payload view).

    allow_trailing: bytes after the packet's CRC are left alone instead of refused (a file or
    buffer of packets back to back; see ``iter_packets``).

    Raises BadMagic, UnsupportedVersion, TruncatedFrame, ChecksumMismatch, ModelMismatch, or
    BitstreamError for impossible field values; nothing else for any input bytes.
    """
    expected = None if expected_model_id is None else model_id_prefix(expected_model_id)
    try:
        buf = memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise InputError(f"a packet must be bytes-like, got {type(data).__name__}") from exc
    n = len(buf)
    if n < len(MAGIC):
        if bytes(buf) == MAGIC[:n]:
            raise TruncatedFrame(f"packet of {n} bytes ends before its magic number: empty or cut short")
        raise BadMagic(f"bytes start with {bytes(buf)!r}, not the latentwire magic {MAGIC!r}: not a latentwire packet")
    if bytes(buf[:2]) != MAGIC:
        if buf[0] & COMPACT_MARKER_MASK == COMPACT_MARKER:
            raise CompactFrameNotPacket(
                f"bytes start with 0x{buf[0]:02x}, not the magic {MAGIC!r}: a compact stream frame (codec/FORMAT.md, "
                "'Compact frames'), which decodes only with its stream's context (expand it first, "
                "codec.coding.compact), or a packet whose first byte was damaged")
        raise BadMagic(
            f"bytes start with {bytes(buf[:2])!r}, not the latentwire magic {MAGIC!r}: not a latentwire packet "
            "(wrong stream, an extra framing layer, or text/base64 encoding in transit)"
        )
    pos = 2
    _need(buf, pos, 1, "version byte")
    version = buf[pos]
    pos += 1
    if version != VERSION:
        raise UnsupportedVersion(
            f"packet format version {version}; this decoder reads version {VERSION}: install the latentwire "
            "version that wrote it, or have the sender encode with a matching one"
        )
    _need(buf, pos, 1, "flags byte")
    flags = buf[pos]
    pos += 1
    if flags & ~KNOWN_FLAGS:
        raise UnsupportedVersion(
            f"packet uses flags 0x{flags:02x}, unknown to this decoder (known 0x{KNOWN_FLAGS:02x}): "
            "upgrade latentwire on the receiver, or the packet is corrupt"
        )
    if flags & FLAG_LOSSLESS and flags & (FLAG_RESIDUAL | FLAG_RECON_CRC | FLAG_TRANSFORM):
        raise BitstreamError(
            f"flags 0x{flags:02x} combine the lossless fallback with a residual layer or recon CRC: corrupt packet"
        )
    if flags & FLAG_TRANSFORM and flags & FLAG_RESIDUAL:
        raise BitstreamError(f"flags 0x{flags:02x} combine the transform and the max-error residuals: corrupt packet")
    if flags & FLAG_EXACT and not flags & FLAG_RESIDUAL:
        raise BitstreamError(f"flags 0x{flags:02x} set the exact-prediction flag without a residual: corrupt packet")
    if flags & FLAG_MODES and not flags & (FLAG_TRANSFORM | FLAG_RESIDUAL):
        raise BitstreamError(f"flags 0x{flags:02x} set per-frame modes without a transform or max-error residual: "
                             "corrupt packet")
    _need(buf, pos, MODEL_PREFIX_BYTES, "model id")
    prefix = bytes(buf[pos : pos + MODEL_PREFIX_BYTES])
    pos += MODEL_PREFIX_BYTES
    _need(buf, pos, 1, "quality byte")
    quality = buf[pos]
    pos += 1
    max_error = None
    if flags & FLAG_LOSSLESS and quality != 0:
        raise BitstreamError(f"lossless fallback packet with quality {quality} (must be 0): corrupt packet")
    if quality == CUSTOM_QUALITY:
        max_error, pos = read_uvarint(buf, pos, "max_error")
        if max_error > MAX_MAX_ERROR:
            raise BitstreamError(f"custom max_error {max_error} exceeds {MAX_MAX_ERROR}: corrupt packet")
        if not flags & FLAG_RESIDUAL:
            raise BitstreamError("custom max_error without the residual flag: corrupt packet")
    ndim, pos = read_uvarint(buf, pos, "ndim")
    if not 1 <= ndim <= MAX_DIMS:
        raise BitstreamError(f"sample shape has {ndim} dims (allowed 1..{MAX_DIMS}): corrupt packet")
    dims = []
    elements = 1
    for i in range(ndim):
        d, pos = read_uvarint(buf, pos, f"dim {i}")
        if not 1 <= d <= MAX_DIM:
            raise BitstreamError(f"sample dim {i} is {d} (allowed 1..{MAX_DIM}): corrupt packet")
        elements *= d
        dims.append(d)
    if elements > MAX_SAMPLE_ELEMENTS:
        raise BitstreamError(f"sample shape {tuple(dims)} has {elements} elements: absurd, corrupt packet")
    count, pos = read_uvarint(buf, pos, "count")
    if not 1 <= count <= max_count:
        raise BitstreamError(
            f"packet claims {count} frames (allowed 1..{max_count}): corrupt packet, or raise max_count "
            "if the sender really batches that many"
        )
    recon_crc = None
    if flags & FLAG_RECON_CRC:
        _need(buf, pos, 4, "reconstruction CRC")
        (recon_crc,) = struct.unpack_from("<I", buf, pos)
        pos += 4
    payload_length, pos = read_uvarint(buf, pos, "payload length")
    if payload_length > max_payload:
        raise BitstreamError(
            f"payload length {payload_length} exceeds the limit {max_payload}: corrupt packet, or raise max_payload"
        )
    header_length = pos
    end = pos + payload_length + 4
    if n < end:
        raise TruncatedFrame(
            f"packet is {n} bytes but its header announces {end} (payload {payload_length} + CRC): the packet "
            "was cut short; check that the transport delivers whole packets"
        )
    if n > end and not allow_trailing:
        raise BitstreamError(
            f"{n - end} bytes follow the packet's CRC: packets were concatenated or framing is broken; "
            "pass exactly one packet"
        )
    (stored,) = struct.unpack_from("<I", buf, end - 4)
    actual = zlib.crc32(buf[: end - 4]) & 0xFFFFFFFF
    if stored != actual:
        raise ChecksumMismatch(
            f"CRC32 mismatch (stored 0x{stored:08x}, computed 0x{actual:08x}): the packet was altered in "
            "transit or storage; drop it and ask the sender to resend"
        )
    if expected is not None and prefix != expected:
        raise ModelMismatch(
            f"packet was coded by model {prefix.hex()}..., but this decoder holds model {expected.hex()}...: "
            "fetch the sender's bundle (latentwire bundle download) or route the stream to the right decoder"
        )
    header = PacketHeader(
        version=version,
        flags=flags,
        model_id_prefix=prefix,
        quality=quality,
        max_error=max_error,
        sample_shape=tuple(dims),
        count=count,
        payload_length=payload_length,
        recon_crc=recon_crc,
        header_length=header_length,
    )
    return header, buf[pos : pos + payload_length]


def peek_header(
    data: bytes | bytearray | memoryview,
    expected_model_id: str | bytes | None = None,
    *,
    max_count: int = DEFAULT_MAX_COUNT,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> PacketHeader:
    """Validate a packet (magic, version, lengths, CRC, model) without decoding its payload: what a
    relay/server needs before fanning a packet out."""
    return read_packet(data, expected_model_id, max_count=max_count, max_payload=max_payload)[0]


def iter_packets(
    data: bytes | bytearray | memoryview, expected_model_id: str | bytes | None = None
) -> Iterator[tuple[PacketHeader, memoryview]]:
    """Packets stored back to back (a .lw file): each is self-delimiting, so no extra framing.

    Yields (header, the whole packet's bytes); a damaged packet raises its error at its position.
    """
    buf = memoryview(data).cast("B")
    pos = 0
    while pos < len(buf):
        header, _ = read_packet(buf[pos:], expected_model_id, allow_trailing=True)
        end = pos + header.packet_length
        yield header, buf[pos:end]
        pos = end
