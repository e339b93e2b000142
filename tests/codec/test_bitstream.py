"""Packet format: round trip, overhead, and every corruption raising its documented error."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentwire.codec.coding import bitstream as B
from latentwire.codec.errors import (
    BadMagic,
    BitstreamError,
    ChecksumMismatch,
    InputError,
    ModelMismatch,
    TruncatedFrame,
    UnsupportedVersion,
)

MODEL = "ab" * 32
OTHER = "cd" * 32


def small_packet(**kw) -> bytes:
    args = dict(model_id=MODEL, quality=1, sample_shape=(1, 28, 28), count=1, payload=b"\x5a" * 15, residual=True)
    args.update(kw)
    return B.write_packet(**args)


def test_round_trip_and_overhead() -> None:
    pkt = small_packet()
    h, payload = B.read_packet(pkt, MODEL)
    assert bytes(payload) == b"\x5a" * 15
    assert h.version == 1 and h.quality == 1 and h.max_error is None and h.has_residual
    assert h.model_id_prefix == bytes.fromhex(MODEL)[:8] and h.sample_shape == (1, 28, 28) and h.count == 1
    assert h.packet_length == len(pkt) and h.recon_crc is None
    # documented in FORMAT.md: 23 bytes per packet for an MNIST frame (19 header + 4 CRC)
    assert len(pkt) - 15 == 23
    custom = B.write_packet(
        model_id=bytes.fromhex(MODEL), quality=B.CUSTOM_QUALITY, max_error=300, sample_shape=(2, 1024),
        count=4096, payload=b"", residual=True, recon_crc=0xDEADBEEF,
    )
    h2 = B.peek_header(custom, MODEL)
    assert (h2.quality, h2.max_error, h2.count, h2.recon_crc, h2.payload_length) == (255, 300, 4096, 0xDEADBEEF, 0)
    assert h2.sample_shape == (2, 1024) and h2.flags == B.FLAG_RESIDUAL | B.FLAG_RECON_CRC


def test_write_rejects_nonsense() -> None:
    for kw in (
        dict(quality=256), dict(quality=B.CUSTOM_QUALITY), dict(quality=2, max_error=3),
        dict(sample_shape=()), dict(sample_shape=(0, 3)), dict(count=0), dict(model_id="zz"),
        dict(quality=B.CUSTOM_QUALITY, max_error=3, residual=False),
    ):
        with pytest.raises(InputError):
            small_packet(**kw)


def test_truncated_at_every_length() -> None:
    pkt = small_packet(recon_crc=7)
    for n in range(len(pkt)):
        with pytest.raises(TruncatedFrame):
            B.read_packet(pkt[:n])


def test_every_single_bit_flip_is_caught() -> None:
    pkt = small_packet()
    header_len = B.peek_header(pkt).header_length
    for i in range(len(pkt)):
        for bit in range(8):
            bad = bytearray(pkt)
            bad[i] ^= 1 << bit
            with pytest.raises(BitstreamError) as info:
                B.read_packet(bytes(bad), MODEL)
            if i < 2:
                assert issubclass(info.type, BadMagic)  # CompactFrameNotPacket for 0x4C -> 0xCC
            elif i == 2:
                assert info.type is UnsupportedVersion
            elif 4 <= i < 13 or i >= header_len:  # model id, quality, payload, CRC
                assert info.type is ChecksumMismatch, (i, bit, info.type)


def test_specific_errors() -> None:
    pkt = small_packet()
    with pytest.raises(BadMagic):
        B.read_packet(b"PK\x03\x04" + pkt[4:])
    with pytest.raises(BadMagic):
        B.read_packet(b"x")
    with pytest.raises(TruncatedFrame):
        B.read_packet(b"")
    with pytest.raises(UnsupportedVersion):
        B.read_packet(pkt[:2] + b"\x02" + pkt[3:])
    with pytest.raises(UnsupportedVersion):
        B.read_packet(pkt[:3] + b"\x80" + pkt[4:])
    with pytest.raises(ModelMismatch):
        B.read_packet(pkt, OTHER)
    with pytest.raises(BitstreamError, match="follow the packet"):
        B.read_packet(pkt + b"\x00")
    with pytest.raises(InputError):
        B.read_packet(pkt, "not-hex")


def _forge(count: int = 1, ndim: int = 3, dims=(1, 28, 28), plen: int | None = None, payload=b"abc") -> bytes:
    """A packet with arbitrary field values and a CORRECT CRC, so only the field check can stop it."""
    body = bytearray(b"LW\x01\x01" + bytes.fromhex(MODEL)[:8] + b"\x01")
    body += B.write_uvarint(ndim) + b"".join(B.write_uvarint(d) for d in dims)
    body += B.write_uvarint(count) + B.write_uvarint(len(payload) if plen is None else plen) + payload
    return bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_absurd_lengths() -> None:
    B.read_packet(_forge())  # the forge itself is valid
    with pytest.raises(BitstreamError, match="frames"):
        B.read_packet(_forge(count=0))
    with pytest.raises(BitstreamError, match="frames"):
        B.read_packet(_forge(count=10**9))
    assert B.peek_header(_forge(count=10**6), max_count=10**6).count == 10**6
    with pytest.raises(BitstreamError, match="dims"):
        B.read_packet(_forge(ndim=100, dims=[1] * 100))
    with pytest.raises(BitstreamError, match="dim 1"):
        B.read_packet(_forge(dims=(1, 0, 28)))
    with pytest.raises(BitstreamError, match="elements"):
        B.read_packet(_forge(dims=(2**20, 2**20, 2**20)))
    with pytest.raises(BitstreamError, match="exceeds"):
        B.read_packet(_forge(plen=2**40))
    with pytest.raises(TruncatedFrame):
        B.read_packet(_forge(plen=1000))
    with pytest.raises(BitstreamError, match="non-canonical"):
        B.read_packet(b"LW\x01\x00" + b"\x00" * 9 + b"\x81\x00")
    with pytest.raises(BitstreamError, match="longer than 9"):
        B.read_packet(b"LW\x01\x00" + b"\x00" * 9 + b"\xff" * 12)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80) | st.builds(lambda tail: b"LW\x01" + tail, st.binary(max_size=60)))
def test_fuzz_any_bytes_give_header_or_bitstream_error(data: bytes) -> None:
    try:
        h, payload = B.read_packet(data)
        assert len(payload) == h.payload_length
    except BitstreamError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_packets(edits) -> None:
    original = small_packet(recon_crc=1, quality=B.CUSTOM_QUALITY, max_error=7)
    pkt = bytearray(original)
    for pos, val in edits:
        if pos < len(pkt):
            pkt[pos] = val
    try:
        h, payload = B.read_packet(bytes(pkt), MODEL)
    except BitstreamError:
        return  # damage refused, as it must be
    # accepted only when the edits left a packet whose CRC matches its bytes (e.g. no edit changed
    # anything): then the header describes exactly these bytes
    assert zlib.crc32(bytes(pkt[:-4])) == int.from_bytes(pkt[-4:], "little")
    assert h.packet_length == len(pkt) and len(payload) == h.payload_length
    assert h.model_id_prefix == original[4:12]  # the model check still held
