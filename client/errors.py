"""The client's errors: typed, with the attributes a caller needs to act on them.

gRPC failures that the client does not retry still surface as grpc.RpcError (their status code
is the attribute that matters); these are the failures that are the client's own story.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import PublishResult


class ClientError(Exception):
    """Base of the client's own errors."""


class ConnectError(ClientError):
    """No latentwire server answered at ``target`` within ``waited`` seconds; ``reason`` is what the
    last attempt saw (e.g. "connection refused")."""

    def __init__(self, target: str, waited: float, reason: str) -> None:
        self.target, self.waited, self.reason = target, waited, reason
        super().__init__(
            f"no latentwire server at {target}: {reason} (tried for {waited:.1f} s; is `latentwire serve` "
            "running there? check the target, or wait longer with connect_timeout / --connect-timeout)"
        )


class PublishAborted(ClientError):
    """A publish call stopped because the caller's source (iterator, generator, file reader) or the
    encoding of a message raised. ``__cause__`` is that exception; ``result`` says exactly what
    the server committed before the call ended (every message sent was acknowledged first)."""

    def __init__(self, channel: str, result: PublishResult, cause: BaseException) -> None:
        self.channel, self.result = channel, result
        committed = (f"{result.accepted} frame(s) committed (seqs {result.first_seq}..{result.last_seq})"
                     if result.accepted else "no frame committed")
        super().__init__(
            f"publish to {channel} stopped after {result.frames_sent} frame(s) sent: the frame source raised "
            f"{type(cause).__name__}: {cause}; {committed}"
        )


class ChannelReset(ClientError):
    """The server answered DATA_LOSS: the channel's store was reset (its epoch is gone or changed)
    and the server stopped serving it, or this subscriber resumed with an epoch the channel no
    longer has. Retrying cannot help: an operator starts a new epoch (server/README.md), and a
    subscriber then starts over without its old position. ``details`` is the server's message
    (the channel, the epochs, the last seq the server knew); ``last_seq`` is the last seq this
    client handed out or had acknowledged (None: none)."""

    def __init__(self, channel: str, details: str, last_seq: int | None = None) -> None:
        self.channel, self.details, self.last_seq = channel, details, last_seq
        mine = f"; the last seq this client had is {last_seq}" if last_seq is not None else ""
        super().__init__(f"channel {channel} was reset on the server (DATA_LOSS): {details}{mine}")
