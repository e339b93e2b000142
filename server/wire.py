"""Conversion between the server's objects and the latentwire.v1 messages (wire types).

One place turns a bundle's typed Manifest and a channel's state into ModelInfo / ChannelInfo /
PacketRecord, so the RPC handlers never assemble messages field by field.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from latentwire.codec.coding.compact import RecordClock
from latentwire.v1 import latentwire_pb2 as pb

from .channels import Channel, ModelEntry
from .store import StoredPacket


def dims(shape: Iterable[int | None]) -> list[int]:
    """A shape on the wire: -1 for a dynamic axis."""
    return [-1 if d is None else int(d) for d in shape]


def model_info(m: ModelEntry) -> pb.ModelInfo:
    man = m.manifest
    norm = man.normalization
    info = pb.ModelInfo(
        model_id=m.model_id,
        name=man.name,
        family=man.family,
        input=pb.InputSpec(
            sample_shape=dims(man.sample_shape),
            raw_dtype=norm.raw_dtype,
            normalization=pb.Normalization(offset=norm.offset, scale=norm.scale, raw_dtype=norm.raw_dtype,
                                           raw_min=norm.raw_min, raw_max=norm.raw_max),
        ),
        latent=pb.LatentSpec(shape=dims(man.latent_shape), stride=man.latent_stride, channels=man.latent_channels),
        bundle_size_bytes=m.size,
        files=[pb.BundleFile(name=f.name, size=f.size, sha256=f.sha256) for f in m.files],
        default_quality=m.codec.default_quality,
    )
    for q in m.codec.qualities:
        ql = pb.QualityLevel(index=q.index, name=q.name)
        if q.max_error is not None:
            ql.max_error = float(q.max_error)
        info.qualities.append(ql)
    return info


def channel_info(ch: Channel, next_seq: int, first_retained_seq: int) -> pb.ChannelInfo:
    codec = ch.model.codec
    info = pb.ChannelInfo(
        name=ch.name,
        model_id=ch.model.model_id,
        quality=codec.default_quality if ch.quality is None else ch.quality,
        next_seq=next_seq,
        first_retained_seq=first_retained_seq,
        subscribers=ch.subscribers,
        sample_shape=dims(codec.sample_shape),
        raw_dtype=str(np.dtype(codec.raw_dtype)),
        fallback=ch.fallback,
        epoch=ch.epoch,
    )
    if ch.anomaly_threshold is not None:
        info.anomaly_threshold = ch.anomaly_threshold
    return info


def packet_record(p: StoredPacket, sample_shape: list[int], model_id: str) -> pb.PacketRecord:
    """model_id: "" when the stream already named this packet's model (it travels when it changes)."""
    return pb.PacketRecord(first_seq=p.first_seq, count=p.count, timestamp=p.ts, model_id=model_id,
                           quality=p.quality, sample_shape=sample_shape, payload=p.payload,
                           anomaly_scores=p.anomaly_scores or ())


def compact_record(p: StoredPacket, model_id: str, frame: bytes) -> pb.PacketRecord:
    """The packet as a compact frame of this Subscribe stream (CompactWriter.pack), with count,
    quality and sample_shape unset: the expanded header holds them."""
    return pb.PacketRecord(first_seq=p.first_seq, timestamp=p.ts, model_id=model_id, payload=frame,
                           anomaly_scores=p.anomaly_scores or ())


class RecordContext:
    """The records of a Subscribe stream that asked for compact_records: compact ones trimmed by
    the stream's RecordClock (the client keeps the same clock and fills them back in)."""

    def __init__(self) -> None:
        self.clock = RecordClock()

    def whole(self, rec: pb.PacketRecord) -> pb.PacketRecord:
        self.clock.whole(rec.first_seq, rec.count, rec.timestamp)
        return rec

    def compact(self, rec: pb.PacketRecord) -> pb.PacketRecord:
        first, delta = self.clock.trim(rec.first_seq, rec.timestamp)
        if first is None:
            rec.ClearField("first_seq")
        rec.ClearField("timestamp")
        rec.timestamp_delta_us = delta
        return rec
