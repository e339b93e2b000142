"""Admission rules (server/admission.py) as plain functions, no gRPC: what a Publish message may
put into a channel, and what each refusal says."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from _transport import digits
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.server.admission import admit_packets, admit_raw
from latentwire.server.batcher import PacketItem, RawItem
from latentwire.v1 import latentwire_pb2 as pb


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load("default", provider="cpu", threads=1)


def _raw(arr: np.ndarray, dtype: str | None = None, shape: list[int] | None = None) -> pb.RawFrames:
    return pb.RawFrames(data=arr.tobytes(), dtype=dtype or arr.dtype.str, shape=shape or list(arr.shape))


def _admit_raw(codec: Codec, raw: pb.RawFrames, max_frames: int = 64):
    return admit_raw(codec, raw, max_frames=max_frames, quality=None, producer="p", offset=10)


def test_good_raw_frames_become_one_item_with_their_offsets(codec: Codec) -> None:
    v = _admit_raw(codec, _raw(digits(5)))
    assert v.refusals == [] and v.limit is None and isinstance(v.item, RawItem)
    assert v.item.n == 5 and v.item.n_total == 5 and v.item.producer_offset == 10
    assert list(v.item.index) == [0, 1, 2, 3, 4]


def test_raw_refusals_name_the_fix(codec: Codec) -> None:
    d = digits(3)
    cases = [
        (_raw(d, dtype="bogus"), "unknown dtype"),
        (_raw(d, shape=[2352]), "must be (N, *sample_shape)"),
        (_raw(d[:, :, :27, :27].copy(), shape=[3, 1, 28, 28]), "send arr.tobytes()"),
        (_raw(d.astype(np.float32)), "integer raw samples"),
    ]
    for raw, words in cases:
        v = _admit_raw(codec, raw)
        assert v.item is None and len(v.refusals) >= 1, words
        assert v.refusals[-1].code == grpc.StatusCode.INVALID_ARGUMENT and words in v.refusals[-1].message, (
            words, v.refusals)


def test_one_bad_frame_is_refused_alone(codec: Codec) -> None:
    d = digits(4).astype(np.int16)
    d[2, 0, 0, 0] = 300
    v = _admit_raw(codec, _raw(d))
    assert [(r.index, r.frames) for r in v.refusals] == [(2, 1)] and "frame 2" in v.refusals[0].message
    assert isinstance(v.item, RawItem) and list(v.item.index) == [0, 1, 3] and v.item.n_total == 4


def test_the_frame_limit_is_a_limit_not_a_format_error(codec: Codec) -> None:
    v = _admit_raw(codec, _raw(digits(9)), max_frames=8)
    assert v.item is None and v.limit and "limits.max_frames_per_message is 8" in v.limit
    assert v.refusals[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED and v.refusals[0].reason == "limit"


def test_packets_are_checked_one_by_one(codec: Codec) -> None:
    good = codec.encode(digits(4), quality=1)
    flipped = bytearray(good)
    flipped[-10] ^= 0x01
    wrong_shape = codec.encode(np.zeros((2, 1, 28, 28), np.uint8)).replace(b"", b"")  # a real packet, re-headed below
    header, payload = bitstream.read_packet(wrong_shape)
    wrong_shape = bitstream.write_packet(model_id=codec.model_id, quality=header.quality, sample_shape=(1, 27, 27),
                                         count=header.count, payload=bytes(payload))
    v = admit_packets(codec, [good, bytes(flipped), wrong_shape, good], max_frames=64, verify=True,
                      max_message_bytes=1 << 20, producer="p", offset=0)
    assert [r.index for r in v.refusals] == [1, 2]
    assert "ChecksumMismatch" in v.refusals[0].message and "sample shape" in v.refusals[1].message
    assert isinstance(v.item, PacketItem)
    # the good packets keep their frame offsets inside the message (producer offsets count frames)
    # (a packet whose CRC fails has no trustworthy frame count: it counts as one)
    assert [(count, at) for _, count, _, at in v.item.packets] == [(4, 0), (4, 7)] and v.item.n_total == 11


def test_a_garbage_payload_fails_its_reconstruction_crc(codec: Codec) -> None:
    good = codec.encode(digits(8), quality=3)
    header, payload = bitstream.read_packet(good)
    garbage = np.random.default_rng(1).integers(0, 256, len(payload), dtype=np.uint8).tobytes()
    forged = bitstream.write_packet(model_id=codec.model_id, quality=header.quality, sample_shape=header.sample_shape,
                                    count=header.count, payload=garbage, residual=True, recon_crc=header.recon_crc)
    checked = admit_packets(codec, [forged], max_frames=64, verify=True, max_message_bytes=1 << 20, producer="",
                            offset=0)
    assert checked.item is None and "does not decode" in checked.refusals[0].message
    trusted = admit_packets(codec, [forged], max_frames=64, verify=False, max_message_bytes=1 << 20, producer="",
                            offset=0)
    assert trusted.refusals == [] and trusted.item is not None  # verify_packets off: the CRC is all that is checked
