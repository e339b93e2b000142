"""Compact frames: a one-frame packet without what its stream already said.

A stream of one-frame packets repeats 23 bytes in every packet (magic, version, flags, model id
prefix, quality, shape, count, payload length, a 4-byte CRC) around a payload of ~16 bytes (an
MNIST digit at q2); a compact frame keeps 3 of them. Inside a stream whose earlier packet named the
model, the quality and the sample shape, a frame needs only its flags, its payload and a short check (codec/FORMAT.md,
"Compact frames"). A compact frame is never a stored or decoded form: the receiving end expands it
back to the full packet, byte for byte the one the sender encoded, and everything after that
(stores, subscribers, ``Codec.decode``) sees only full packets.

The check is the low 16 bits of the full packet's own CRC32, so it covers the context too: a
frame expanded against the wrong stream context (another model, quality or shape) fails it
instead of decoding into garbage (1 in 65536 slips through; the transport's own checksum and the
packet's reconstruction CRC, when it has one, stand behind that).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import BitstreamError, ChecksumMismatch, MissingStreamContext, TruncatedFrame, UnsupportedVersion
from .bitstream import (
    COMPACT_MARKER as MARKER,
)
from .bitstream import (
    COMPACT_MARKER_MASK as MARKER_MASK,
)
from .bitstream import (
    CUSTOM_QUALITY,
    FLAG_EXACT,
    FLAG_LOSSLESS,
    FLAG_MODES,
    FLAG_RECON_CRC,
    FLAG_RESIDUAL,
    FLAG_TRANSFORM,
    KNOWN_FLAGS,
    MAGIC,
    VERSION,
    PacketHeader,
    read_packet,
    write_uvarint,
)

__all__ = ["MissingStreamContext", "StreamContext", "compact", "expand", "is_compact", "CompactWriter",
           "CompactReader", "RecordClock"]

MARKER_QUALITY = 0x10  # a quality byte follows the marker (the frame changes the stream's quality)
CHECK_BYTES = 2
MICROSECONDS = 1_000_000  # a compact record's commit time travels as a whole number of these after the previous
_CHECK_MASK = (1 << (8 * CHECK_BYTES)) - 1
COMPACT_FLAGS = 0x0F  # the flags a marker carries (its low nibble)
# FLAG_EXACT has no bit of its own in the nibble: it travels as FLAG_RESIDUAL | FLAG_TRANSFORM, a
# pair no packet holds (codec/FORMAT.md, "Compact frames"). A reader that predates it expands such
# a frame to a header that fails the check (ChecksumMismatch), so it refuses, never misdecodes.
_EXACT_PAIR = FLAG_RESIDUAL | FLAG_TRANSFORM
# FLAG_MODES travels as the lossless bit: lossless fallback packets are never compact, so the bit is
# free in a marker. A reader that predates it rebuilds a lossless + transform header, fails the
# check (ChecksumMismatch) and would refuse that flag pair anyway.
_MODES_BIT = FLAG_LOSSLESS


def is_compact(data: bytes | bytearray | memoryview) -> bool:
    """True for bytes that start like a compact frame (never true for a full packet)."""
    return len(data) > 0 and (data[0] & MARKER_MASK) == MARKER


@dataclass(frozen=True)
class StreamContext:
    """What a stream's last full (or expanded) packet said, which a compact frame leaves out."""

    model_id_prefix: bytes
    quality: int
    sample_shape: tuple[int, ...]

    @classmethod
    def of(cls, header: PacketHeader) -> StreamContext:
        return cls(header.model_id_prefix, header.quality, tuple(header.sample_shape))

    def header_bytes(self, flags: int, quality: int) -> bytes:
        """The full packet's bytes from the magic to the count field, for a one-frame packet."""
        body = bytearray(MAGIC)
        body += bytes([VERSION, flags])
        body += self.model_id_prefix
        body.append(quality)
        body += write_uvarint(len(self.sample_shape))
        for d in self.sample_shape:
            body += write_uvarint(d)
        body += write_uvarint(1)
        return bytes(body)


