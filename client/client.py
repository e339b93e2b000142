"""`Client`: the Python face of the latentwire gRPC API.

Subscribers decode locally: the client downloads a channel's bundle once, verifies that every
file hashes to the manifest and the bundle hashes to its model id BEFORE onnxruntime sees it
(a tampered or mixed-up bundle is refused), caches it by id, and decodes packets with Codec.

Delivery guarantees:
- subscribe(): reconnects with exponential backoff and resumes from the seq after the last frame
  it yielded, so a server restart or network cut neither loses nor duplicates frames (as long as
  the server's retention still holds them). A packet that starts before the wanted seq is
  decoded whole and its already-delivered frames are dropped client-side.
- publish(): pipelines up to `window` messages; with a producer id (auto-generated per call when
  not given) the server drops frames it already committed, so resending unacknowledged messages
  after a reconnect creates no duplicates.
No torch anywhere on this path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import grpc
import numpy as np

from latentwire.codec.bitstream import FLAG_LOSSLESS, FLAG_RESIDUAL
from latentwire.codec.errors import BitstreamError, BundleError
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

log = logging.getLogger("latentwire.client")

RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
})


# ---------------------------------------------------------------------- value types


PATH_LATENT, PATH_RESIDUAL, PATH_LOSSLESS = "latent", "residual", "lossless"  # as Codec.path names them


def packet_path(payload: bytes) -> str:
    """Which path a packet's frames took: "latent" (the model alone), "residual" (model + bounded
    correction) or "lossless" (zstd of the raw frames: the sender found them anomalous). Read
    from the header's flags byte; decoding the packet checks the rest (codec/FORMAT.md)."""
    flags = payload[3] if len(payload) > 3 else 0
    return PATH_LOSSLESS if flags & FLAG_LOSSLESS else PATH_RESIDUAL if flags & FLAG_RESIDUAL else PATH_LATENT


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
class ModelInfo:
    model_id: str
    name: str
    family: str
    sample_shape: tuple[int | None, ...]
    raw_dtype: str
    normalization: dict[str, Any]
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


@dataclass(frozen=True)
class PublishError:
    message_index: int
    frame_index: int  # index of the frame (RAW) or of the packet's first frame (edge) in this publish call
    code: grpc.StatusCode
    message: str


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


@dataclass
class PublishResult:
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    messages: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    raw_bytes: int = 0  # bytes of raw samples handed to publish
    sent_bytes: int = 0  # bytes of the data messages on the wire (encoded protobuf size)
    reconnects: int = 0
    errors: list[PublishError] = field(default_factory=list)


def _shape(dims: Iterable[int]) -> tuple[int | None, ...]:
    return tuple(None if d < 0 else int(d) for d in dims)


def _model_info(m: pb.ModelInfo) -> ModelInfo:
    n = m.input.normalization
    return ModelInfo(
        model_id=m.model_id, name=m.name, family=m.family, sample_shape=_shape(m.input.sample_shape),
        raw_dtype=m.input.raw_dtype,
        normalization={"offset": n.offset, "scale": n.scale, "raw_dtype": n.raw_dtype, "raw_min": n.raw_min,
                       "raw_max": n.raw_max},
        qualities=tuple(QualityInfo(q.index, q.name, q.max_error if q.HasField("max_error") else None)
                        for q in m.qualities),
        default_quality=m.default_quality, latent_shape=_shape(m.latent.shape), bundle_size=m.bundle_size_bytes,
        files=tuple((f.name, f.size, f.sha256) for f in m.files),
    )


def _channel_info(c: pb.ChannelInfo) -> ChannelInfo:
    return ChannelInfo(c.name, c.model_id, c.quality, c.next_seq, c.first_retained_seq, c.subscribers,
                       _shape(c.sample_shape), c.raw_dtype, c.fallback,
                       c.anomaly_threshold if c.HasField("anomaly_threshold") else None)


