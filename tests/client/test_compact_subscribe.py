"""Compact frames on Subscribe streams (issue 15): a subscriber of one-frame packets pays for the
payload and a few bytes, not for a header its stream already named; what it hands out are still the
very packets the sender encoded, and a resume starts the context afresh."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from _transport import digits, running_server
from latentwire.client import Client
from latentwire.codec.codec import Codec
from latentwire.codec.coding.compact import is_compact
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc


@pytest.fixture()
def server(tiny_bundle: Path, tmp_path: Path):
    with running_server(tiny_bundle, tmp_path / "data") as s:
        yield s


def _publish_mixed(target: str, frames: np.ndarray) -> None:
    """40 one-frame packets at q0, one packet of 40 frames, 20 one-frame packets at q1."""
    with Client(target) as c:
        for result in (c.publish("digits", frames[:40], 0, True, frames_per_message=1),
                       c.publish("digits", frames[40:80], 0, True, frames_per_message=40),
                       c.publish("digits", frames[80:], 1, True, frames_per_message=1)):
            assert not result.errors and result.accepted == result.frames_sent


def test_subscribers_get_the_same_packets_for_fewer_bytes(server, tiny_bundle: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    frames = digits(100)
    _publish_mixed(target, frames)
    codec = Codec.load(tiny_bundle, provider="cpu", threads=1)
    with Client(target) as c:
        got = {flag: list(c.subscribe_packets("digits", 0, idle_timeout=1.0, compact=flag)) for flag in (True, False)}
        wire = {flag: sum(b.wire_bytes for b in c.subscribe_batches("digits", 0, idle_timeout=1.0, compact=flag))
                for flag in (True, False)}
        decoded = np.concatenate([b.frames for b in c.subscribe_batches("digits", 0, idle_timeout=1.0)])
    small, full = got[True], got[False]
    assert len(full) == 61 and [p.count for p in full] == [1] * 40 + [40] + [1] * 20
    # byte for byte the stored packets, with the record fields the full form carries
    assert [(p.first_seq, p.count, p.quality, p.sample_shape, p.payload, p.model_id) for p in small] == \
           [(p.first_seq, p.count, p.quality, p.sample_shape, p.payload, p.model_id) for p in full]
    assert [p.quality for p in small] == [0] * 41 + [1] * 20
    # commit times travel as microsecond deltas on compact records: exact to the microsecond
    assert max(abs(a.timestamp - b.timestamp) for a, b in zip(small, full, strict=True)) <= 1e-6
    assert all(b.timestamp > 1e9 for b in full)
    # 59 one-frame packets follow a packet that set their context (the first of each run at q1 names
    # its quality in one byte): ~20 header bytes and the count/quality/shape fields saved on each
    assert wire[False] - wire[True] >= 59 * 20, wire
    assert np.array_equal(decoded, np.concatenate([codec.decode(p.payload) for p in full]))


def test_the_first_record_of_every_stream_is_whole_and_the_rest_compact(server, tiny_bundle: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    frames = digits(100)
    _publish_mixed(target, frames)
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.LatentwireStub(ch)

        def records(from_seq: int, compact: bool, trim: bool = False) -> list[pb.PacketRecord]:
            call = stub.Subscribe(pb.SubscribeRequest(channel="digits", from_seq=from_seq, compact_frames=compact,
                                                      compact_records=trim))
            out: list[pb.PacketRecord] = []
            for resp in call:
                out.extend(resp.packets)
                if len(out) >= 61 - from_seq:
                    call.cancel()
                    break
            return out

        for start in (0, 25):  # a resume is a new stream: its first packet names everything again
            recs = records(start, True)
            assert recs[0].first_seq == start and not is_compact(recs[0].payload) and recs[0].count == 1
            assert recs[0].model_id and list(recs[0].sample_shape) == [1, 28, 28]
            assert all(is_compact(r.payload) and r.count == 0 and not r.sample_shape for r in recs[1 : 40 - start])
            bulk = recs[40 - start]
            assert not is_compact(bulk.payload) and bulk.count == 40  # many frames: always whole
            assert all(is_compact(r.payload) for r in recs[41 - start :])  # q1 names its quality in the frame
        # a client that does not ask gets full packets only
        assert not any(is_compact(r.payload) for r in records(0, False))
        # compact_records: compact records also leave out the seq that follows and the 9-byte time
        plain, trimmed = records(0, True), records(0, True, trim=True)
        assert [r.payload for r in trimmed] == [r.payload for r in plain]
        for a, b in zip(plain, trimmed, strict=True):
            if is_compact(a.payload):
                assert b.first_seq == 0 and b.timestamp == 0 and b.HasField("timestamp_delta_us")
                assert a.first_seq > 0 and a.timestamp > 1e9 and a.timestamp_delta_us == 0
            else:
                assert b == a and not b.HasField("timestamp_delta_us")
        assert sum(r.ByteSize() for r in plain) - sum(r.ByteSize() for r in trimmed) >= 59 * 7  # ~2 + 9 - 4 bytes
