"""The client's value types and their conversion from the wire (latentwire.v1 messages).

Everything a caller of `Client` gets back is one of these frozen dataclasses, never a protobuf
message or a dict: they stay stable when the proto grows fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np

from latentwire.codec.coding.bitstream import CodingPath
from latentwire.v1 import latentwire_pb2 as pb

PATH_LATENT, PATH_RESIDUAL, PATH_LOSSLESS = (CodingPath.LATENT.value, CodingPath.RESIDUAL.value,
                                             CodingPath.LOSSLESS.value)


def packet_path(payload: bytes) -> str:
    """Which path a packet's frames took: "latent" (the model alone), "residual" (model + bounded
    correction) or "lossless" (zstd of the raw frames: the sender found them anomalous). Read
    from the header's flags byte; decoding the packet checks the rest (codec/FORMAT.md)."""
    flags = payload[3] if len(payload) > 3 else 0
    return CodingPath.from_flags(flags).value


@dataclass(frozen=True)
class Frame:
    seq: int
    timestamp: float
    model_id: str
    quality: int
    data: np.ndarray  # one raw sample, shape sample_shape, the bundle's raw dtype
    path: str = PATH_LATENT  # "latent" | "residual" | "lossless" (packet_path)
    # the server's anomaly score (raw-unit MSE of the model's reconstruction; compare with
    # ChannelInfo.anomaly_threshold); None for frames coded at the edge (not scored)
    anomaly_score: float | None = None


@dataclass(frozen=True)
class Packet:
    """One coded packet as delivered by Subscribe: frames first_seq .. first_seq+count-1."""

    first_seq: int
    count: int
    timestamp: float
    model_id: str
    quality: int
    sample_shape: tuple[int, ...]
    payload: bytes
    anomaly_scores: tuple[float, ...] = ()  # one per frame when the server scored them, else empty
    epoch: str = ""  # the channel's epoch the seqs belong to (keep it with a saved position)

    @property
    def path(self) -> str:
        return packet_path(self.payload)


@dataclass(frozen=True)
class FrameBatch:
    """The decoded frames of one Subscribe response: seqs first_seq .. first_seq+len(frames)-1.

    Why per response and not per frame: Python pays per call (gRPC message, onnxruntime run,
    Frame object), so a receiver that keeps up decodes all packets of a response in one
    Codec.decode_many call and touches each frame only as a row of one array."""

    first_seq: int
    frames: np.ndarray  # (n, *sample_shape) raw dtype, in seq order
    timestamps: np.ndarray  # (n,) float64 server commit time (unix seconds) of each frame's packet
    packets: int  # packets decoded for this batch
    payload_bytes: int  # sum of the packets' sizes (header + payload + CRC)
    wire_bytes: int  # protobuf size of the Subscribe response that carried them
    paths: np.ndarray | None = None  # (n,) str: each frame's path (packet_path)
    anomaly_scores: np.ndarray | None = None  # (n,) float32 server scores, NaN where not scored

    @property
    def end_seq(self) -> int:
        return self.first_seq + int(self.frames.shape[0])


@dataclass(frozen=True)
class QualityInfo:
    index: int
    name: str
    max_error: float | None


@dataclass(frozen=True)
class NormalizationInfo:
    """The model's raw <-> model-domain mapping, as the server announces it."""

    offset: float
    scale: float
    raw_dtype: str
    raw_min: float
    raw_max: float


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    name: str
    family: str
    sample_shape: tuple[int | None, ...]
    raw_dtype: str
    normalization: NormalizationInfo
    qualities: tuple[QualityInfo, ...]
    default_quality: int
    latent_shape: tuple[int | None, ...]
    bundle_size: int
    files: tuple[tuple[str, int, str], ...]  # (name, size, sha256)


@dataclass(frozen=True)
class ChannelInfo:
    name: str
    model_id: str
    quality: int
    next_seq: int
    first_retained_seq: int
    subscribers: int
    sample_shape: tuple[int | None, ...]
    raw_dtype: str
    fallback: bool = False  # RAW frames above anomaly_threshold arrive through lossless packets
    anomaly_threshold: float | None = None
    epoch: str = ""  # the channel's incarnation in its store: seqs compare only within one epoch


@dataclass(frozen=True)
class PublishError:
    """One frame or packet the server (or, for a packet that fails its own checks, the client)
    refused. message_index is -1 for a packet refused here before it was sent."""

    message_index: int
    frame_index: int  # index of the frame (RAW) or of the packet's first frame (edge) in this publish call
    code: grpc.StatusCode
    message: str
    packet_index: int | None = None  # publish_packets: index of the packet in the caller's iterable


@dataclass(frozen=True)
class PublishAck:
    """What one message became: passed to publish(on_ack=...) in message order."""

    message_index: int
    first_frame: int  # index in this publish call of the message's first frame
    frames: int
    accepted: int
    rejected: int
    duplicates: int
    first_seq: int | None
    # indices (in this publish call) of the message's frames the server refused, and why
    rejected_frames: tuple[int, ...] = ()
    errors: tuple[PublishError, ...] = ()


@dataclass
class PublishResult:
    """What a publish call achieved, as the server acknowledged it (never more)."""

    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    messages: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    raw_bytes: int = 0  # bytes of raw samples handed to publish
    sent_bytes: int = 0  # bytes of the data messages on the wire (encoded protobuf size)
    reconnects: int = 0
    frames_sent: int = 0  # frames taken from the caller's source and sent (acknowledged or not)
    invalid_packets: int = 0  # publish_packets: packets refused here (bad header or CRC), never sent
    errors: list[PublishError] = field(default_factory=list)


def _shape(dims: Iterable[int]) -> tuple[int | None, ...]:
    return tuple(None if d < 0 else int(d) for d in dims)


def model_info(m: pb.ModelInfo) -> ModelInfo:
    n = m.input.normalization
    return ModelInfo(
        model_id=m.model_id, name=m.name, family=m.family, sample_shape=_shape(m.input.sample_shape),
        raw_dtype=m.input.raw_dtype,
        normalization=NormalizationInfo(n.offset, n.scale, n.raw_dtype, n.raw_min, n.raw_max),
        qualities=tuple(QualityInfo(q.index, q.name, q.max_error if q.HasField("max_error") else None)
                        for q in m.qualities),
        default_quality=m.default_quality, latent_shape=_shape(m.latent.shape), bundle_size=m.bundle_size_bytes,
        files=tuple((f.name, f.size, f.sha256) for f in m.files),
    )


def channel_info(c: pb.ChannelInfo) -> ChannelInfo:
    return ChannelInfo(c.name, c.model_id, c.quality, c.next_seq, c.first_retained_seq, c.subscribers,
                       _shape(c.sample_shape), c.raw_dtype, c.fallback,
                       c.anomaly_threshold if c.HasField("anomaly_threshold") else None, c.epoch)


def status_code(code: int) -> grpc.StatusCode:
    """The StatusCode of a FrameError's numeric code."""
    for s in grpc.StatusCode:
        if s.value[0] == code:
            return s
    return grpc.StatusCode.UNKNOWN
