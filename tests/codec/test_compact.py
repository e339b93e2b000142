"""Compact stream frames (codec/coding/compact.py, FORMAT.md "Compact frames"): a one-frame
packet inside a stream, without what the stream already said, expanded back byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.compact import (
    CompactReader,
    CompactWriter,
    RecordClock,
    StreamContext,
    compact,
    expand,
    is_compact,
)
from latentwire.codec.errors import (
    BitstreamError,
    ChecksumMismatch,
    CompactFrameNotPacket,
    MissingStreamContext,
    TruncatedFrame,
)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load("default", provider="cpu", threads=1)


@pytest.fixture(scope="module")
def raw(codec: Codec):
    import numpy as np

    with np.load(Path(__file__).resolve().parents[2] / "codec" / "assets" / "mnist_test_sample.npz") as z:
        return z["samples"][:60]


def _latent_levels(codec: Codec) -> list[int]:
    return [q.index for q in codec.qualities if q.max_error is None]


def test_a_stream_of_one_frame_packets_expands_to_the_very_packets_sent(codec: Codec, raw) -> None:
    residual = codec.default_quality
    qualities = [_latent_levels(codec)[-1]] * 20 + [residual] * 20 + [_latent_levels(codec)[0]] * 20
    writer, reader = CompactWriter(), CompactReader()
    saved = []
    for i, q in enumerate(qualities):
        packet = codec.encode(raw[i : i + 1], quality=q)
        wire = writer.pack(packet)
        assert reader.unpack(wire) == packet
        if i == 0:
            assert wire is packet  # the stream's first packet goes whole: it sets the context
        else:
            assert is_compact(wire)
            saved.append(len(packet) - len(wire))
    # a 23-byte header + CRC becomes a 1-byte marker + a 2-byte check; a quality change costs one
    # byte back (frames 20 and 40)
    assert saved[0] == 20 and saved[19] == 19 and saved[39] == 19
    assert set(saved) == {19, 20}


def test_compact_frames_need_their_context(codec: Codec, raw) -> None:
    q = _latent_levels(codec)[-1]
    first, second = (codec.encode(raw[i : i + 1], quality=q) for i in range(2))
    ctx = StreamContext.of(bitstream.peek_header(first))
    small = compact(second, ctx)
    assert small is not None and len(small) < len(second)
    with pytest.raises(MissingStreamContext, match="earlier full packet"):
        expand(small, None)
    with pytest.raises(CompactFrameNotPacket, match="compact stream frame"):
        codec.decode(small)  # a receiver handed a compact frame as a packet learns what it is
    # the wrong context (another quality, another shape, another model) fails the check
    for wrong in (StreamContext(ctx.model_id_prefix, ctx.quality + 1, ctx.sample_shape),
                  StreamContext(ctx.model_id_prefix, ctx.quality, (1, 28, 29)),
                  StreamContext(b"\0" * 8, ctx.quality, ctx.sample_shape)):
        with pytest.raises(ChecksumMismatch, match="another stream context"):
            expand(small, wrong)
    flipped = bytearray(small)
    flipped[3] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        expand(bytes(flipped), ctx)
    with pytest.raises(TruncatedFrame):
        expand(small[:2], ctx)
    assert expand(small, ctx) == second


def test_what_is_never_compacted(codec: Codec, raw) -> None:
    q = _latent_levels(codec)[-1]
    ctx = StreamContext.of(bitstream.peek_header(codec.encode(raw[:1], quality=q)))
    assert compact(codec.encode(raw[:2], quality=q), ctx) is None  # two frames
    assert compact(codec.encode(raw[:1], max_error=5), ctx) is None  # a custom bound lives in the header
    assert compact(codec.encode_lossless(raw[:1]), ctx) is None  # the fallback goes whole
    assert compact(codec.encode(raw[:1], quality=q), None) is None  # no context yet


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_any_bytes_expand_to_a_packet_or_a_bitstream_error(data: bytes) -> None:
    ctx = StreamContext(bytes(range(8)), 2, (1, 28, 28))
    try:
        packet = expand(data, ctx)
    except BitstreamError:
        return
    header, _ = bitstream.read_packet(packet)  # what expand returns is always a well-formed packet
    assert StreamContext.of(header).sample_shape == ctx.sample_shape and header.count == 1


def test_record_clocks_agree_to_the_microsecond_without_drift() -> None:
    """A Subscribe stream's writer and reader clocks: a long run of one-frame records with
    irregular commit times and a gap (retention trimmed between two reads) reads back every seq
    exactly and every time within half a microsecond, however long the run."""
    import random

    rng = random.Random(7)
    writer, reader = RecordClock(), RecordClock()
    writer.whole(100, 40, 1_764_000_000.123456)  # a whole record (a packet of 40 frames) sets both
    reader.whole(100, 40, 1_764_000_000.123456)
    seq, ts = 140, 1_764_000_000.123456
    for i in range(20_000):
        seq += 1 + (500 if i == 9_000 else 0)  # one gap: that record names its seq
        ts += rng.uniform(0.0, 0.01) - (0.002 if i % 97 == 0 else 0.0)  # replicas' clocks may step back
        first, delta = writer.trim(seq - 1, ts)
        assert (first is None) == (i != 9_000)
        got_seq, got_ts = reader.fill(first, delta)
        assert got_seq == seq - 1 and abs(got_ts - ts) <= 0.5e-6
    assert reader.ts == writer.ts and reader.end_seq == writer.end_seq == seq


def test_a_trimmed_record_needs_its_stream() -> None:
    with pytest.raises(MissingStreamContext):
        RecordClock().fill(None, 1000)
