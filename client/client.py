"""`Client`: the Python face of the latentwire gRPC API, a small facade over its parts.

- connection: one gRPC channel, bounded waits (ConnectError says where and why);
- bundles.py: verified download and cache of bundles, one Codec per model;
- subscribe.py: resume-exact streams, decoded locally in batches;
- publish.py: pipelined, resumable publishing that never loses frames quietly;
- types.py: the value types every call returns; errors.py: the client's typed errors.
No torch anywhere on this path.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from latentwire.codec.codec import Codec
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

from .bundles import BundleCache, default_cache_dir
from .errors import ConnectError
from .publish import FrameSource, PublishOptions, PublishSession, frame_messages, packet_messages
from .subscribe import FromSeq, StreamOptions, Subscriber, check_from_seq
from .types import (
    ChannelInfo,
    Frame,
    FrameBatch,
    ModelInfo,
    Packet,
    PublishAck,
    PublishResult,
    channel_info,
    model_info,
)

DEFAULT_CONNECT_TIMEOUT = 10.0


class Client:
    def __init__(
        self,
        target: str,
        token: str | None = None,
        tls: str | Path | bool | None = None,
        *,
        max_message_bytes: int = 16 << 20,
        cache_dir: str | Path | None = None,
        timeout: float = 30.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        logger: logging.Logger | None = None,
    ):
        """target: host:port. token: bearer token sent as `authorization` metadata. tls: True for
        the system roots, or a path to a root certificate (PEM); None/False: plaintext.
        connect_timeout: how long the first call waits for a server to answer before ConnectError.
        timeout: how long later unary calls (models, channels) wait. logger: where reconnects and
        refusals are logged (daemons pass their own, so their log says who reconnected)."""
        self.target, self.timeout, self.connect_timeout = target, timeout, connect_timeout
        self.log = logger or logging.getLogger("latentwire.client")
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        opts = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            # a private subchannel pool: another Client's connection backoff (after a server
            # restart) must not make this one's first calls fail fast
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if tls:
            root = None if tls is True else Path(tls).read_bytes()
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root), opts)
        else:
            self._channel = grpc.insecure_channel(target, opts)
        self.stub = pb_grpc.LatentwireStub(self._channel)
        self._connected = threading.Event()
        self.bundles = BundleCache(Path(cache_dir) if cache_dir else default_cache_dir(), self._chunks, self._files,
                                   self.log)
        self._subscriber = Subscriber(self.stub, self._metadata, self.bundles.codec, self.log)

    @property
    def cache_dir(self) -> Path:
        return self.bundles.root

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ connection
    def connect(self, timeout: float | None = None) -> None:
        """Wait until the server answers (at most connect_timeout seconds); ConnectError otherwise,
        saying where and what the last attempt saw (e.g. connection refused)."""
        if self._connected.is_set():
            return
        wait = self.connect_timeout if timeout is None else timeout
        t0 = time.monotonic()
        try:
            grpc.channel_ready_future(self._channel).result(timeout=wait)
        except grpc.FutureTimeoutError:
            raise ConnectError(self.target, time.monotonic() - t0, self._why_unreachable()) from None
        self._connected.set()

    def _why_unreachable(self) -> str:
        try:
            self.stub.ListChannels(pb.ListChannelsRequest(), metadata=self._metadata, timeout=2.0)
        except grpc.RpcError as e:
            details = str(e.details() or "")
            if "refused" in details.lower():
                return "connection refused"
            return f"{e.code().name}: {details}" if details else e.code().name
        return "it answered only after the wait ended"

    def _unary(self) -> dict:
        self.connect()
        return {"metadata": self._metadata, "timeout": self.timeout, "wait_for_ready": True}

    # ------------------------------------------------------------------ metadata
    def models(self) -> list[ModelInfo]:
        return [model_info(m) for m in self.stub.ListModels(pb.ListModelsRequest(), **self._unary()).models]

    def model(self, model_id: str) -> ModelInfo:
        return model_info(self.stub.GetModel(pb.GetModelRequest(model_id=model_id), **self._unary()))

    def channels(self) -> list[ChannelInfo]:
        return [channel_info(c) for c in self.stub.ListChannels(pb.ListChannelsRequest(), **self._unary()).channels]

    def channel(self, name: str) -> ChannelInfo:
        found = self.channels()
        for c in found:
            if c.name == name:
                return c
        raise KeyError(f"no channel {name!r} on {self.target}: it has {[c.name for c in found]}")

    # ------------------------------------------------------------------ bundles
    def _chunks(self, model_id: str, files: Sequence[str]) -> Iterator[pb.BundleChunk]:
        return self.stub.DownloadBundle(pb.DownloadBundleRequest(model_id=model_id, files=files),
                                        metadata=self._metadata)

    def _files(self, model_id: str) -> list[str]:
        return [f.name for f in self.stub.GetModel(pb.GetModelRequest(model_id=model_id), **self._unary()).files]

    def _full_id(self, model_id: str) -> str:
        return model_id if len(model_id) == 64 else self.model(model_id).model_id

    def fetch_decoder(self, model_id: str, cache_dir: str | Path | None = None) -> Path:
        """Download (or reuse from the cache) what a receiver needs of model_id's bundle: every
        file but encoder.onnx; returns its verified folder (BundleError if it does not verify,
        leaving nothing in the cache)."""
        return self.bundles.fetch(self._full_id(model_id), cache_dir)

    def codec(self, model_id: str, cache_dir: str | Path | None = None, encoder: bool = False) -> Codec:
        """A Codec for model_id (fetched, verified, loaded once per Client). It decodes; with
        ``encoder`` it encodes too (the bundle's encoder.onnx is then fetched as well)."""
        return self.bundles.codec(self._full_id(model_id), cache_dir, encoder)

    def embed(self, model_id: str, frames: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Latent codes (N, *latent_shape) float32 of raw frames (N, *sample_shape): the model's
        features before quantization (Codec.embed), computed here with the bundle's encoder.onnx.
        model_id: the full id or a unique prefix of >= 8 hex digits (ChannelInfo.model_id)."""
        codec = self.codec(model_id, encoder=True)
        arr = np.asarray(frames)
        return codec.embed(arr[None] if arr.ndim == len(codec.sample_shape) else arr, batch_size)

    # ------------------------------------------------------------------ subscribe
    def _start(self, channel: str, from_seq: FromSeq) -> int | None:
        """The resume point: "latest" is resolved now, so a reconnect before the first frame loses nothing."""
        check_from_seq(from_seq)
        return self.channel(channel).next_seq if from_seq == "latest" else from_seq  # type: ignore[return-value]

    def subscribe_packets(self, channel: str, from_seq: FromSeq = None, *, idle_timeout: float | None = None,
                          max_backoff: float = 5.0, max_retries: int | None = None,
                          stop: threading.Event | None = None, compact: bool = True,
                          epoch: str = "") -> Generator[Packet, None, None]:
        """Coded packets of a channel, resuming after a failure at the end of the last packet
        yielded. from_seq: None (oldest retained), an int, or "latest" (resolved when this is
        called). idle_timeout: stop after this many seconds without data. stop: an Event that
        ends the iteration promptly when set (signal handlers). compact: one-frame packets travel as
        compact stream frames (codec/FORMAT.md) and are expanded here: the packets yielded are always
        the full packets the sender encoded. epoch: the epoch an int from_seq belongs to (Packet.epoch,
        saved with the position): if the channel has another one now (its store was reset), the
        iteration raises ChannelReset instead of handing out frames of another incarnation."""
        opts = StreamOptions(idle_timeout, max_backoff, max_retries, stop, compact, epoch)
        return self._subscriber.packets(channel, self._start(channel, from_seq), opts)

    def subscribe_batches(self, channel: str, from_seq: FromSeq = None, *, idle_timeout: float | None = None,
                          max_backoff: float = 5.0, max_retries: int | None = None,
                          stop: threading.Event | None = None, cache_dir: str | Path | None = None,
                          denoise: bool = False, compact: bool = True, epoch: str = "") -> Iterator[FrameBatch]:
        """Decoded frames, one FrameBatch per Subscribe response (each frame exactly once, in seq
        order, same resume and epoch rules as subscribe_packets): the fast path for receivers that keep up."""
        opts = StreamOptions(idle_timeout, max_backoff, max_retries, stop, compact, epoch)
        return self._subscriber.batches(channel, self._start(channel, from_seq), opts, cache_dir, denoise)

    def subscribe(self, channel: str, from_seq: FromSeq = None, *, idle_timeout: float | None = None,
                  max_backoff: float = 5.0, max_retries: int | None = None, cache_dir: str | Path | None = None,
                  denoise: bool = False, compact: bool = True, epoch: str = "") -> Iterator[Frame]:
        """Decoded frames of a channel, each exactly once and in seq order (see subscribe_packets).

        Each Frame says which path it took (latent, residual, lossless fallback) and carries the
        server's anomaly score when the server coded it. denoise=True: frames that came through a
        residual or lossless packet are replaced by the model's latent-only reconstruction
        (Codec.denoise; it runs the bundle's encoder.onnx here); latent frames already are that. epoch:
        as in subscribe_packets (ChannelReset when the channel is no longer at that epoch)."""
        opts = StreamOptions(idle_timeout, max_backoff, max_retries, None, compact, epoch)
        return self._subscriber.frames(channel, self._start(channel, from_seq), opts, cache_dir, denoise)

    # ------------------------------------------------------------------ publish
    def publish(self, channel: str, frames: FrameSource, quality: int | None = None, encode_at_edge: bool = False, *,
                frames_per_message: int = 256, producer_id: str | None = None, start_offset: int = 0,
                window: int = 16, max_retries: int = 8, max_backoff: float = 5.0,
                on_ack: Callable[[PublishAck], None] | None = None, compact: bool = True) -> PublishResult:
        """Send frames (an (N, *sample_shape) array, or an iterable of single frames or batches).

        encode_at_edge: encode here with the channel's Codec and send packets (the server only
        validates and relays them); otherwise send RAW frames the server batches and encodes.
        producer_id/start_offset: resume an earlier producer exactly (offsets count frames); by
        default a fresh id per call still makes the reconnect-and-resend path duplicate-free.
        Frames the server refused come back in `errors`. If the iterable (or encoding) raises,
        the frames it gave are still sent and acknowledged, then PublishAborted is raised with
        the exception as its cause and the exact result as `.result`.
        compact: with encode_at_edge and one frame per message, frames after a stream's first go out
        as compact stream frames (codec/FORMAT.md) when the server takes them: 20 bytes less each."""
        info = self.channel(channel)
        codec = self.codec(info.model_id, encoder=True) if encode_at_edge else None
        session = self._session(channel, quality, producer_id, window, max_retries, max_backoff, on_ack, compact)
        q = info.quality if quality is None else quality
        return session.run(frame_messages(frames, len(info.sample_shape), frames_per_message, codec, q, start_offset,
                                          session.result))

    def publish_packets(self, channel: str, packets: Iterable[bytes], *, packets_per_message: int = 1,
                        producer_id: str | None = None, start_offset: int = 0, window: int = 16, max_retries: int = 8,
                        max_backoff: float = 5.0, on_ack: Callable[[PublishAck], None] | None = None,
                        compact: bool = True) -> PublishResult:
        """Send packets coded elsewhere (Codec.encode, a .lw file): the server only validates and
        relays them. Same rules as publish(); offsets count frames (each packet's header count).
        The iterable is consumed lazily. A packet that fails its own header or CRC check is
        reported in `errors` (with its packet_index) and not sent; the others still go. compact: as
        in publish(), for one-frame packets sent one per message."""
        self.connect()
        session = self._session(channel, None, producer_id, window, max_retries, max_backoff, on_ack, compact)
        return session.run(packet_messages(packets, packets_per_message, start_offset, session.result, self.log,
                                           channel))

    def _session(self, channel: str, quality: int | None, producer_id: str | None, window: int, max_retries: int,
                 max_backoff: float, on_ack: Callable[[PublishAck], None] | None,
                 compact: bool = True) -> PublishSession:
        return PublishSession(self.stub, self._metadata, channel, producer_id or uuid.uuid4().hex, quality,
                              PublishOptions(window, max_retries, max_backoff, on_ack, compact), self.log)