def compact(packet: bytes | bytearray | memoryview, context: StreamContext | None) -> bytes | None:
    """The compact form of ``packet`` inside a stream at ``context``, or None when it has none:
    no context yet, more than one frame, another model or shape, a custom max_error (its bound
    lives in the full header), or a lossless fallback packet (sent whole, it is rare)."""
    if context is None:
        return None
    header, payload = read_packet(packet)
    return _compact(packet, header, payload, context)


def _compact(packet: bytes | bytearray | memoryview, header: PacketHeader, payload: memoryview,
             context: StreamContext) -> bytes | None:
    """``compact`` on a packet already parsed by read_packet."""
    if (header.count != 1 or header.is_lossless or header.quality == CUSTOM_QUALITY
            or header.flags & ~(COMPACT_FLAGS | FLAG_EXACT | FLAG_MODES)
            or header.model_id_prefix != context.model_id_prefix
            or tuple(header.sample_shape) != context.sample_shape):
        return None
    out = bytearray()
    nibble = ((header.flags & COMPACT_FLAGS) | (_EXACT_PAIR if header.flags & FLAG_EXACT else 0)
              | (_MODES_BIT if header.flags & FLAG_MODES else 0))
    if header.quality == context.quality:
        out.append(MARKER | nibble)
    else:
        out.append(MARKER | MARKER_QUALITY | nibble)
        out.append(header.quality)
    if header.recon_crc is not None:
        out += struct.pack("<I", header.recon_crc)
    out += payload
    (crc,) = struct.unpack_from("<I", packet, len(packet) - 4)
    out += struct.pack("<H", crc & _CHECK_MASK)
    return bytes(out)


def expand(data: bytes | bytearray | memoryview, context: StreamContext | None) -> bytes:
    """A compact frame -> the full packet the sender encoded, checked against the 16-bit check.

    Raises MissingStreamContext (no context), UnsupportedVersion (not a compact frame of this
    version), TruncatedFrame, or ChecksumMismatch (wrong context, or bytes altered in transit)."""
    buf = memoryview(data).cast("B")
    if not is_compact(buf):
        raise UnsupportedVersion(
            f"bytes start with 0x{buf[0]:02x} if any, not a compact-frame marker (0b110xxxxx): "
            "not a compact frame" if len(buf) else "an empty compact frame")
    if context is None:
        raise MissingStreamContext(
            "a compact frame needs its stream's context (model, quality, sample shape) from an earlier full "
            "packet of the same stream, and this stream has none: send a full packet first (codec/FORMAT.md, "
            "'Compact frames')")
    marker = buf[0]
    flags = marker & COMPACT_FLAGS
    if flags & ~KNOWN_FLAGS:
        raise UnsupportedVersion(f"compact frame with flags 0x{flags:02x}, unknown to this decoder: upgrade latentwire")
    if flags & _EXACT_PAIR == _EXACT_PAIR:
        flags = (flags & ~FLAG_TRANSFORM) | FLAG_EXACT
    if flags & _MODES_BIT:
        flags = (flags & ~_MODES_BIT) | FLAG_MODES
    pos = 1
    quality = context.quality
    if marker & MARKER_QUALITY:
        if len(buf) < 2:
            raise TruncatedFrame("compact frame ends inside its quality byte: the frame was cut short")
        quality = buf[1]
        if quality == CUSTOM_QUALITY:
            raise BitstreamError("a compact frame cannot name the custom quality (0xFF): corrupt frame")
        pos = 2
    elif quality == CUSTOM_QUALITY:
        raise BitstreamError("a compact frame in a stream at a custom max_error must name its quality: corrupt frame")
    crc_len = 4 if flags & FLAG_RECON_CRC else 0
    if len(buf) < pos + crc_len + CHECK_BYTES:
        raise TruncatedFrame(f"compact frame of {len(buf)} bytes is shorter than its fixed fields: cut short")
    body = bytearray(context.header_bytes(flags, quality))
    body += buf[pos : pos + crc_len]
    payload = buf[pos + crc_len : len(buf) - CHECK_BYTES]
    body += write_uvarint(len(payload))
    body += payload
    crc = zlib.crc32(body) & 0xFFFFFFFF
    (check,) = struct.unpack_from("<H", buf, len(buf) - CHECK_BYTES)
    if crc & _CHECK_MASK != check:
        raise ChecksumMismatch(
            f"compact frame check mismatch (stored 0x{check:04x}, computed 0x{crc & _CHECK_MASK:04x}): the frame was "
            "altered in transit, or it belongs to another stream context (model, quality, shape)")
    body += struct.pack("<I", crc)
    return bytes(body)


