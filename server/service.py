"""The latentwire.v1.Latentwire servicer: request validation, auth, and the streaming loops.

Publish is bidi and pipelined: a reader thread validates each request and hands it to the
channel's batcher while the handler yields responses in request order as commits complete, so a
publisher can keep many messages in flight; a bad frame is answered in-band (FrameError with the
client's message_index) and the stream goes on. Stream-level problems (unknown channel, auth,
malformed open) end the call with a status code.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Any, Iterator

import grpc
import numpy as np

from latentwire.codec.errors import BitstreamError, InputError
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

from .auth import AuthError, TokenStore
from .batcher import PacketItem, QueueFull, RawItem, Stopped
from .channels import Channel, ModelEntry
from .config import ServerConfig
from .metrics import Metrics
from .store import StoreUnavailable

log = logging.getLogger("latentwire.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Latentwire"].full_name
CHUNK_BYTES = 1 << 20
_U32 = 2**32 - 1
_END = object()


def _dims(shape: Any) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def _qualities(codec: Any) -> list[Any]:
    return list(getattr(codec, "qualities", []) or [])


def default_quality(codec: Any) -> int:
    q = getattr(codec, "default_quality", None)
    if q is not None:
        return int(getattr(q, "index", q))
    qs = _qualities(codec)
    return int(qs[0].index) if qs else 0


def model_info(m: ModelEntry) -> pb.ModelInfo:
    man = m.manifest
    inp, lat = man.get("input", {}), man.get("latent", {})
    norm = inp.get("normalization", {})
    info = pb.ModelInfo(
        model_id=m.model_id,
        name=str(man.get("name", "")),
        family=str(man.get("family", "")),
        input=pb.InputSpec(
            sample_shape=_dims(inp.get("sample_shape", [])),
            raw_dtype=str(norm.get("raw_dtype", inp.get("dtype", ""))),
            normalization=pb.Normalization(
                offset=float(norm.get("offset", 0.0)),
                scale=float(norm.get("scale", 1.0)),
                raw_dtype=str(norm.get("raw_dtype", "")),
                raw_min=float(norm.get("raw_min", 0.0)),
                raw_max=float(norm.get("raw_max", 0.0)),
            ),
        ),
        latent=pb.LatentSpec(
            shape=_dims(lat.get("shape", [])), stride=int(lat.get("stride", 1)), channels=int(lat.get("channels", 0))
        ),
        bundle_size_bytes=m.size,
        files=[pb.BundleFile(name=f.name, size=f.size, sha256=f.sha256) for f in m.files],
        default_quality=default_quality(m.codec),
    )
    for q in _qualities(m.codec):
        ql = pb.QualityLevel(index=int(q.index), name=str(q.name))
        if q.max_error is not None:
            ql.max_error = float(q.max_error)
        info.qualities.append(ql)
    return info


class LatentwireService(pb_grpc.LatentwireServicer):
    def __init__(
        self,
        config: ServerConfig,
        channels: dict[str, Channel],
        models: dict[str, ModelEntry],
        auth: TokenStore,
        metrics: Metrics,
    ):
        self.config = config
        self.channels = channels
        self.models = models
        self.auth = auth
        self.metrics = metrics
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._subscribers = 0
        self._publishers = 0

    # ------------------------------------------------------------------ helpers

    def _check(self, context: grpc.ServicerContext, action: str = "read", channel: str | None = None) -> str:
        """Auth; returns the caller's label for logs (never the token)."""
        try:
            grant = self.auth.check(context.invocation_metadata(), action, channel)
        except AuthError as e:
            log.info("refused %s on %s: %s", action, channel or "-", e.code.name)
            context.abort(e.code, e.message)
        return grant.name if grant else "anonymous"

    def _channel(self, context: grpc.ServicerContext, name: str) -> Channel:
        if not name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "channel is empty: name a channel (see ListChannels)")
        ch = self.channels.get(name)
        if ch is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown channel {name!r}; this server has {sorted(self.channels)} (see ListChannels)",
            )
        return ch  # type: ignore[return-value]

    def _model(self, context: grpc.ServicerContext, model_id: str) -> ModelEntry:
        mid = model_id.strip().lower()
        if len(mid) < 8:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model_id needs at least 8 hex digits (see ListModels)")
        hits = [m for k, m in self.models.items() if k.startswith(mid)]
        if len(hits) != 1:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no model {model_id!r} on this server; it serves {[k[:12] for k in self.models]} (see ListModels)"
                if not hits
                else f"model id prefix {model_id!r} is ambiguous: give more digits",
            )
        return hits[0]

    def _limit(self, context: grpc.ServicerContext, name: str, message: str) -> None:
        self.metrics.limit_hits.labels(name).inc()
        log.warning("limit %s hit: %s", name, message)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def channel_info(self, ch: Channel) -> pb.ChannelInfo:
        codec = ch.model.codec
        q = default_quality(codec) if ch.quality is None else ch.quality
        info = pb.ChannelInfo(
            name=ch.name,
            model_id=ch.model.model_id,
            quality=q,
            next_seq=ch.store.next_seq,
            first_retained_seq=ch.store.first_seq,
            subscribers=ch.subscribers,
            sample_shape=_dims(getattr(codec, "sample_shape", ())),
            raw_dtype=str(np.dtype(getattr(codec, "raw_dtype", "uint8"))),
            fallback=ch.fallback,
        )
        if ch.anomaly_threshold is not None:
            info.anomaly_threshold = ch.anomaly_threshold
        return info

    # ------------------------------------------------------------------ models and channels

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self._check(context)
        return pb.ListModelsResponse(models=[model_info(m) for m in self.models.values()])

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        self._check(context)
        return model_info(self._model(context, request.model_id))

    def DownloadBundle(self, request: pb.DownloadBundleRequest, context: grpc.ServicerContext) -> Iterator[pb.BundleChunk]:
        self._check(context)
        m = self._model(context, request.model_id)
        # a chunk plus its fields must fit the configured message limit (1 MiB chunks failed with
        # RESOURCE_EXHAUSTED under max_message_bytes <= 1 MiB)
        chunk_bytes = max(1024, min(CHUNK_BYTES, self.config.limits.max_message_bytes // 2))
        for f in m.files:
            with open(m.path / f.name, "rb") as fh:
                offset = 0
                while True:
                    data = fh.read(chunk_bytes)
                    if not data and offset > 0:
                        break
                    yield pb.BundleChunk(
                        file_name=f.name, offset=offset, data=data, file_size=f.size, sha256=f.sha256,
                        model_id=m.model_id,
                    )
                    offset += len(data)
                    if not data:
                        break

    def ListChannels(self, request: pb.ListChannelsRequest, context: grpc.ServicerContext) -> pb.ListChannelsResponse:
        self._check(context)
        try:
            return pb.ListChannelsResponse(channels=[self.channel_info(c) for c in self.channels.values()])
        except StoreUnavailable as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            raise  # unreachable: abort raises

    # ------------------------------------------------------------------ publish

    def Publish(self, request_iterator: Iterator[pb.PublishRequest], context: grpc.ServicerContext):
        self._check(context)
        first = next(request_iterator, None)
        if first is None:
            return
        if first.WhichOneof("kind") != "open":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first Publish message must carry `open` (the channel name); send frames after it",
            )
        ch = self._channel(context, first.open.channel)
        who = self._check(context, "publish", ch.name)
        quality = first.open.quality if first.open.HasField("quality") else ch.quality
        n_q = len(_qualities(ch.model.codec))
        if quality is not None and n_q and not 0 <= quality < n_q:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"quality {quality} is out of range for channel {ch.name!r}: use 0..{n_q - 1} (see GetModel)",
            )
        with self._lock:
            if self._publishers >= self.config.limits.max_publishers:
                full = True
            else:
                full = False
                self._publishers += 1
        if full:
            self._limit(
                context, "publishers",
                f"this server already has {self.config.limits.max_publishers} publishers (limits.max_publishers): "
                "retry later or raise the limit",
            )
        producer = first.open.producer_id
        log.info("publisher %s opened channel %s%s", who, ch.name, f" (producer {producer})" if producer else "")
        try:
            try:
                opened = pb.PublishResponse(
                    message_index=first.message_index,
                    producer_next_offset=ch.store.producer_next_offset(producer) if producer else 0,
                    channel=self.channel_info(ch),
                )
            except StoreUnavailable as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            yield opened
            pending: queue.Queue = queue.Queue(maxsize=256)

            stop_with: list[tuple[grpc.StatusCode, str]] = []
            limits_seen: set[str] = set()  # each limit is logged once per stream, counted every time

            def reader() -> None:
                try:
                    for req in request_iterator:
                        pending.put(self._accept(ch, req, quality, producer, limits_seen, who))
                except (QueueFull, Stopped) as e:
                    # Order matters (producer offsets): nothing after this message may be taken, so
                    # the stream ends with a status and the client resends from this message on.
                    full = isinstance(e, QueueFull)
                    if full:
                        self.metrics.limit_hits.labels("queue_frames").inc()
                        log.warning("limit queue_frames hit on %s: ending a publish stream with RESOURCE_EXHAUSTED",
                                    ch.name)
                    stop_with.append((grpc.StatusCode.RESOURCE_EXHAUSTED if full else grpc.StatusCode.UNAVAILABLE,
                                      str(e)))
                except Exception as e:  # noqa: BLE001 - the client went away or sent garbage
                    if not isinstance(e, grpc.RpcError):
                        log.exception("publish reader on %s failed", ch.name)
                finally:
                    while True:  # the handler may have stopped reading (store outage): never block forever
                        try:
                            pending.put(_END, timeout=0.5)
                            break
                        except queue.Full:
                            if not context.is_active():
                                break

            t = threading.Thread(target=reader, name=f"publish-{ch.name}", daemon=True)
            t.start()
            while True:
                item = pending.get()
                if item is _END:
                    break
                resp, future = item
                if future is not None:
                    try:
                        commit = future.result()
                    except StoreUnavailable as e:
                        # nothing of this message (or after it) was committed: the client resends
                        stop_with.insert(0, (grpc.StatusCode.UNAVAILABLE, f"{e}; resend from message "
                                                                          f"{resp.message_index}"))
                        break
                    except Exception as e:  # noqa: BLE001
                        n = resp.accepted
                        resp.accepted, resp.rejected = 0, resp.rejected + n
                        resp.errors.append(pb.FrameError(index=0, code=grpc.StatusCode.INTERNAL.value[0],
                                                         message=f"commit failed: {e}"))
                        self.metrics.frames_rejected.labels(ch.name, "internal").inc(n)
                    else:
                        resp.accepted = commit.accepted
                        resp.duplicates = commit.duplicates
                        resp.first_seq = commit.first_seq
                        if commit.duplicates:
                            self.metrics.frames_duplicate.labels(ch.name).inc(commit.duplicates)
                yield resp
            if stop_with:
                context.abort(*stop_with[0])
        finally:
            with self._lock:
                self._publishers -= 1

    def _reject(self, resp: pb.PublishResponse, ch: Channel, n: int, code: grpc.StatusCode, message: str,
                index: int = 0, reason: str = "invalid") -> pb.PublishResponse:
        n = min(max(int(n), 0), _U32 - resp.rejected)  # an absurd announced N must not overflow uint32
        resp.rejected += n
        resp.errors.append(pb.FrameError(index=index, code=code.value[0], message=message))
        self.metrics.frames_rejected.labels(ch.name, reason).inc(n)
        return resp

    def _limit_hit(self, ch: Channel, name: str, message: str, seen: set[str], who: str) -> None:
        """Count a limit hit in metrics; log it the first time it happens on this publish stream."""
        self.metrics.limit_hits.labels(name).inc()
        if name not in seen:
            seen.add(name)
            log.warning("limit %s hit on channel %s by publisher %s: %s (further hits on this stream are only "
                        "counted in latentwire_limit_hits_total)", name, ch.name, who, message)

    def _accept(self, ch: Channel, req: pb.PublishRequest, quality: int | None, producer: str,
                seen: set[str] | None = None, who: str = "anonymous"):
        """Validate one data message and queue it: (response skeleton, future or None)."""
        seen = set() if seen is None else seen
        resp = pb.PublishResponse(message_index=req.message_index)
        kind = req.WhichOneof("kind")
        limits = self.config.limits
        bad = grpc.StatusCode.INVALID_ARGUMENT
        try:
            if kind == "raw":
                item = self._raw_item(ch, req, quality, producer, resp, seen, who)
            elif kind == "packets":
                item = self._packet_item(ch, req, producer, resp)
            else:
                item = None
        except Exception as e:  # noqa: BLE001 - one message's surprise must not end the stream
            log.exception("publish on %s: message %d could not be validated", ch.name, req.message_index)
            resp = pb.PublishResponse(message_index=req.message_index)
            return self._reject(resp, ch, 0, grpc.StatusCode.INTERNAL,
                                f"message {req.message_index} could not be validated ({type(e).__name__}); "
                                "it was not stored", reason="internal"), None
        if kind not in ("raw", "packets"):
            return self._reject(resp, ch, 0, bad, f"message {req.message_index}: expected `raw` or `packets` "
                                f"after open, got {kind or 'nothing'}"), None
        if item is None:
            return resp, None
        if item.n > limits.max_frames_per_message:
            text = (f"message has {item.n} frames; limits.max_frames_per_message is {limits.max_frames_per_message}: "
                    "split it into smaller messages")
            self._limit_hit(ch, "frames_per_message", text, seen, who)
            return self._reject(resp, ch, item.n, grpc.StatusCode.RESOURCE_EXHAUSTED, text, reason="limit"), None
        resp.accepted = item.n  # provisional: replaced by the commit
        return resp, ch.batcher.submit(item)  # QueueFull / Stopped end the stream (see Publish)

    def _raw_item(self, ch: Channel, req: pb.PublishRequest, quality: int | None, producer: str,
                  resp: pb.PublishResponse, seen: set[str], who: str) -> RawItem | None:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        raw = req.raw
        codec = ch.model.codec
        shape = tuple(int(d) for d in raw.shape)
        n = shape[0] if shape else 0
        try:
            dtype = np.dtype(raw.dtype)
        except (TypeError, ValueError, SyntaxError):
            dtype = None
        if dtype is None or dtype.kind not in "biuf" or dtype.itemsize == 0 or dtype.fields or dtype.subdtype:
            self._reject(resp, ch, n, bad, f"unknown dtype {raw.dtype!r}: send a numpy dtype string such as "
                         f"{str(np.dtype(codec.raw_dtype))!r}")
            return None
        if len(shape) < 2 or any(d < 0 for d in shape):
            self._reject(resp, ch, n, bad, f"shape {list(shape)} must be (N, *sample_shape) with N >= 1, e.g. "
                         f"[N, {', '.join(str(d) for d in _dims(codec.sample_shape))}]")
            return None
        limit = self.config.limits.max_frames_per_message
        if n > limit:  # before any size arithmetic: N may be absurd
            text = f"message has {n} frames; limits.max_frames_per_message is {limit}: split it into smaller messages"
            self._limit_hit(ch, "frames_per_message", text, seen, who)
            self._reject(resp, ch, n, grpc.StatusCode.RESOURCE_EXHAUSTED, text, reason="limit")
            return None
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no 64-bit wrap-around
        if len(raw.data) != expected:
            self._reject(resp, ch, n, bad, f"data has {len(raw.data)} bytes but shape {list(shape)} of {dtype} needs "
                         f"{expected}: send arr.tobytes() of a C-contiguous array")
            return None
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
                    self._reject(resp, ch, 1, bad, f"frame {i}: {e}", index=i)
            if len(ok) == n:  # only the batch as a whole is wrong
                self._reject(resp, ch, n, bad, str(whole))
                return None
            valid = np.asarray(ok, dtype=np.int64)
        if valid.size == 0:
            return None
        return RawItem(
            frames=arr[valid], index=valid, n_total=n, quality=quality, producer_id=producer,
            producer_offset=req.producer_offset,
        )

    def _packet_item(self, ch: Channel, req: pb.PublishRequest, producer: str,
                     resp: pb.PublishResponse) -> PacketItem | None:
        from latentwire.codec import bitstream

        bad = grpc.StatusCode.INVALID_ARGUMENT
        codec = ch.model.codec
        n_q = len(_qualities(codec))
        want = tuple(getattr(codec, "sample_shape", ()))
        ok: list[tuple[bytes, int, int, int]] = []
        pos = 0  # frame offset of packet i inside the message (producer offsets count frames)
        for i, data in enumerate(req.packets.packets):
            try:
                header, _ = bitstream.read_packet(data, expected_model_id=ch.model.model_id)
            except BitstreamError as e:
                try:
                    n = int(bitstream.peek_header(data).count)
                except BitstreamError:
                    n = 1
                self._reject(resp, ch, n, bad, f"packet {i}: {type(e).__name__}: {e}", index=i)
                pos += n
                continue
            at, pos = pos, pos + int(header.count)
            shape = tuple(header.sample_shape)
            if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape)):
                self._reject(resp, ch, header.count, bad,
                             f"packet {i}: sample shape {list(shape)} does not match the channel's {list(want)}",
                             index=i)
                continue
            if n_q and header.quality != bitstream.CUSTOM_QUALITY and not 0 <= header.quality < n_q:
                self._reject(resp, ch, header.count, bad,
                             f"packet {i}: quality {header.quality} is not one of the model's 0..{n_q - 1}", index=i)
                continue
            valid = sum(c for _, c, _, _ in ok) + int(header.count)
            if self.config.verify_packets and valid <= self.config.limits.max_frames_per_message:
                # (a message over the frame limit is refused whole by _accept: no need to decode it)
                problem = self._undecodable(codec, data, header)
                if problem:
                    self._reject(resp, ch, header.count, bad, f"packet {i}: {problem}", index=i)
                    continue
            ok.append((bytes(data), int(header.count), int(header.quality), at))
        if not ok:
            return None
        return PacketItem(packets=ok, n_total=pos, producer_id=producer,
                          producer_offset=req.producer_offset)

    def _undecodable(self, codec: Any, data: bytes, header: Any) -> str | None:
        """Why an edge-coded packet cannot be decoded, or None. A packet with a valid header and CRC
        but a payload that does not decode (a buggy or hostile encoder) would otherwise be stored
        and fail in every subscriber that decodes it, at every retry: a poison packet."""
        elements = int(header.count) * math.prod(int(d) for d in header.sample_shape)
        itemsize = np.dtype(getattr(codec, "raw_dtype", "uint8")).itemsize
        if elements * itemsize > 64 * self.config.limits.max_message_bytes:
            return (f"decodes to {elements * itemsize} bytes, more than 64 x limits.max_message_bytes: "
                    "send fewer frames per packet")
        try:
            out = codec.decode(data)
        except Exception as e:  # noqa: BLE001 - whatever the payload does, it is the sender's fault
            return (f"does not decode ({type(e).__name__}: {e}); it was not stored: check the sender's "
                    "bundle and encoder")
        if out.shape[0] != header.count:
            return f"does not decode: {out.shape[0]} frames for a header of {header.count}"
        return None

    # ------------------------------------------------------------------ subscribe

    @staticmethod
    def _packet_shape(ch: Channel, payload: bytes) -> list[int]:
        """The sample shape of a packet: the model's, or the header's when the model has dynamic axes."""
        shape = tuple(getattr(ch.model.codec, "sample_shape", ()))
        if all(d is not None for d in shape):
            return _dims(shape)
        from latentwire.codec.bitstream import peek_header

        return [int(d) for d in peek_header(payload).sample_shape]

    def Subscribe(self, request: pb.SubscribeRequest, context: grpc.ServicerContext):
        self._check(context)
        ch = self._channel(context, request.channel)
        who = self._check(context, "subscribe", ch.name)
        try:
            next_seq, first_seq = ch.store.next_seq, ch.store.first_seq
        except StoreUnavailable as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if request.HasField("from_seq"):
            if request.latest:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give from_seq or latest=true, not both")
            seq = int(request.from_seq)
            if seq > next_seq:
                context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"from_seq {seq} is beyond channel {ch.name!r}'s next seq {next_seq}: "
                    "resume from at most the next seq (the server's log may have been reset)",
                )
        elif request.latest:
            seq = next_seq
        else:
            seq = first_seq
        trimmed = max(0, first_seq - seq)  # asked for frames retention already dropped (on any replica)
        seq = max(seq, first_seq)
        with self._lock:
            full = self._subscribers >= self.config.limits.max_subscribers
            if not full:
                self._subscribers += 1
                ch.subscribers += 1
        if full:
            self._limit(context, "subscribers",
                        f"this server already has {self.config.limits.max_subscribers} subscribers "
                        "(limits.max_subscribers): retry later or raise the limit")
        self.metrics.subscribers.labels(ch.name).inc()
        log.info("subscriber %s on %s from seq %d", who, ch.name, seq)
        # a client may ask for fewer packets per response, never more (2^32-1 would read the whole log)
        limit = min(request.max_packets_per_response or self.config.subscribe_packets_per_response,
                    self.config.subscribe_packets_per_response)
        max_bytes = self.config.limits.max_message_bytes // 2
        first_resp = True
        last_model = ""  # PacketRecord.model_id is sent only when it changes within this stream
        try:
            while context.is_active() and not self.stopping.is_set():
                if seq >= ch.next_seq:  # nothing new: wait for a commit, do not ask the store
                    ch.wait_for(seq, 0.25)
                    continue
                try:
                    pkts = ch.read_from(seq, limit)
                except StoreUnavailable as e:
                    log.warning("subscriber %s on %s: %s; ending the stream (the client reconnects)", who, ch.name, e)
                    context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
                if not pkts:
                    ch.wait_for(seq, 0.25)
                    continue
                if pkts[0].first_seq > seq:  # retention dropped what this subscriber still needed
                    trimmed += pkts[0].first_seq - seq
                resp = pb.SubscribeResponse(trimmed_frames=trimmed, next_seq=ch.next_seq)
                size = 0
                for p in pkts:
                    if resp.packets and size + len(p.payload) > max_bytes:
                        break
                    resp.packets.append(pb.PacketRecord(
                        first_seq=p.first_seq, count=p.count, timestamp=p.ts,
                        model_id="" if p.model_id == last_model else p.model_id,
                        quality=p.quality, sample_shape=self._packet_shape(ch, p.payload),
                        payload=p.payload, anomaly_scores=p.anomaly_scores or (),
                    ))
                    size += len(p.payload)
                    last_model = p.model_id
                    seq = p.end_seq
                frames = sum(p.count for p in resp.packets)
                self.metrics.frames_out.labels(ch.name).inc(frames)
                self.metrics.wire_bytes_out.labels(ch.name).inc(size)
                if trimmed and first_resp:
                    log.warning("subscriber %s on %s asked for %d frames already trimmed by retention",
                                who, ch.name, trimmed)
                first_resp = False
                trimmed = 0
                yield resp
        finally:
            with self._lock:
                self._subscribers -= 1
                ch.subscribers -= 1
            self.metrics.subscribers.labels(ch.name).dec()
