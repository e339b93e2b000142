"""latentwire client: `Client` (models, bundles, publish, subscribe) and the send/receive daemons."""

from .client import (
    ChannelInfo,
    Client,
    Frame,
    FrameBatch,
    ModelInfo,
    Packet,
    PublishAck,
    PublishError,
    PublishResult,
    QualityInfo,
    packet_path,
)

__all__ = [
    "ChannelInfo",
    "Client",
    "Frame",
    "FrameBatch",
    "ModelInfo",
    "Packet",
    "PublishAck",
    "PublishError",
    "PublishResult",
    "QualityInfo",
    "packet_path",
]