class CompactWriter:
    """One stream's sending side: ``pack`` gives each packet's bytes for the wire, compact
    whenever the previous packet set a context that fits. Start a new writer per stream (a
    reconnect is a new stream: its first packet goes out whole)."""

    def __init__(self) -> None:
        self.context: StreamContext | None = None

    def pack(self, packet: bytes) -> bytes:
        """The bytes to send: ``packet`` itself (the same object) or its compact form."""
        header, payload = read_packet(packet)  # parsed once: the context and the compact form both need it
        small = None if self.context is None else _compact(packet, header, payload, self.context)
        self.context = StreamContext.of(header)
        return packet if small is None else small

    def observe(self, packet: bytes) -> None:
        """A packet sent whole by other means on the same stream: it sets the context too."""
        self.context = StreamContext.of(read_packet(packet)[0])


class CompactReader:
    """One stream's receiving side: ``unpack`` turns what ``CompactWriter.pack`` sent back into
    full packets. A full packet passes through (and sets the context); a frame it cannot expand
    raises and leaves the context as it was."""

    def __init__(self) -> None:
        self.context: StreamContext | None = None

    def unpack(self, data: bytes | bytearray | memoryview) -> bytes:
        packet = expand(data, self.context) if is_compact(data) else bytes(data)
        self.context = StreamContext.of(read_packet(packet)[0])
        return packet


class RecordClock:
    """Seq and commit time of a Subscribe stream's previous record, kept alike by the server and the
    client (proto: SubscribeRequest.compact_records). A compact record then leaves out its first
    seq when it follows the previous record, and carries its commit time as a microsecond delta
    (~3 bytes instead of a 9-byte double). Both ends add the same doubles, so rounding (< 0.5 us
    per record) never accumulates. Start a new clock per stream, as the compact writer."""

    def __init__(self) -> None:
        self.end_seq: int | None = None
        self.ts = 0.0

    def whole(self, first_seq: int, count: int, ts: float) -> None:
        """A record that travelled whole (its seq and time in full) sets the clock."""
        self.end_seq, self.ts = first_seq + count, ts

    def trim(self, first_seq: int, ts: float) -> tuple[int | None, int]:
        """The writer's side for a one-frame record: (first seq or None when it follows, delta in us)."""
        follows = first_seq == self.end_seq
        delta = round((ts - self.ts) * MICROSECONDS)
        self._step(first_seq, delta)
        return (None if follows else first_seq), delta

    def fill(self, first_seq: int | None, delta_us: int) -> tuple[int, float]:
        """The reader's side: (first seq, commit time) of a trimmed one-frame record."""
        if first_seq is None:
            if self.end_seq is None:
                raise MissingStreamContext("a compact record without its seq arrived before any record of its stream")
            first_seq = self.end_seq
        return first_seq, self._step(first_seq, delta_us)

    def _step(self, first_seq: int, delta_us: int) -> float:
        self.end_seq, self.ts = first_seq + 1, self.ts + delta_us / MICROSECONDS
        return self.ts
