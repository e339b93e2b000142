"""latentwire client: `Client` (models, bundles, publish, subscribe) and the send/receive daemons.

May import latentwire.codec (the runtime, never its training sub-package) and the generated
latentwire.v1 stubs; never latentwire.server.
"""

from .client import Client
from .errors import ChannelReset, ClientError, ConnectError, PublishAborted
from .types import (
    ChannelInfo,
    Frame,
    FrameBatch,
    ModelInfo,
    NormalizationInfo,
    Packet,
    PublishAck,
    PublishError,
    PublishResult,
    QualityInfo,
    packet_path,
)

__all__ = [
    "ChannelInfo",
    "ChannelReset",
    "Client",
    "ClientError",
    "ConnectError",
    "Frame",
    "FrameBatch",
    "ModelInfo",
    "NormalizationInfo",
    "Packet",
    "PublishAborted",
    "PublishAck",
    "PublishError",
    "PublishResult",
    "QualityInfo",
    "packet_path",
]
