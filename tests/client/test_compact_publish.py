"""Compact frames on a real publish stream (issue 15): one frame per message costs the payload
and a few bytes, subscribers get the very packets the sender encoded, and a frame the server
cannot place is refused with a reason, never stored as garbage."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from _transport import digits, running_server
from latentwire.client import Client
from latentwire.codec.codec import Codec
from latentwire.codec.coding.compact import CompactWriter
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc


@pytest.fixture()
def server(tiny_bundle: Path, tmp_path: Path):
    with running_server(tiny_bundle, tmp_path / "data") as s:
        yield s


def test_one_frame_per_message_goes_compact_and_arrives_whole(server, tiny_bundle: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    frames = digits(60)
    codec = Codec.load(tiny_bundle, provider="cpu", threads=1)
    with Client(target) as c:
        full = c.publish("digits", frames, 0, True, frames_per_message=1, compact=False)
        small = c.publish("digits", frames, 0, True, frames_per_message=1)
        bulk = c.publish("digits", frames, 0, True, frames_per_message=60)
        stored = [p.payload for p in c.subscribe_packets("digits", 0, idle_timeout=1.0)]
    assert full.accepted == small.accepted == bulk.accepted == 60 and not small.errors
    # every frame after the stream's first saves the 20 header bytes the stream already named
    assert full.sent_bytes - small.sent_bytes >= 59 * 20
    per_frame = {r: res.sent_bytes / 60 for r, res in (("full", full), ("compact", small), ("bulk", bulk))}
    # a latent-only frame alone costs 3 framing bytes, 2 of protobuf and its coder flush more than
    # in a packet of 60 (the benchmark holds the issue's <= 6 B target, benchmarks/streaming.py)
    assert per_frame["compact"] <= per_frame["bulk"] + 7, per_frame
    # the server stored the very packets the sender encoded, compact or not
    one_by_one = [codec.encode(frames[i : i + 1], quality=0) for i in range(60)]
    assert stored[:60] == one_by_one and stored[60:120] == one_by_one and len(stored) == 121


def _stream(target: str, messages: list[pb.PublishRequest]) -> list[pb.PublishResponse]:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.LatentwireStub(ch)
        replies = list(stub.Publish(iter([pb.PublishRequest(open=pb.PublishOpen(channel="digits"))] + messages)))
    assert replies[0].compact_frames
    return replies[1:]


def test_a_frame_the_server_cannot_place_is_refused_and_nothing_is_stored(server, tiny_bundle: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    codec = Codec.load(tiny_bundle, provider="cpu", threads=1)
    frames = digits(4)
    packets = [codec.encode(frames[i : i + 1], quality=0) for i in range(4)]
    writer = CompactWriter()
    wire = [writer.pack(p) for p in packets]
    # no full packet before it on this stream: no context
    (r,) = _stream(target, [pb.PublishRequest(frame=wire[1])])
    assert r.rejected == 1 and r.accepted == 0 and r.errors[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "MissingStreamContext" in r.errors[0].message and "full packet first" in r.errors[0].message
    # a frame altered in transit fails its check; a frame with explicit numbers that disagree is refused;
    # the frames around them are committed with implicit indexes
    damaged = bytearray(wire[2])
    damaged[2] ^= 0x40
    replies = _stream(target, [
        pb.PublishRequest(message_index=0, packets=pb.Packets(packets=[packets[0]])),
        pb.PublishRequest(frame=wire[1]),
        pb.PublishRequest(frame=bytes(damaged)),
        pb.PublishRequest(frame=wire[3], message_index=7),
        pb.PublishRequest(frame=wire[3]),
    ])
    assert [r.message_index for r in replies] == [0, 1, 2, 3, 4]
    assert [(r.accepted, r.rejected) for r in replies] == [(1, 0), (1, 0), (0, 1), (0, 1), (1, 0)]
    assert "ChecksumMismatch" in replies[2].errors[0].message
    assert "implicit message_index 3" in replies[3].errors[0].message
    with Client(target) as c:
        stored = [p.payload for p in c.subscribe_packets("digits", 0, idle_timeout=1.0)]
    assert stored == [packets[0], packets[1], packets[3]]
