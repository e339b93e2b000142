"""Publishing: pipelined, resumable, and honest about what the server committed.

A PublishSession sends a stream of messages (RAW frames the server encodes, or packets coded at
the edge) with up to ``window`` in flight. With a producer id the server drops frames it already
committed, so resending the unacknowledged messages after a reconnect creates no duplicates.

Nothing is lost quietly:
- the caller's source is pulled here, never inside gRPC's request thread where an exception
  would only be logged ("Exception iterating requests!") and end the stream as if it were done:
  an exception from it (or from encoding) stops the sending, every message already sent is
  still acknowledged, and then PublishAborted carries the exception and the exact result;
- a packet that fails its own checks (header, CRC) is reported with its index and skipped; the
  good ones around it are still delivered;
- on_ack and the result only ever count what the server acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from latentwire.codec.codec import Codec
from latentwire.codec.coding.bitstream import peek_header
from latentwire.codec.coding.compact import CompactWriter
from latentwire.codec.errors import BitstreamError
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

from .errors import ChannelReset, PublishAborted
from .retry import RETRYABLE, backoff
from .types import PublishAck, PublishError, PublishResult, status_code

FrameSource = np.ndarray | Iterable[np.ndarray]


@dataclass
class Message:
    """One data message of a publish call. For packet messages, each packet's frame offset inside
    the message, frame count, and index in the caller's iterable (to name it in errors)."""

    index: int
    first_frame: int
    frames: int
    request: pb.PublishRequest
    packet_starts: tuple[int, ...] = ()
    packet_counts: tuple[int, ...] = ()
    packet_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PublishOptions:
    """window: messages in flight; max_retries: reconnects in a row before the error reaches the
    caller; on_ack: called in message order with what each message became; compact: one-frame
    packet messages go out as compact stream frames (codec/FORMAT.md) when the server takes them."""

    window: int = 16
    max_retries: int = 8
    max_backoff: float = 5.0
    on_ack: Callable[[PublishAck], None] | None = None
    compact: bool = True


class _Source:
    """Pulls messages from a generator; an exception becomes ``error`` and ends the source."""

    def __init__(self, messages: Iterator[Message]) -> None:
        self._it = messages
        self.error: BaseException | None = None
        self.done = False

    def next(self) -> Message | None:
        if self.done:
            return None
        try:
            return next(self._it)
        except StopIteration:
            self.done = True
        except Exception as e:  # noqa: BLE001 - kept and raised to the caller (PublishAborted)
            self.error, self.done = e, True
        return None


