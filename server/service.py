"""The latentwire.v1.Latentwire servicer: auth and the RPCs (validation is admission.py, message
building is wire.py).

Publish is bidi and pipelined: a reader thread validates each request and hands it to the
channel's batcher while the handler yields responses in request order as commits complete, so a
publisher can keep many messages in flight; a bad frame is answered in-band (FrameError with the
client's message_index) and the stream goes on. Stream-level problems (unknown channel, auth,
malformed open) end the call with a status code.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc

from latentwire.codec.coding.compact import CompactWriter
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

from .admission import FRAMES_LIMIT, PublishStream, admit_packets, admit_raw
from .auth import AuthError, TokenStore
from .batcher import QueueFull, Stopped, StreamState
from .channels import Channel, ModelEntry
from .config import ServerConfig
from .metrics import Metrics
from .store import StoreFull, StoreReset, StoreUnavailable
from .wire import RecordContext, channel_info, compact_record, dims, model_info, packet_record

log = logging.getLogger("latentwire.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Latentwire"].full_name
CHUNK_BYTES = 1 << 20
_U32 = 2**32 - 1
_END = object()


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
        return ch

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
        if ch.fault is not None:  # what this replica last knew: the store holds another channel now
            return channel_info(ch, ch.next_seq, ch.next_seq)
        return channel_info(ch, ch.store.next_seq, ch.store.first_seq)

    @staticmethod
    def _reset(context: grpc.ServicerContext, ch: Channel) -> None:
        """End the call with DATA_LOSS when the channel's store was reset (store.StoreReset)."""
        if ch.fault is not None:
            context.abort(grpc.StatusCode.DATA_LOSS, str(ch.fault))

    # ------------------------------------------------------------------ models and channels

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self._check(context)
        return pb.ListModelsResponse(models=[model_info(m) for m in self.models.values()])

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        self._check(context)
        return model_info(self._model(context, request.model_id))

    def DownloadBundle(
        self, request: pb.DownloadBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.BundleChunk]:
        self._check(context)
        m = self._model(context, request.model_id)
        wanted = set(request.files)
        unknown = sorted(wanted - {f.name for f in m.files})
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"bundle {m.model_id[:12]}... has no file {', '.join(unknown)}; its files: "
                          f"{', '.join(f.name for f in m.files)}")
        # a chunk plus its fields must fit the configured message limit (1 MiB chunks failed with
        # RESOURCE_EXHAUSTED under max_message_bytes <= 1 MiB)
        chunk_bytes = max(1024, min(CHUNK_BYTES, self.config.limits.max_message_bytes // 2))
        for f in (f for f in m.files if not wanted or f.name in wanted):
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
        n_q = len(ch.model.codec.qualities)
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
            self._reset(context, ch)
            try:
                opened = pb.PublishResponse(
                    message_index=first.message_index,
                    producer_next_offset=ch.store.producer_next_offset(producer) if producer else 0,
                    channel=self.channel_info(ch),
                    compact_frames=True,
                )
            except StoreUnavailable as e:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            yield opened
            pending: queue.Queue = queue.Queue(maxsize=256)

            stop_with: list[tuple[grpc.StatusCode, str]] = []
            limits_seen: set[str] = set()  # each limit is logged once per stream, counted every time

            stream = PublishStream()
            state = StreamState()  # the batcher refuses this stream's later messages once one is refused

            def reader() -> None:
                try:
                    for req in request_iterator:
                        pending.put(self._accept(ch, req, quality, producer, limits_seen, who, stream, state))
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
                except Exception as e:  # the client went away or sent garbage
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
                    except StoreReset as e:  # nothing of this message was committed, and nothing will be
                        stop_with.insert(0, (grpc.StatusCode.DATA_LOSS, str(e)))
                        break
                    except StoreUnavailable as e:
                        # nothing of this message (or after it) was committed: the client resends
                        stop_with.insert(0, (grpc.StatusCode.UNAVAILABLE, f"{e}; resend from message "
                                                                          f"{resp.message_index}"))
                        break
                    except StoreFull as e:
                        # the same, until space returns: the client resends with backoff (client/retry.py)
                        stop_with.insert(0, (grpc.StatusCode.RESOURCE_EXHAUSTED, (
                            f"channel {ch.name}: {e}: nothing of message {resp.message_index} or later was "
                            f"committed; resend from message {resp.message_index} (writes resume by themselves "
                            "once space returns)")))
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
                seen: set[str], who: str, stream: PublishStream, state: StreamState):
        """Validate one data message (admission.py) and queue what passed: (response skeleton,
        future or None). A compact `frame` message is expanded to its packet first."""
        kind = req.WhichOneof("kind")
        limits = self.config.limits
        index, offset, packets, refusal = stream.resolve(req)
        resp = pb.PublishResponse(message_index=index)
        if kind not in ("raw", "packets", "frame"):
            return self._reject(resp, ch, 0, grpc.StatusCode.INVALID_ARGUMENT, f"message {index}: "
                                f"expected `raw`, `packets` or `frame` after open, got {kind or 'nothing'}"), None
        if refusal is not None:
            return self._reject(resp, ch, refusal.frames, refusal.code, f"message {index}: {refusal.message}"), None
        try:
            if packets is None:
                verdict = admit_raw(ch.model.codec, req.raw, max_frames=limits.max_frames_per_message,
                                    quality=quality, producer=producer, offset=offset)
            else:
                verdict = admit_packets(ch.model.codec, packets, max_frames=limits.max_frames_per_message,
                                        verify=self.config.verify_packets, max_message_bytes=limits.max_message_bytes,
                                        producer=producer, offset=offset)
        except Exception as e:  # one message's surprise must not end the stream
            log.exception("publish on %s: message %d could not be validated", ch.name, index)
            return self._reject(resp, ch, 0, grpc.StatusCode.INTERNAL,
                                f"message {index} could not be validated ({type(e).__name__}); "
                                "it was not stored", reason="internal"), None
        if verdict.limit is not None:
            self._limit_hit(ch, FRAMES_LIMIT, verdict.limit, seen, who)
        for r in verdict.refusals:
            self._reject(resp, ch, r.frames, r.code, r.message, index=r.index, reason=r.reason)
        if verdict.item is None:
            return resp, None
        resp.accepted = verdict.item.n  # provisional: replaced by the commit
        verdict.item.stream = state
        return resp, ch.batcher.submit(verdict.item)  # QueueFull / Stopped end the stream (see Publish)

    # ------------------------------------------------------------------ subscribe

    @staticmethod
    def _packet_shape(ch: Channel, payload: bytes) -> list[int]:
        """The sample shape of a packet: the model's, or the header's when the model has dynamic axes."""
        shape = tuple(ch.model.codec.sample_shape)
        if all(d is not None for d in shape):
            return dims(shape)
        from latentwire.codec.coding.bitstream import peek_header

        return [int(d) for d in peek_header(payload).sample_shape]

    def Subscribe(self, request: pb.SubscribeRequest, context: grpc.ServicerContext):
        self._check(context)
        ch = self._channel(context, request.channel)
        who = self._check(context, "subscribe", ch.name)
        self._reset(context, ch)
        if request.epoch and request.epoch != ch.epoch:
            at = f" (seq {request.from_seq})" if request.HasField("from_seq") else ""
            context.abort(grpc.StatusCode.DATA_LOSS,
                          f"channel {ch.name!r} is at epoch {ch.epoch} (next seq {ch.next_seq}), not epoch "
                          f"{request.epoch} that this subscriber's position{at} belongs to: the store was reset and "
                          "the frames after that position are lost; subscribe without the old position (and epoch) "
                          "to go on")
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
        epoch = ch.epoch  # sent on the first response that carries packets, so the client can keep it
        last_model = ""  # PacketRecord.model_id is sent only when it changes within this stream
        # one-frame packets as compact frames in the context of this stream's previous packet (the
        # client's reader starts afresh on every Subscribe call, as this writer does)
        writer = CompactWriter() if request.compact_frames else None
        records = RecordContext() if writer is not None and request.compact_records else None
        try:
            while context.is_active() and not self.stopping.is_set():
                self._reset(context, ch)
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
                resp = pb.SubscribeResponse(trimmed_frames=trimmed, next_seq=ch.next_seq,
                                            epoch=epoch if first_resp else "")
                size = 0
                for p in pkts:
                    if resp.packets and size + len(p.payload) > max_bytes:
                        break
                    model_id = "" if p.model_id == last_model else p.model_id
                    packed = p.payload if writer is None else writer.pack(p.payload)
                    if packed is p.payload:
                        rec = packet_record(p, self._packet_shape(ch, p.payload), model_id)
                        resp.packets.append(rec if records is None else records.whole(rec))
                    else:  # compact: the record carries no shape (the expanded header does)
                        rec = compact_record(p, model_id, packed)
                        resp.packets.append(rec if records is None else records.compact(rec))
                    size += len(packed)
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
