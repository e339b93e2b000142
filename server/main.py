"""`latentwire serve`: assemble channels, logs, batchers, auth, health, reflection and metrics.

Shutdown (SIGTERM/SIGINT): health flips to NOT_SERVING first (load balancers and clients that
watch health stop sending), the server keeps answering for `health_drain_s`, then stops
accepting new calls, batchers flush every queued frame into the log, Subscribe streams end
(clients resume from their last seq on the restarted server), logs are checkpointed, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from latentwire.codec.codec import Codec
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

from .auth import TokenStore
from .batcher import Batcher, Encode, Encoded
from .channels import Channel, ModelEntry
from .config import BatchPolicy, ChannelSpec, ConfigError, Limits, ServerConfig, with_channel_options
from .epoch import EpochRecord, RecordKeeper, settle
from .metrics import Metrics
from .redis_settings import display_url
from .service import SERVICE_NAME, LatentwireService
from .sqlite_store import SqliteStore
from .store import ChannelMismatch, ChannelStore, RetentionPolicy, StoreFull, StoreReset, StoreUnavailable

log = logging.getLogger("latentwire.server")


CodecLoader = Callable[[str, str, "int | None"], Codec]


def _load_codec(bundle: str, provider: str, threads: int | None) -> Codec:
    return Codec.load(bundle, provider=provider, threads=threads)


class LatentwireServer:
    """One running server. `start()` returns the bound port; `stop()` is the graceful shutdown."""

    def __init__(self, config: ServerConfig, codec_loader: CodecLoader = _load_codec):
        self.config = config.check()
        self.metrics = Metrics()
        self.auth = TokenStore.load(config.tokens_file) if config.tokens_file else TokenStore.open()
        self.models: dict[str, ModelEntry] = {}
        self.channels: dict[str, Channel] = {}
        self._stores: list[ChannelStore] = []
        data = Path(config.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        self._lock = DataDirLock.acquire(data)
        self.records = RecordKeeper(data)
        try:
            if config.store:
                self._check_durability(config)
            self._open_channels(config, data, codec_loader)
        except BaseException:
            self.close_unstarted()
            raise
        self.service = LatentwireService(config, self.channels, self.models, self.auth, self.metrics)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        workers = config.workers or (config.limits.max_subscribers + config.limits.max_publishers + 8)
        opts = [
            ("grpc.max_receive_message_length", config.limits.max_message_bytes),
            ("grpc.max_send_message_length", config.limits.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
                                  options=opts)
        pb_grpc.add_LatentwireServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = 0
        self._stopped = threading.Event()

    def _open_channels(self, config: ServerConfig, data: Path, codec_loader: CodecLoader) -> None:
        by_path: dict[str, ModelEntry] = {}
        for spec in config.channels:
            key = str(Path(spec.bundle).resolve())
            if key not in by_path:
                codec = codec_loader(spec.bundle, config.provider, config.threads)
                entry = self.models.get(codec.model_id) or ModelEntry.from_codec(codec)
                self.models[entry.model_id] = by_path[key] = entry
            model = by_path[key]
            n_q = len(model.codec.qualities)
            if spec.quality is not None and n_q and not 0 <= spec.quality < n_q:
                raise ConfigError(f"channel {spec.name!r}: quality {spec.quality} out of range 0..{n_q - 1} "
                                  f"for bundle {spec.bundle}")
            codec = model.codec
            threshold = _threshold(spec, codec)
            store = self._open_store(spec.name, data)
            self._stores.append(store)
            where = display_url(config.store) if config.store else str(data / f"{spec.name}.sqlite3")
            try:
                record = EpochRecord.load(data, spec.name)
                state = settle(store, spec.name, where, record, spec.name in config.new_epoch)
                store.check_model(model.model_id)
            except (ChannelMismatch, StoreReset, ValueError) as e:
                raise ConfigError(str(e)) from None
            known = record.next_seq if record is not None and record.epoch == state.epoch else 0
            store.bind(state, known)
            ch = Channel(spec.name, model, store, spec.quality, fallback=spec.fallback, anomaly_threshold=threshold)
            self.records.add(EpochRecord(spec.name, state.epoch, max(known, ch.next_seq), where), _next_seq_of(ch))
            ch.batcher = Batcher(
                spec.name, store, _encoder(codec, spec.fallback, threshold, spec.scored), model.model_id,
                codec.default_quality if spec.quality is None else spec.quality,
                config.batch.max_frames, config.batch.max_delay_ms, config.limits.queue_frames, self.metrics,
            )
            self.channels[spec.name] = ch
            log.info("channel %s: model %s (%s), quality %s, fallback %s (anomaly threshold %s), store %s, epoch %s, "
                     "resuming at seq %d (%d bytes retained)", spec.name, model.model_id[:12],
                     model.manifest.name or "?", "default" if spec.quality is None else spec.quality,
                     "on" if spec.fallback else "off", "none" if threshold is None else f"{threshold:.6g}",
                     display_url(config.store) or "sqlite", state.epoch, ch.next_seq, store.size_bytes)

    def _check_durability(self, config: ServerConfig) -> None:
        """A Redis that keeps nothing across a restart is refused unless the operator says so."""
        from .redis_settings import durability

        url = display_url(config.store)
        try:
            d = durability(config.store)
        except StoreUnavailable as e:
            raise ConfigError(f"{e} (is redis-server running at {url}?)") from None
        if not d.volatile:
            log.info("Redis store %s: %s", url, d.describe())
        elif config.allow_volatile_store:
            log.warning("Redis store %s is volatile (%s): a Redis restart or failover loses the channels; each "
                        "replica then stops serving them with DATA_LOSS until --new-epoch (--allow-volatile-store "
                        "given)", url, d.describe())
        else:
            raise ConfigError(f"--store {url}: Redis is volatile, {d.describe()}: a restart would lose every "
                              "channel; turn on appendonly (or RDB save points), or pass --allow-volatile-store to "
                              "run on it anyway (server/README.md, Redis persistence)")

    def _open_store(self, channel: str, data: Path) -> ChannelStore:
        c = self.config
        if not c.store:
            try:
                return SqliteStore(data / f"{channel}.sqlite3", c.retention, c.fsync)
            except StoreFull as e:  # a new channel's file cannot be created
                raise ConfigError(f"channel {channel!r}: {e}: free some space there, or pick another --data-dir") \
                    from None
        from .redis_store import RedisStore

        try:
            return RedisStore(c.store, channel, c.retention, metrics=self.metrics)
        except StoreUnavailable as e:
            raise ConfigError(f"channel {channel!r}: {e} (is redis-server running at {c.store}?)") from None

    def start(self) -> int:
        c = self.config
        in_use = ConfigError(f"cannot listen on {c.listen}: the address is in use or invalid (pick another --listen)")
        if port_taken(c.listen):  # before gRPC tries: its own failure comes with a C-core log line
            self.close_unstarted()
            raise in_use
        try:
            if c.tls_cert and c.tls_key is not None:  # check() refused one without the other
                creds = grpc.ssl_server_credentials([(Path(c.tls_key).read_bytes(), Path(c.tls_cert).read_bytes())])
                self.port = self.server.add_secure_port(c.listen, creds)
            else:
                self.port = self.server.add_insecure_port(c.listen)
        except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
            self.port = 0
        if not self.port:
            self.close_unstarted()
            raise in_use
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if c.metrics_port is not None:
            self.metrics.serve(c.metrics_port)
            log.info("metrics on http://127.0.0.1:%d/metrics", c.metrics_port)
        host = c.listen.rsplit(":", 1)[0]
        log.info("latentwire serving %d channel(s) on %s:%d (%s, auth %s)", len(self.channels), host, self.port,
                 "TLS" if c.tls_cert else "plaintext", "on" if self.auth.enabled else "off")
        return self.port

    def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.shutdown_grace_s if grace is None else grace
        log.info("shutting down: health NOT_SERVING, draining for %.1fs", self.config.health_drain_s)
        self.health.enter_graceful_shutdown()
        time.sleep(self.config.health_drain_s)
        self.service.stopping.set()
        for ch in self.channels.values():
            ch.close()
        done = self.server.stop(grace)
        for ch in self.channels.values():
            ch.batcher.stop()
        done.wait(grace + 1)
        self.records.stop()
        for store in self._stores:
            store.close()
        self._lock.release()
        log.info("shutdown complete")

    def close_unstarted(self) -> None:
        """Release what __init__ took (stores, the data dir lock) when the server never started."""
        for ch in self.channels.values():
            ch.batcher.stop()
        self.records.stop()
        for store in self._stores:
            store.close()
        self._lock.release()

    def wait(self) -> None:
        self.server.wait_for_termination()


class DataDirLock:
    """An exclusive lock on a data directory: two servers appending to one retention log would
    break its sequence numbers (the second one's publishes failed with IntegrityError and it
    reported next_seq 0), so the second one is refused at start, naming the holder's pid."""

    NAME = "serve.lock"

    def __init__(self, handle: Any, path: Path) -> None:
        self._handle, self.path = handle, path

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        import fcntl

        path = data_dir / cls.NAME
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(f"data dir {data_dir} is in use by another latentwire serve (pid {holder}): stop it, "
                              "or give this server its own --data-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(handle, path)

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the descriptor drops the flock


def port_taken(listen: str) -> bool:
    """Whether host:port is already bound by someone else (port 0 never is)."""
    import errno
    import socket

    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or int(port) == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as gRPC binds: a port in TIME_WAIT after a restart is free, one with a listener is not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    return False


def _next_seq_of(ch: Channel) -> Callable[[], int]:
    return lambda: ch.next_seq


def _threshold(spec: ChannelSpec, codec: Codec) -> float | None:
    """The channel's anomaly threshold: the configured one, else the bundle's calibrated one."""
    if spec.anomaly_threshold is not None:
        return float(spec.anomaly_threshold)
    if codec.anomaly is not None:
        return float(codec.anomaly_threshold())
    if spec.fallback:
        raise ConfigError(
            f"channel {spec.name!r}: --fallback needs an anomaly threshold, and bundle {spec.bundle} has no anomaly "
            f"calibration: run `latentwire calibrate` on it or pass --anomaly-threshold {spec.name}=VALUE"
        )
    return None


def _encoder(codec: Codec, fallback: bool = False, threshold: float | None = None, score: bool = True) -> Encode:
    """The batcher's encode: with scoring, every frame scored (Codec.encode_scored) and anomalies
    sent losslessly when the channel has fallback on; otherwise one plain packet per batch."""
    def encode(raw: np.ndarray, quality: int | None) -> bytes | list[Encoded]:
        if not (score or fallback):
            return codec.encode(raw, quality=quality)
        enc = codec.encode_scored(raw, quality, threshold=threshold, fallback=fallback)
        return [Encoded(packet, b - a, tuple(enc.scores[a:b].tolist()))
                for packet, (a, b) in zip(enc.packets, enc.frames, strict=True)]

    return encode


# ---------------------------------------------------------------------- CLI


def add_parser(subparsers: Any, name: str = "serve") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="run the gRPC streaming server",
                              description="Serve channels of codec-compressed frames over gRPC.")
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON config file (flags given on the command line override it)")
    p.add_argument("--channel", action="append", default=[], metavar="NAME=BUNDLE_DIR[:quality]",
                   help="bind a channel to a bundle (repeatable)")
    p.add_argument("--fallback", action="append", default=[], metavar="CHANNEL",
                   help="send RAW frames of CHANNEL whose anomaly score (raw-unit MSE of the model's reconstruction, "
                        "attached to its packet) exceeds the threshold as lossless zstd packets, so "
                        "data the model never learned arrives intact (repeatable)")
    p.add_argument("--scores", action="append", default=[], metavar="CHANNEL",
                   help="attach each RAW frame's anomaly score to its packet (4 bytes per frame on the wire and "
                        "one more decoder run per batch; implied by --fallback) (repeatable)")
    p.add_argument("--anomaly-threshold", action="append", default=[], metavar="CHANNEL=VALUE",
                   help="anomaly score threshold for CHANNEL (default: the bundle's calibrated one, a high quantile "
                        "(0.999 by default) of its training data's scores; see `latentwire calibrate`) (repeatable)")
    p.add_argument("--listen", help="host:port (default 127.0.0.1:50051; port 0 picks a free one)")
    p.add_argument("--data-dir", help="local state: the embedded store's channel files and the data dir lock "
                                      "(default ./latentwire-data)")
    p.add_argument("--store", help="redis://HOST:PORT/DB: keep channels in Redis Streams shared by every replica "
                                   "naming the same URL (default: embedded SQLite under --data-dir)")
    p.add_argument("--allow-volatile-store", action="store_true", default=None,
                   help="run on a Redis without persistence (no appendonly, no save points) or whose settings "
                        "CONFIG GET cannot read; a Redis restart then loses the channels (logged as a warning)")
    p.add_argument("--new-epoch", action="append", default=[], metavar="CHANNEL",
                   help="operator step after a reset store (the server refused to start, or served DATA_LOSS): "
                        "start CHANNEL over with a new epoch whose seqs begin above every seq handed out before; "
                        "ignored while the channel's epoch is intact (repeatable; server/README.md)")
    p.add_argument("--tokens", dest="tokens_file", help="token file (JSON) enabling bearer-token auth")
    p.add_argument("--tls-cert", help="server certificate (PEM) to serve TLS")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--fsync", choices=["normal", "full"], help="embedded store durability (see server/sqlite_store.py)")
    p.add_argument("--provider", help="onnxruntime provider: cpu | cuda | auto (default cpu)")
    p.add_argument("--threads", type=int, help="onnxruntime threads per codec")
    p.add_argument("--retention-bytes", type=int, help="max bytes kept per channel log (0: unbounded)")
    p.add_argument("--retention-age", type=float, help="max age in seconds of kept packets (0: unbounded)")
    p.add_argument("--retention-frames", type=int, help="max frames kept per channel, the newest (0: unbounded)")
    p.add_argument("--batch-frames", type=int, help="max frames per encoded batch")
    p.add_argument("--batch-delay-ms", type=float, help="max wait of the oldest frame before a batch is encoded")
    p.add_argument("--max-message-bytes", type=int)
    p.add_argument("--max-frames-per-message", type=int)
    p.add_argument("--max-subscribers", type=int)
    p.add_argument("--queue-frames", type=int, help="max RAW frames waiting per channel")
    p.add_argument("--port-file", help="write the bound port here once serving (for scripts and tests)")
    p.add_argument("--log-level", default="INFO")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    cfg = ServerConfig.from_json(args.config) if args.config else ServerConfig()
    kw: dict[str, Any] = {}
    for k in ("listen", "data_dir", "store", "tokens_file", "tls_cert", "tls_key", "metrics_port", "fsync", "provider",
              "threads", "allow_volatile_store"):
        v = getattr(args, k, None)
        if v is not None:
            kw[k] = v
    if args.channel:
        kw["channels"] = tuple(ChannelSpec.parse(c) for c in args.channel)
    if args.new_epoch:
        kw["new_epoch"] = tuple(args.new_epoch)
    cfg = replace(cfg, **kw)
    if args.fallback or args.anomaly_threshold or args.scores:
        cfg = replace(cfg, channels=with_channel_options(cfg.channels, args.fallback, args.anomaly_threshold,
                                                         args.scores))
    r = {k: v for k, v in (("max_bytes", args.retention_bytes), ("max_age_s", args.retention_age),
                           ("max_frames", args.retention_frames)) if v is not None}
    b = {k: v for k, v in (("max_frames", args.batch_frames), ("max_delay_ms", args.batch_delay_ms)) if v is not None}
    lim = {k: v for k, v in (("max_message_bytes", args.max_message_bytes),
                             ("max_frames_per_message", args.max_frames_per_message),
                             ("max_subscribers", args.max_subscribers),
                             ("queue_frames", args.queue_frames)) if v is not None}
    return replace(
        cfg,
        retention=replace(cfg.retention, **r) if r else cfg.retention,
        batch=replace(cfg.batch, **b) if b else cfg.batch,
        limits=replace(cfg.limits, **lim) if lim else cfg.limits,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        server = LatentwireServer(config_from_args(args))
        port = server.start()
    except (ConfigError, OSError) as e:
        print(f"latentwire serve: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # BundleError & co: say what and exit non-zero
        from latentwire.codec.errors import LatentwireError

        if isinstance(e, LatentwireError):
            print(f"latentwire serve: {e}", file=sys.stderr)
            return 2
        raise
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, args.port_file)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentwire serve", description="Serve codec-compressed channels over gRPC.")
    configure_parser(parser)
    return run(parser.parse_args(argv))


__all__ = ["BatchPolicy", "Limits", "LatentwireServer", "RetentionPolicy", "add_parser", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