class _StreamEnded(grpc.RpcError):
    """The server closed the publish stream before answering every message (shutdown)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the server ended the publish stream early"


class PublishSession:
    """One publish call on one channel and producer: run() sends, retries and accounts."""

    def __init__(self, stub: pb_grpc.LatentwireStub, metadata: tuple[tuple[str, str], ...], channel: str,
                 producer: str, quality: int | None, options: PublishOptions, log: logging.Logger) -> None:
        self.stub, self.metadata, self.channel, self.producer = stub, metadata, channel, producer
        self.quality, self.options, self.log = quality, options, log
        self.result = PublishResult()
        self._unacked: OrderedDict[int, Message] = OrderedDict()

    def run(self, messages: Iterator[Message]) -> PublishResult:
        source = _Source(messages)
        attempt = 0
        while True:
            acked = self.result.messages
            try:
                self._stream(source)
                break
            except grpc.RpcError as e:
                if self.result.messages > acked:  # the stream made progress: "in a row" starts over
                    attempt = 0
                if e.code() == grpc.StatusCode.DATA_LOSS:  # the channel's store was reset: resending cannot help
                    raise ChannelReset(self.channel, str(e.details()), self.result.last_seq) from None
                if e.code() not in RETRYABLE or attempt >= self.options.max_retries:
                    raise
                self.result.reconnects += 1
                delay = backoff(attempt, self.options.max_backoff)
                attempt += 1
                self.log.info("publish to %s: %s (%s); resending %d unacknowledged message(s) in %.2fs",
                              self.channel, e.code().name, e.details(), len(self._unacked), delay)
                time.sleep(delay)
        if source.error is not None:
            raise PublishAborted(self.channel, self.result, source.error) from source.error
        return self.result

    def _stream(self, source: _Source) -> None:
        lock = threading.Lock()
        slots = threading.Semaphore(self.options.window)
        dead = threading.Event()
        resend = list(self._unacked.values())
        open_ = pb.PublishOpen(channel=self.channel, producer_id=self.producer)
        if self.quality is not None:
            open_.quality = self.quality
        # set once the server's reply to `open` says it takes compact frames; messages sent before
        # that reply go out whole (no round trip is waited for)
        compact_ok = threading.Event()
        framer = _Framer()

        def requests() -> Iterator[pb.PublishRequest]:
            yield pb.PublishRequest(open=open_)
            pending = iter(resend)
            while True:
                while not slots.acquire(timeout=0.2):
                    if dead.is_set():
                        return
                with lock:
                    if dead.is_set():
                        return
                    m = next(pending, None)
                    first_send = m is None
                    if m is None:
                        m = source.next()  # never raises: an error ends the source and waits for run()
                        if m is None:
                            return
                        self._unacked[m.index] = m
                        self.result.frames_sent += m.frames
                    req = framer.request(m, compact_ok.is_set())
                    if first_send:
                        self.result.sent_bytes += req.ByteSize()
                yield req

        call = self.stub.Publish(requests(), metadata=self.metadata)
        try:
            opened = next(call)
            if opened.compact_frames and self.options.compact:
                compact_ok.set()
            self.log.debug("publish to %s opened: producer next offset %d, compact frames %s", self.channel,
                           opened.producer_next_offset, compact_ok.is_set())
            for r in call:
                with lock:
                    m = self._unacked.pop(r.message_index, None)
                slots.release()
                if m is not None:
                    self._account(m, r)
        finally:
            with lock:
                dead.set()
            call.cancel()
        if self._unacked or not source.done:
            raise _StreamEnded()

    def _account(self, m: Message, r: pb.PublishResponse) -> None:
        res = self.result
        res.messages += 1
        res.accepted += r.accepted
        res.rejected += r.rejected
        res.duplicates += r.duplicates
        if r.accepted:
            res.first_seq = r.first_seq if res.first_seq is None else min(res.first_seq, r.first_seq)
            last = r.first_seq + r.accepted - 1
            res.last_seq = last if res.last_seq is None else max(res.last_seq, last)
        refused: list[int] = []
        errors: list[PublishError] = []
        for e in r.errors:
            if m.packet_ids and 0 <= e.index < len(m.packet_ids):
                start = m.first_frame + m.packet_starts[e.index]
                errors.append(PublishError(r.message_index, start, status_code(e.code), e.message,
                                           m.packet_ids[e.index]))
                refused += range(start, start + m.packet_counts[e.index])
            else:
                errors.append(PublishError(r.message_index, m.first_frame + e.index, status_code(e.code), e.message))
                refused.append(m.first_frame + e.index)
        res.errors += errors
        if r.rejected and r.accepted + r.duplicates == 0:
            refused = list(range(m.first_frame, m.first_frame + m.frames))  # the message was refused whole
        if self.options.on_ack is not None:
            self.options.on_ack(PublishAck(r.message_index, m.first_frame, m.frames, r.accepted, r.rejected,
                                           r.duplicates, r.first_seq if r.accepted else None,
                                           tuple(sorted(set(refused))), tuple(errors)))


class _Framer:
    """One stream's view of what the server can infer (codec/coding/compact.py; the `frame`
    message in latentwire.proto): a one-frame packet message right after the previous message
    (next index, next offset) goes out as a compact frame when the packet fits the stream context."""

    def __init__(self) -> None:
        self.writer = CompactWriter()
        self.prev: Message | None = None

    def request(self, m: Message, compact: bool) -> pb.PublishRequest:
        prev, self.prev = self.prev, m
        req = m.request
        if req.WhichOneof("kind") != "packets":
            return req
        packets = req.packets.packets
        follows = (prev is not None and m.index == prev.index + 1
                   and req.producer_offset == prev.request.producer_offset + prev.frames)
        if compact and follows and len(packets) == 1 and m.frames == 1:
            packet = packets[0]
            wire = self.writer.pack(packet)
            if wire is not packet:
                return pb.PublishRequest(frame=wire)
            return req
        for p in packets:
            self.writer.observe(p)
        return req


def frame_messages(frames: FrameSource, sample_ndim: int, per_message: int, codec: Codec | None, quality: int,
                   start_offset: int, result: PublishResult) -> Iterator[Message]:
    """RAW messages (or, with a codec, one edge-encoded packet per message) of <= per_message frames."""
    index, first, offset = 0, 0, start_offset
    for batch in batches(frames, sample_ndim, per_message):
        batch = np.ascontiguousarray(batch)
        result.raw_bytes += batch.nbytes
        n = int(batch.shape[0])
        if codec is not None:
            req = pb.PublishRequest(message_index=index, producer_offset=offset,
                                    packets=pb.Packets(packets=[codec.encode(batch, quality=quality)]))
            msg = Message(index, first, n, req, (0,), (n,), (index,))
        else:
            req = pb.PublishRequest(
                message_index=index,
                producer_offset=offset,
                raw=pb.RawFrames(data=batch.tobytes(), dtype=batch.dtype.str, shape=list(batch.shape)),
            )
            msg = Message(index, first, n, req)
        yield msg
        offset += n
        index += 1
        first += n


def packet_messages(packets: Iterable[bytes], per_message: int, start_offset: int, result: PublishResult,
                    log: logging.Logger, channel: str) -> Iterator[Message]:
    """Messages of <= per_message packets; a packet that fails its own checks is reported in
    result.errors (message_index -1, its packet_index) and never sent."""
    index, first, offset = 0, 0, start_offset
    group: list[bytes] = []
    starts: list[int] = []
    counts: list[int] = []
    ids: list[int] = []

    def flush() -> Message:
        frames = sum(counts)
        return Message(index, first, frames, pb.PublishRequest(
            message_index=index, producer_offset=offset, packets=pb.Packets(packets=group)),
            tuple(starts), tuple(counts), tuple(ids))

    for i, pkt in enumerate(packets):
        try:
            count = int(peek_header(pkt).count)
        except BitstreamError as e:
            result.invalid_packets += 1
            result.errors.append(PublishError(-1, first + sum(counts), grpc.StatusCode.INVALID_ARGUMENT,
                                              f"packet {i}: {type(e).__name__}: {e}; not sent", i))
            log.warning("publish to %s: packet %d is damaged (%s: %s); not sent, the others go on",
                        channel, i, type(e).__name__, e)
            continue
        starts.append(sum(counts))
        counts.append(count)
        ids.append(i)
        group.append(bytes(pkt))
        if len(group) >= per_message:
            msg = flush()
            yield msg
            index, first, offset = index + 1, first + msg.frames, offset + msg.frames
            group, starts, counts, ids = [], [], [], []
    if group:
        yield flush()


def batches(frames: FrameSource, ndim: int, per_msg: int) -> Iterator[np.ndarray]:
    """Re-chunk an array or an iterable of frames/batches into arrays of <= per_msg frames.

    When the iterable raises, the frames it already gave are yielded first, then the exception
    propagates: what the caller handed over is sent, and the caller learns where it stopped."""
    if isinstance(frames, np.ndarray):
        arr = frames[None] if frames.ndim == ndim else frames
        for s in range(0, arr.shape[0], per_msg):
            yield arr[s : s + per_msg]
        return
    buf: list[np.ndarray] = []
    n = 0
    try:
        for f in frames:
            f = np.asarray(f)
            f = f[None] if f.ndim == ndim else f
            while f.shape[0]:
                take = f[: per_msg - n]
                buf.append(take)
                n += take.shape[0]
                f = f[take.shape[0] :]
                if n == per_msg:
                    yield np.concatenate(buf) if len(buf) > 1 else buf[0]
                    buf, n = [], 0
    except Exception:
        if n:
            yield np.concatenate(buf) if len(buf) > 1 else buf[0]
        raise
    if n:
        yield np.concatenate(buf) if len(buf) > 1 else buf[0]
