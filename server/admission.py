"""Admission: what a Publish message may put into a channel, decided by plain functions.

Each function takes what arrived (RAW frames or edge-coded packets) and the channel's Codec and
returns an Admission: the work item for the batcher (only the frames and packets that passed)
and one Refusal per refused frame, packet or message, with the status code and a message that
says what to send instead. No gRPC call or context is involved, so every rule is unit-tested
directly (tests/server/test_admission.py); service.py turns Refusals into FrameErrors and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.compact import CompactReader, StreamContext
from latentwire.codec.errors import BitstreamError, InputError
from latentwire.v1 import latentwire_pb2 as pb

from .batcher import PacketItem, RawItem
from .wire import dims

BAD = grpc.StatusCode.INVALID_ARGUMENT
FRAMES_LIMIT = "frames_per_message"  # the name the limit is counted and logged under
DECODED_BYTES_FACTOR = 64  # an edge packet may decode to at most this many x max_message_bytes


@dataclass(frozen=True)
class Refusal:
    """index: the frame (RAW) or packet in the message; frames: how many frames it refuses;
    reason: "invalid" or "limit" (the metrics label)."""

    index: int
    frames: int
    code: grpc.StatusCode
    message: str
    reason: str = "invalid"


@dataclass
class Admission:
    item: RawItem | PacketItem | None = None
    refusals: list[Refusal] = field(default_factory=list)
    limit: str | None = None  # set when a configured limit refused (part of) the message

    def refuse(
        self, index: int, frames: int, message: str, code: grpc.StatusCode = BAD, reason: str = "invalid"
    ) -> None:
        self.refusals.append(Refusal(index, frames, code, message, reason))


def frames_limit_message(n: int, limit: int) -> str:
    return f"message has {n} frames; limits.max_frames_per_message is {limit}: split it into smaller messages"


def admit_raw(codec: Codec, raw: pb.RawFrames, *, max_frames: int, quality: int | None, producer: str,
              offset: int) -> Admission:
    """RAW frames: a known numeric dtype, (N, *sample_shape), N within the limit, exactly the
    bytes the shape needs, and every frame valid for the codec (bad frames are refused one by one,
    the others kept)."""
    out = Admission()
    shape = tuple(int(d) for d in raw.shape)
    n = shape[0] if shape else 0
    try:
        dtype = np.dtype(raw.dtype)
    except (TypeError, ValueError, SyntaxError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or dtype.itemsize == 0 or dtype.fields or dtype.subdtype:
        out.refuse(0, n, f"unknown dtype {raw.dtype!r}: send a numpy dtype string such as "
                         f"{str(np.dtype(codec.raw_dtype))!r}")
        return out
    if len(shape) < 2 or any(d < 0 for d in shape):
        out.refuse(0, n, f"shape {list(shape)} must be (N, *sample_shape) with N >= 1, e.g. "
                         f"[N, {', '.join(str(d) for d in dims(codec.sample_shape))}]")
        return out
    if n > max_frames:  # before any size arithmetic: N may be absurd
        out.limit = frames_limit_message(n, max_frames)
        out.refuse(0, n, out.limit, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit")
        return out
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no 64-bit wrap-around
    if len(raw.data) != expected:
        out.refuse(0, n, f"data has {len(raw.data)} bytes but shape {list(shape)} of {dtype} needs {expected}: "
                         "send arr.tobytes() of a C-contiguous array")
        return out
    arr = np.frombuffer(raw.data, dtype=dtype).reshape(shape)
    if dtype.byteorder not in ("=", "|") and dtype != dtype.newbyteorder("="):
        arr = arr.astype(dtype.newbyteorder("="))
    try:
        codec.validate(arr)
        valid = np.arange(n)
    except InputError as whole:
        ok = []
        for i in range(n):
            try:
                codec.validate(arr[i : i + 1])
                ok.append(i)
            except InputError as e:
                out.refuse(i, 1, f"frame {i}: {e}")
        if len(ok) == n:  # only the batch as a whole is wrong
            out.refuse(0, n, str(whole))
            return out
        valid = np.asarray(ok, dtype=np.int64)
    if valid.size:
        out.item = RawItem(frames=arr[valid], index=valid, n_total=n, quality=quality, producer_id=producer,
                           producer_offset=offset)
    return out


def admit_packets(codec: Codec, packets: Sequence[bytes], *, max_frames: int, verify: bool, max_message_bytes: int,
                  producer: str, offset: int) -> Admission:
    """Edge-coded packets: each one whole and checksummed, for this channel's model, sample shape
    and quality ladder, and (verify) decodable, checked against its reconstruction CRC when it
    carries one. Bad packets are refused one by one; the good ones keep their frame offsets."""
    out = Admission()
    n_q = len(codec.qualities)
    want = tuple(codec.sample_shape)
    ok: list[tuple[bytes, int, int, int]] = []
    pos = 0  # frame offset of packet i inside the message (producer offsets count frames)
    for i, data in enumerate(packets):
        try:
            header, _ = bitstream.read_packet(data, expected_model_id=codec.model_id)
        except BitstreamError as e:
            try:
                n = int(bitstream.peek_header(data).count)
            except BitstreamError:
                n = 1
            out.refuse(i, n, f"packet {i}: {type(e).__name__}: {e}")
            pos += n
            continue
        at, pos = pos, pos + int(header.count)
        shape = tuple(header.sample_shape)
        if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape, strict=True)):
            out.refuse(
                i, header.count, f"packet {i}: sample shape {list(shape)} does not match the channel's {list(want)}"
            )
            continue
        if n_q and header.quality != bitstream.CUSTOM_QUALITY and not 0 <= header.quality < n_q:
            out.refuse(i, header.count, f"packet {i}: quality {header.quality} is not one of the model's 0..{n_q - 1}")
            continue
        valid = sum(c for _, c, _, _ in ok) + int(header.count)
        if verify and valid <= max_frames:  # a message over the frame limit is refused whole: no need to decode
            problem = undecodable(codec, data, header, max_message_bytes)
            if problem:
                out.refuse(i, header.count, f"packet {i}: {problem}")
                continue
        ok.append((bytes(data), int(header.count), int(header.quality), at))
    if ok:
        item = PacketItem(packets=ok, n_total=pos, producer_id=producer, producer_offset=offset)
        if item.n > max_frames:
            out.limit = frames_limit_message(item.n, max_frames)
            out.refuse(0, item.n, out.limit, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit")
        else:
            out.item = item
    return out


def undecodable(codec: Codec, data: bytes, header: bitstream.PacketHeader, max_message_bytes: int) -> str | None:
    """Why an edge-coded packet cannot be decoded, or None. A packet with a valid header and CRC
    but a payload that does not decode (a buggy or hostile encoder) would otherwise be stored
    and fail in every subscriber that decodes it, at every retry: a poison packet. Decoding also
    checks the reconstruction CRC when the packet carries one."""
    elements = int(header.count) * math.prod(int(d) for d in header.sample_shape)
    itemsize = np.dtype(codec.raw_dtype).itemsize
    if elements * itemsize > DECODED_BYTES_FACTOR * max_message_bytes:
        return (f"decodes to {elements * itemsize} bytes, more than {DECODED_BYTES_FACTOR} x "
                "limits.max_message_bytes: send fewer frames per packet")
    try:
        out = codec.decode(data)
    except Exception as e:  # noqa: BLE001 - whatever the payload does, it is the sender's fault
        return f"does not decode ({type(e).__name__}: {e}); it was not stored: check the sender's bundle and encoder"
    if out.shape[0] != header.count:
        return f"does not decode: {out.shape[0]} frames for a header of {header.count}"
    return None


@dataclass
class PublishStream:
    """One Publish stream's running state, for the `frame` messages that leave it implicit: the
    previous data message's index and the producer offset after it, and the compact-frame
    context (the last readable packet on this stream, codec/coding/compact.py)."""

    last_index: int = -1
    next_offset: int = 0
    frames: CompactReader = field(default_factory=CompactReader)

    def resolve(self, req: pb.PublishRequest) -> tuple[int, int, list[bytes] | None, Refusal | None]:
        """(message_index, producer_offset, the packets the message carries (None for RAW), a
        refusal of the whole message or None). A compact frame is expanded to its full packet
        here; every data message moves the implicit index and offset on, refused or not, so the
        messages after a bad frame keep the numbers the client gave them."""
        kind = req.WhichOneof("kind")
        if kind == "frame":
            index, offset = self.last_index + 1, self.next_offset
            self._advance(index, offset, 1)
            if (req.message_index, req.producer_offset) not in ((0, 0), (index, offset)):
                return index, offset, None, Refusal(0, 1, BAD, (
                    f"a frame message has implicit message_index {index} and producer_offset {offset}, but carries "
                    f"{req.message_index} and {req.producer_offset}: leave them unset"))
            try:
                return index, offset, [self.frames.unpack(req.frame)], None
            except BitstreamError as e:
                return index, offset, None, Refusal(0, 1, BAD, f"compact frame: {type(e).__name__}: {e}")
        index, offset = int(req.message_index), int(req.producer_offset)
        if kind == "packets":
            frames = 0
            for p in req.packets.packets:
                try:
                    header = bitstream.peek_header(p)
                except BitstreamError:
                    frames += 1  # what admit_packets counts for an unreadable packet
                    continue
                frames += int(header.count)
                self.frames.context = StreamContext.of(header)
            self._advance(index, offset, frames)
            return index, offset, list(req.packets.packets), None
        if kind == "raw":
            self._advance(index, offset, int(req.raw.shape[0]) if req.raw.shape else 0)
        return index, offset, None, None

    def _advance(self, index: int, offset: int, frames: int) -> None:
        self.last_index, self.next_offset = index, offset + frames