def default_cache_dir() -> Path:
    env = os.environ.get("LATENTWIRE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "latentwire" / "bundles"


@dataclass
class _Msg:
    index: int
    first_frame: int
    frames: int
    request: pb.PublishRequest


# ---------------------------------------------------------------------- client


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
    ):
        """target: host:port. token: bearer token sent as `authorization` metadata. tls: True for
        the system roots, or a path to a root certificate (PEM); None/False: plaintext.
        timeout: how long unary calls (models, channels) wait for the server to be reachable."""
        self.timeout = timeout
        self.target = target
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
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
        self._codecs: dict[str, Any] = {}
        self._lock = threading.Lock()
        # subscribe: responses read ahead on a helper thread (bounded: a slow consumer still pushes
        # back on the server through gRPC flow control), and the most frames decoded in one call
        self.prefetch_responses = 16
        # (1024: decode_many is already near the bare graph's speed there, and onnxruntime's arena
        # grows to the largest batch it has seen, so a larger cap only costs receiver memory)
        self.max_batch_frames = 1024

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata

    def models(self) -> list[ModelInfo]:
        resp = self.stub.ListModels(pb.ListModelsRequest(), **self._unary())
        return [_model_info(m) for m in resp.models]

    def model(self, model_id: str) -> ModelInfo:
        return _model_info(self.stub.GetModel(pb.GetModelRequest(model_id=model_id), **self._unary()))

    def _unary(self) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": self.timeout, "wait_for_ready": True}

    def channels(self) -> list[ChannelInfo]:
        resp = self.stub.ListChannels(pb.ListChannelsRequest(), **self._unary())
        return [_channel_info(c) for c in resp.channels]

    def channel(self, name: str) -> ChannelInfo:
        for c in self.channels():
            if c.name == name:
                return c
        raise KeyError(f"no channel {name!r} on {self.target}: it has {[c.name for c in self.channels()]}")

    # ------------------------------------------------------------------ bundles

    def fetch_decoder(self, model_id: str, cache_dir: str | Path | None = None) -> Path:
        """Download (or reuse from the cache) the bundle of model_id; returns its verified folder.

        Verified = every file matches its sha256 and the bundle hashes to model_id
        (Bundle.load(verify=True)); raises BundleError otherwise, leaving nothing in the cache."""
        from latentwire.codec.bundle import Bundle

        cache = Path(cache_dir) if cache_dir else self.cache_dir
        cache.mkdir(parents=True, exist_ok=True)
        if len(model_id) != 64:
            model_id = self.model(model_id).model_id
        final = cache / model_id
        if final.is_dir():
            try:
                if Bundle.load(final, verify=True).model_id == model_id:
                    return final
            except BundleError as e:
                log.warning("cached bundle %s failed verification (%s); downloading it again", final, e)
            shutil.rmtree(final, ignore_errors=True)
        tmp = cache / f".partial-{model_id[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            self._download(model_id, tmp)
            bundle = Bundle.load(tmp, verify=True)
            if bundle.model_id != model_id:
                raise BundleError(
                    f"the server sent a bundle with model id {bundle.model_id[:12]}... for {model_id[:12]}...: "
                    "refusing it (wrong or tampered bundle on the server)"
                )
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():  # another process raced us to it
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _download(self, model_id: str, into: Path) -> None:
        files: dict[str, tuple[Any, Any, int, str, int]] = {}
        try:
            for chunk in self.stub.DownloadBundle(pb.DownloadBundleRequest(model_id=model_id), metadata=self._metadata):
                name = chunk.file_name
                if not name or "/" in name or "\\" in name or name.startswith("."):
                    raise BundleError(f"the server sent a bundle file named {name!r}: refusing it")
                if name not in files:
                    files[name] = (open(into / name, "wb"), hashlib.sha256(), 0, chunk.sha256, chunk.file_size)
                fh, h, off, sha, size = files[name]
                if chunk.offset != off:
                    raise BundleError(f"{name}: chunk at offset {chunk.offset}, expected {off}; retry the download")
                fh.write(chunk.data)
                h.update(chunk.data)
                files[name] = (fh, h, off + len(chunk.data), sha, size)
        finally:
            for fh, *_ in files.values():
                fh.close()
        if "manifest.json" not in files:
            raise BundleError(f"the server sent no manifest.json for {model_id[:12]}...; is it a latentwire bundle?")
        for name, (_, h, off, sha, size) in files.items():
            if off != size or h.hexdigest() != sha:
                raise BundleError(
                    f"downloaded {name} is {off} bytes with sha256 {h.hexdigest()[:12]}..., the server announced "
                    f"{size} bytes / {sha[:12]}...: the transfer was corrupted; retry"
                )

    def codec(self, model_id: str, cache_dir: str | Path | None = None) -> Any:
        """A Codec for model_id (fetched, verified, loaded once per Client)."""
        with self._lock:
            c = self._codecs.get(model_id)
        if c is None:
            from latentwire.codec.codec import Codec

            c = Codec.load(self.fetch_decoder(model_id, cache_dir))
            with self._lock:
                self._codecs[model_id] = c
        return c

    # ------------------------------------------------------------------ subscribe

    def subscribe_packets(
        self,
        channel: str,
        from_seq: int | str | None = None,
        *,
        idle_timeout: float | None = None,
        max_backoff: float = 5.0,
        max_retries: int | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Packet]:
        """Coded packets of a channel, resuming after a failure at the end of the last packet
        yielded. from_seq: None (oldest retained), an int, or "latest" (resolved to the
        channel's next seq now, so a reconnect before the first frame loses nothing).
        idle_timeout: stop iterating after this many seconds without data (None: never).
        stop: an Event that ends the iteration promptly when set (signal handlers).
        "latest" is resolved when this is called, not at the first next()."""
        if from_seq == "latest":
            from_seq = self.channel(channel).next_seq
        elif from_seq is not None and not isinstance(from_seq, int):
            raise ValueError(f"from_seq must be None, an int or 'latest', got {from_seq!r}")
        return self._packets(channel, from_seq, idle_timeout, max_backoff, max_retries, stop)  # type: ignore[arg-type]

    def _packets(self, channel: str, from_seq: int | None, idle_timeout: float | None, max_backoff: float,
                 max_retries: int | None, stop: threading.Event | None) -> Iterator[Packet]:
        for packets, _ in self._responses(channel, from_seq, idle_timeout, max_backoff, max_retries, stop):
            yield from packets

    def _responses(self, channel: str, from_seq: int | None, idle_timeout: float | None, max_backoff: float,
                   max_retries: int | None, stop: threading.Event | None) -> Iterator[tuple[list[Packet], int]]:
        """(new packets, protobuf size of the responses that carried them), resuming after the last
        packet of the last list handed out (callers consume a whole list before the next).

        Why a list of every response already received: a receiver that fell behind then decodes the
        backlog in one decode_many call instead of one call per response. Under a steady stream of
        small responses (the server sends each commit at once; gRPC flow control only pushes back
        after ~64 KiB) per-call overhead would otherwise keep a behind receiver behind for good."""
        next_seq = from_seq
        attempt = 0
        while stop is None or not stop.is_set():
            req = pb.SubscribeRequest(channel=channel)
            if next_seq is not None:
                req.from_seq = next_seq
            call = self.stub.Subscribe(req, metadata=self._metadata)
            idle = _IdleWatch(call, idle_timeout, stop)
            ahead = _Prefetch(call, depth=self.prefetch_responses)
            model_id = ""  # a PacketRecord names its model only when it changes within the stream
            try:
                for group in ahead.groups(self.max_batch_frames):
                    idle.touch()
                    attempt = 0
                    out = []
                    wire = 0
                    for resp in group:
                        if resp.trimmed_frames:
                            log.warning("channel %s: %d frames from seq %s were trimmed by retention before delivery",
                                        channel, resp.trimmed_frames, next_seq)
                        wire += resp.ByteSize()
                        for p in resp.packets:
                            model_id = p.model_id or model_id
                            if next_seq is not None and p.first_seq + p.count <= next_seq:
                                continue  # already delivered
                            next_seq = p.first_seq + p.count
                            if not model_id:
                                raise BitstreamError("the server sent a packet without naming its model: "
                                                     "server and client disagree on the Subscribe protocol")
                            out.append(Packet(p.first_seq, p.count, p.timestamp, model_id, p.quality,
                                              tuple(p.sample_shape), p.payload, tuple(p.anomaly_scores)))
                    if out:
                        yield out, wire
                        idle.touch()
                log.info("channel %s: server ended the stream (shutdown); resuming from seq %s", channel, next_seq)
            except grpc.RpcError as e:
                if idle.expired or (stop is not None and stop.is_set()):
                    return
                if e.code() not in RETRYABLE or (max_retries is not None and attempt >= max_retries):
                    raise
                log.info("channel %s: %s (%s); reconnecting from seq %s", channel, e.code().name, e.details(),
                         next_seq)
            finally:
                ahead.close()
                idle.cancel()
                call.cancel()
            delay = _backoff(attempt, max_backoff)
            attempt += 1
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)

    def subscribe_batches(
        self,
        channel: str,
        from_seq: int | str | None = None,
        *,
        idle_timeout: float | None = None,
        max_backoff: float = 5.0,
        max_retries: int | None = None,
        stop: threading.Event | None = None,
        cache_dir: str | Path | None = None,
        denoise: bool = False,
    ) -> Iterator[FrameBatch]:
        """Decoded frames, one FrameBatch per Subscribe response (each frame exactly once, in seq
        order, same resume rules as subscribe_packets): the fast path for receivers that keep up.
        denoise: as in subscribe()."""
        if from_seq == "latest":
            from_seq = self.channel(channel).next_seq
        elif from_seq is not None and not isinstance(from_seq, int):
            raise ValueError(f"from_seq must be None, an int or 'latest', got {from_seq!r}")
        responses = self._responses(channel, from_seq, idle_timeout, max_backoff, max_retries, stop)  # type: ignore[arg-type]
        want = from_seq if isinstance(from_seq, int) else None
        for packets, arrays, wire in self._decoded(responses, cache_dir, denoise):
            frames = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            counts = [p.count for p in packets]
            stamps = np.repeat(np.array([p.timestamp for p in packets]), counts)
            paths = np.repeat(np.array([p.path for p in packets]), counts)
            scores = np.concatenate([np.asarray(p.anomaly_scores, dtype=np.float32) if p.anomaly_scores
                                     else np.full(p.count, np.nan, dtype=np.float32) for p in packets])
            first = packets[0].first_seq
            if want is not None and first < want:  # the first packet started before the resume point
                cut = want - first
                frames, stamps, paths, scores, first = frames[cut:], stamps[cut:], paths[cut:], scores[cut:], want
            want = packets[-1].first_seq + packets[-1].count
            yield FrameBatch(first, frames, stamps, len(packets), sum(len(p.payload) for p in packets), wire,
                             paths, scores)

    def _decoded(self, responses: Iterator[tuple[list[Packet], int]], cache_dir: str | Path | None,
                 denoise: bool = False) -> Iterator[tuple[list[Packet], list[np.ndarray], int]]:
        """Each response's packets with their decoded arrays: one decode_many per model per response."""
        for packets, wire in responses:
            if len(packets) == 1 and not denoise:
                p = packets[0]
                yield packets, [self.codec(p.model_id, cache_dir).decode(p.payload)], wire
                continue
            arrays: list[Any] = [None] * len(packets)
            by_model: dict[str, list[int]] = {}
            for i, p in enumerate(packets):
                by_model.setdefault(p.model_id, []).append(i)
            for model_id, idx in by_model.items():
                codec = self.codec(model_id, cache_dir)
                decoded = codec.decode_many([packets[i].payload for i in idx])
                for i, a in zip(idx, decoded):
                    arrays[i] = a
                if denoise:
                    self._denoise(codec, [packets[i] for i in idx], [arrays[i] for i in idx], idx, arrays)
            yield packets, arrays, wire

    @staticmethod
    def _denoise(codec: Any, packets: list[Packet], decoded: list[np.ndarray], idx: list[int],
                 arrays: list[Any]) -> None:
        """Replace the frames of residual and lossless packets by the model's latent-only
        reconstruction (Codec.denoise), in one encoder + decoder run. Latent packets already
        decode to the model's reconstruction of the sender's frame: re-encoding it would only add
        a second round of error, so they stay as decoded."""
        todo = [k for k, p in enumerate(packets) if p.path != PATH_LATENT]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k in todo:
            by_shape.setdefault(tuple(decoded[k].shape[1:]), []).append(k)
        for ks in by_shape.values():
            clean = codec.denoise(np.concatenate([decoded[k] for k in ks]))
            start = 0
            for k in ks:
                n = decoded[k].shape[0]
                arrays[idx[k]] = clean[start : start + n]
                start += n

    def subscribe(
        self,
        channel: str,
        from_seq: int | str | None = None,
        *,
        idle_timeout: float | None = None,
        max_backoff: float = 5.0,
        max_retries: int | None = None,
        cache_dir: str | Path | None = None,
        denoise: bool = False,
    ) -> Iterator[Frame]:
        """Decoded frames of a channel, each exactly once and in seq order (see subscribe_packets).

        Each Frame says which path it took (latent, residual, lossless fallback) and carries the
        server's anomaly score when the server coded it. denoise=True: frames that came through a
        residual or lossless packet are replaced by the model's latent-only reconstruction
        (Codec.denoise; with a denoising variant, the clean sample behind a noisy one); latent
        frames already are that reconstruction. It runs the bundle's encoder.onnx here, which
        fetch_decoder downloads with the rest of the bundle. path and anomaly_score still
        describe the frame as it was sent."""
        if from_seq == "latest":
            from_seq = self.channel(channel).next_seq
        elif from_seq is not None and not isinstance(from_seq, int):
            raise ValueError(f"from_seq must be None, an int or 'latest', got {from_seq!r}")
        responses = self._responses(channel, from_seq, idle_timeout, max_backoff, max_retries, None)  # type: ignore[arg-type]
        return self._frames(responses, from_seq if isinstance(from_seq, int) else None, cache_dir, denoise)

    def _frames(self, responses: Iterator[tuple[list[Packet], int]], want: int | None,
                cache_dir: str | Path | None, denoise: bool = False) -> Iterator[Frame]:
        for packets, arrays, _ in self._decoded(responses, cache_dir, denoise):  # one decode_many per response
            for p, data in zip(packets, arrays):
                path = p.path
                scores = p.anomaly_scores
                for i in range(p.count):
                    seq = p.first_seq + i
                    if want is not None and seq < want:
                        continue  # the packet started before the resume point
                    yield Frame(seq, p.timestamp, p.model_id, p.quality, data[i], path,
                                float(scores[i]) if scores else None)
                want = p.first_seq + p.count

    # ------------------------------------------------------------------ features

    def embed(self, model_id: str, frames: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Latent codes (N, *latent_shape) float32 of raw frames (N, *sample_shape): the model's
        features before quantization (Codec.embed; a VAE gives its posterior mean), computed here
        with the bundle's encoder.onnx (fetched and verified once, like the decoder). model_id:
        the full id or a unique prefix of >= 8 hex digits (ChannelInfo.model_id)."""
        from latentwire.codec.embed import embed_samples

        if len(model_id) != 64:
            model_id = self.model(model_id).model_id
        arr = np.asarray(frames)
        codec = self.codec(model_id)
        if arr.ndim == len(codec.sample_shape):
            arr = arr[None]
        return embed_samples(codec, arr, batch_size)

    # ------------------------------------------------------------------ publish

    def publish(
        self,
        channel: str,
        frames: np.ndarray | Iterable[np.ndarray],
        quality: int | None = None,
        encode_at_edge: bool = False,
        *,
        frames_per_message: int = 256,
        producer_id: str | None = None,
        start_offset: int = 0,
        window: int = 16,
        max_retries: int = 8,
        max_backoff: float = 5.0,
        on_ack: Callable[[PublishAck], None] | None = None,
    ) -> PublishResult:
        """Send frames (an (N, *sample_shape) array, or an iterable of single frames or batches).

        encode_at_edge: encode here with the channel's Codec and send packets (the server only
        validates and relays them); otherwise send RAW frames the server batches and encodes.
        producer_id/start_offset: resume an earlier producer exactly (offsets count frames);
        by default a fresh id per call still makes the
        reconnect-and-resend path duplicate-free. Per-frame errors come back in `errors`."""
        info = self.channel(channel)
        producer = producer_id or uuid.uuid4().hex
        codec = self.codec(info.model_id) if encode_at_edge else None
        q = info.quality if quality is None else quality
        result = PublishResult()
        source = self._messages(frames, info, frames_per_message, codec, q, start_offset, result)
        return self._run_publish(channel, quality, producer, source, result, window, max_retries, max_backoff, on_ack)

    def publish_packets(
        self,
        channel: str,
        packets: Iterable[bytes],
        *,
        packets_per_message: int = 1,
        producer_id: str | None = None,
        start_offset: int = 0,
        window: int = 16,
        max_retries: int = 8,
        max_backoff: float = 5.0,
        on_ack: Callable[[PublishAck], None] | None = None,
    ) -> PublishResult:
        """Send packets that were coded elsewhere (Codec.encode, a .lw file): the server only
        validates and relays them. Same ordering, pipelining, resend and producer-offset rules as
        publish(); offsets count frames (each packet's header count). The iterable is consumed
        lazily, so a generator can pace or encode as it goes. raw_bytes stays 0 (unknown here)."""
        from latentwire.codec.bitstream import peek_header

        result = PublishResult()

        def messages() -> Iterator[_Msg]:
            index, first, offset = 0, 0, start_offset
            group: list[bytes] = []
            frames = 0
            for pkt in packets:
                group.append(pkt)
                frames += int(peek_header(pkt).count)
                if len(group) >= packets_per_message:
                    yield _Msg(index, first, frames, pb.PublishRequest(
                        message_index=index, producer_offset=offset, packets=pb.Packets(packets=group)))
                    index, first, offset = index + 1, first + frames, offset + frames
                    group, frames = [], 0
            if group:
                yield _Msg(index, first, frames, pb.PublishRequest(
                    message_index=index, producer_offset=offset, packets=pb.Packets(packets=group)))

        return self._run_publish(channel, None, producer_id or uuid.uuid4().hex, messages(), result, window,
                                 max_retries, max_backoff, on_ack)

    def _run_publish(self, channel: str, quality: int | None, producer: str, source: Iterator[_Msg],
                     result: PublishResult, window: int, max_retries: int, max_backoff: float,
                     on_ack: Callable[[PublishAck], None] | None) -> PublishResult:
        unacked: "OrderedDict[int, _Msg]" = OrderedDict()
        attempt = 0
        state = {"exhausted": False}
        while True:
            try:
                self._publish_stream(channel, quality, producer, source, unacked, state, result, window, on_ack)
                return result
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE or attempt >= max_retries:
                    raise
                result.reconnects += 1
                delay = _backoff(attempt, max_backoff)
                attempt += 1
                log.info("publish to %s: %s (%s); resending %d unacknowledged message(s) in %.2fs",
                         channel, e.code().name, e.details(), len(unacked), delay)
                time.sleep(delay)

    def _messages(self, frames: Any, info: ChannelInfo, per_msg: int, codec: Any, quality: int, start_offset: int,
                  result: PublishResult) -> Iterator[_Msg]:
        ndim = len(info.sample_shape)
        index, first, offset = 0, 0, start_offset
        for batch in _batches(frames, ndim, per_msg):
            batch = np.ascontiguousarray(batch)
            result.raw_bytes += batch.nbytes
            n = int(batch.shape[0])
            if codec is not None:
                req = pb.PublishRequest(message_index=index, producer_offset=offset,
                                        packets=pb.Packets(packets=[codec.encode(batch, quality=quality)]))
            else:
                req = pb.PublishRequest(message_index=index, producer_offset=offset,
                                        raw=pb.RawFrames(data=batch.tobytes(), dtype=batch.dtype.str,
                                                         shape=list(batch.shape)))
            offset += n
            yield _Msg(index, first, n, req)
            index += 1
            first += n

    def _publish_stream(self, channel: str, quality: int | None, producer: str, source: Iterator[_Msg],
                        unacked: "OrderedDict[int, _Msg]", state: dict, result: PublishResult, window: int,
                        on_ack: Callable[[PublishAck], None] | None) -> None:
        lock = threading.Lock()
        slots = threading.Semaphore(window)
        dead = threading.Event()
        resend = list(unacked.values())
        open_ = pb.PublishOpen(channel=channel, producer_id=producer)
        if quality is not None:
            open_.quality = quality

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
                    if m is None:
                        if state["exhausted"]:
                            return
                        m = next(source, None)
                        if m is None:
                            state["exhausted"] = True
                            return
                        unacked[m.index] = m
                        result.sent_bytes += m.request.ByteSize()
                yield m.request

        call = self.stub.Publish(requests(), metadata=self._metadata)
        try:
            opened = next(call)
            log.debug("publish to %s opened: producer next offset %d", channel, opened.producer_next_offset)
            for r in call:
                with lock:
                    m = unacked.pop(r.message_index, None)
                slots.release()
                if m is None:
                    continue
                result.messages += 1
                result.accepted += r.accepted
                result.rejected += r.rejected
                result.duplicates += r.duplicates
                if r.accepted:
                    result.first_seq = r.first_seq if result.first_seq is None else min(result.first_seq, r.first_seq)
                    last = r.first_seq + r.accepted - 1
                    result.last_seq = last if result.last_seq is None else max(result.last_seq, last)
                for e in r.errors:
                    result.errors.append(PublishError(r.message_index, m.first_frame + e.index,
                                                      _status(e.code), e.message))
                if on_ack is not None:
                    on_ack(PublishAck(r.message_index, m.first_frame, m.frames, r.accepted, r.rejected, r.duplicates,
                                      r.first_seq if r.accepted else None))
        finally:
            with lock:
                dead.set()
            call.cancel()
        if unacked or not state["exhausted"]:
            raise _StreamEnded()


class _StreamEnded(grpc.RpcError):
    """The server closed the publish stream before answering every message (shutdown)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the server ended the publish stream early"


def _backoff(attempt: int, max_backoff: float) -> float:
    """Seconds before retry number ``attempt`` (from 0): exponential from 50 ms, capped, with jitter
    so that many clients cut off together do not reconnect together."""
    return min(max_backoff, 0.05 * (2 ** attempt)) * (0.5 + random.random() / 2)


def _status(code: int) -> grpc.StatusCode:
    for s in grpc.StatusCode:
        if s.value[0] == code:
            return s
    return grpc.StatusCode.UNKNOWN


def _batches(frames: Any, ndim: int, per_msg: int) -> Iterator[np.ndarray]:
    """Re-chunk an array or an iterable of frames/batches into arrays of <= per_msg frames."""
    if isinstance(frames, np.ndarray):
        arr = frames[None] if frames.ndim == ndim else frames
        for s in range(0, arr.shape[0], per_msg):
            yield arr[s : s + per_msg]
        return
    buf: list[np.ndarray] = []
    n = 0
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
    if n:
        yield np.concatenate(buf) if len(buf) > 1 else buf[0]


_EOS = object()


class _Prefetch:
    """Reads a server-streaming call on its own thread into a bounded queue, so the consumer can
    take every response that has already arrived in one go (see Client._responses)."""

    def __init__(self, call: Any, depth: int = 16):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._closed = threading.Event()
        threading.Thread(target=self._pump, args=(call,), name="latentwire-subscribe", daemon=True).start()

    def _pump(self, call: Any) -> None:
        try:
            for resp in call:
                if not self._put(resp):
                    return
            self._put(_EOS)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def groups(self, max_frames: int) -> Iterator[list[Any]]:
        """Lists of responses: blocks for one, then adds those already queued (up to max_frames)."""
        while True:
            item = self._q.get()
            group: list[Any] = []
            frames = 0
            while True:
                if item is _EOS or isinstance(item, BaseException):
                    if group:
                        yield group
                    if item is _EOS:
                        return
                    raise item
                group.append(item)
                frames += sum(p.count for p in item.packets)
                if frames >= max_frames:
                    break
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            yield group

    def close(self) -> None:
        self._closed.set()


class _IdleWatch:
    """Cancels a streaming call when no response arrived for `timeout` seconds."""

    def __init__(self, call: Any, timeout: float | None, stop: threading.Event | None = None):
        self.call, self.timeout, self.expired, self.outer = call, timeout, False, stop
        self._last = time.monotonic()
        self._stop = threading.Event()
        if timeout is not None or stop is not None:
            threading.Thread(target=self._watch, daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.1, self.timeout or 0.1)):
            if self.outer is not None and self.outer.is_set():
                self.call.cancel()
                return
            if self.timeout is not None and time.monotonic() - self._last > self.timeout:
                self.expired = True
                self.call.cancel()
                return

    def cancel(self) -> None:
        self._stop.set()
