"""Server configuration: one dataclass built from a JSON file and/or command-line flags.

Kept apart from main.py so tests and embedders build a server without argparse. Every limit has
a default sized for one machine; every limit, when hit, is reported (log line + status message +
a `latentwire_limit_hits_total{limit=...}` metric) rather than silently dropping work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .store import RetentionPolicy


class ConfigError(ValueError):
    """The server configuration is invalid; the message says which flag or key to fix."""


@dataclass(frozen=True)
class ChannelSpec:
    """A channel: its bundle and how RAW frames published to it are coded.

    With `scores`, every RAW frame is scored and its anomaly score goes out with its packet (4 bytes
    per frame on the wire, and one more decoder run per batch: off by default, since a digit
    costs ~8-33 bytes). With `fallback` (which implies scoring), frames scoring above
    `anomaly_threshold` (None: the bundle's calibrated threshold) are sent as lossless packets
    instead, so data the model never learned arrives intact."""

    name: str
    bundle: str
    quality: int | None = None  # None: the bundle's default quality
    fallback: bool = False
    anomaly_threshold: float | None = None
    scores: bool = False

    @property
    def scored(self) -> bool:
        return self.scores or self.fallback

    @classmethod
    def parse(cls, text: str) -> ChannelSpec:
        """NAME=BUNDLE_DIR[:quality] (a trailing :N is a quality only when N is an integer)."""
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"--channel {text!r}: expected NAME=BUNDLE_DIR[:quality], e.g. digits=runs/mnist:1")
        quality = None
        head, colon, tail = rest.rpartition(":")
        if colon and tail.isdigit():
            rest, quality = head, int(tail)
        validate_channel_name(name)
        return cls(name=name, bundle=rest, quality=quality)


def validate_channel_name(name: str) -> None:
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConfigError(
            f"channel name {name!r} is invalid: use 1-128 letters, digits, '-', '_' or '.' (not starting with '.')"
        )


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 16 << 20  # gRPC receive/send limit per message
    max_frames_per_message: int = 4096
    max_subscribers: int = 64  # per server
    max_publishers: int = 32
    queue_frames: int = 65536  # RAW frames waiting for the batcher, per channel


@dataclass(frozen=True)
class BatchPolicy:
    """Dynamic batching of RAW frames (like Triton's dynamic batcher): a batch is encoded when it
    reaches max_frames or when its oldest frame has waited max_delay_ms."""

    max_frames: int = 512
    max_delay_ms: float = 5.0


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    data_dir: str = "latentwire-data"
    # where channels keep their packets: "" (the embedded SQLite files under data_dir) or
    # "redis://HOST:PORT/DB" (Redis Streams shared by every replica that names the same URL)
    store: str = ""
    channels: tuple[ChannelSpec, ...] = ()
    tokens_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    metrics_port: int | None = None
    fsync: str = "normal"
    provider: str = "cpu"
    threads: int | None = None  # onnxruntime intra-op threads per codec
    retention: RetentionPolicy = RetentionPolicy()
    limits: Limits = Limits()
    batch: BatchPolicy = BatchPolicy()
    subscribe_packets_per_response: int = 64
    shutdown_grace_s: float = 5.0
    health_drain_s: float = 0.5  # NOT_SERVING is announced this long before the port closes
    workers: int = 0  # gRPC thread pool size; 0: max_subscribers + max_publishers + 8
    # decode every edge-coded packet before committing it, so an undecodable (poison) packet is
    # refused in-band instead of breaking every subscriber (server/README.md, "Bad input")
    verify_packets: bool = True
    # a Redis store without persistence (no AOF, no RDB save point) or whose settings cannot be read
    # is refused unless this is set (server/README.md, "Redis persistence")
    allow_volatile_store: bool = False
    # the operator's step after a reset store (server/epoch.py): these channels start a new epoch
    new_epoch: tuple[str, ...] = ()

    def check(self) -> ServerConfig:
        if not self.channels:
            raise ConfigError("no channels: pass --channel NAME=BUNDLE_DIR[:quality] or a --config with 'channels'")
        names = [c.name for c in self.channels]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"channel(s) {sorted(dup)} defined more than once: give each channel a unique name")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key (or neither)")
        if self.fsync not in ("normal", "full"):
            raise ConfigError(f"--fsync must be 'normal' or 'full', got {self.fsync!r}")
        if self.store and not self.store.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"--store {self.store!r}: give redis://HOST:PORT/DB (or rediss:// for TLS), or nothing "
                              "for the embedded SQLite store under --data-dir")
        unknown = sorted(set(self.new_epoch) - set(names))
        if unknown:
            raise ConfigError(f"--new-epoch names channel(s) {unknown}, which are not defined; channels are "
                              f"{sorted(names)}")
        for c in self.channels:
            if not isinstance(c.fallback, bool):
                raise ConfigError(f"channel {c.name!r}: fallback must be true or false, got {c.fallback!r}")
            if not isinstance(c.scores, bool):
                raise ConfigError(f"channel {c.name!r}: scores must be true or false, got {c.scores!r}")
            t = c.anomaly_threshold
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                                  or t < 0):
                raise ConfigError(f"channel {c.name!r}: anomaly_threshold must be a finite number >= 0 (a raw-unit "
                                  f"MSE, see `latentwire calibrate`) or null for the bundle's, got {t!r}")
        return self

    @classmethod
    def from_json(cls, path: str | Path) -> ServerConfig:
        """Keys mirror the dataclass: {"listen", "data_dir", "channels": [{"name","bundle","quality",
        "fallback","anomaly_threshold","scores"}] or ["NAME=DIR:q"], "tokens_file", "tls_cert", "tls_key",
        "metrics_port", "fsync", "store", "allow_volatile_store", "new_epoch": ["CHANNEL"],
        "retention": {"max_bytes","max_age_s","max_frames"},
        "limits": {...}, "batch": {...}}. Relative paths
        are resolved against the config file's folder."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--config {path}: cannot read JSON ({e})") from e
        return cls.from_dict(raw, base=path.parent)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base: Path = Path(".")) -> ServerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"config: unknown key(s) {sorted(unknown)}; known keys are {sorted(known)}")
        kw: dict[str, Any] = {}
        for k, v in raw.items():
            if k == "channels":
                chans = []
                for c in v:
                    if isinstance(c, dict):
                        unknown_c = set(c) - {f.name for f in fields(ChannelSpec)}
                        if unknown_c:
                            raise ConfigError(f"config channels: unknown key(s) {sorted(unknown_c)}; known keys are "
                                              f"{sorted(f.name for f in fields(ChannelSpec))}")
                    spec = ChannelSpec.parse(c) if isinstance(c, str) else ChannelSpec(**c)
                    validate_channel_name(spec.name)
                    chans.append(replace(spec, bundle=str(_resolve(spec.bundle, base))))
                kw[k] = tuple(chans)
            elif k == "retention":
                kw[k] = _sub(RetentionPolicy, v, k)
            elif k == "limits":
                kw[k] = _sub(Limits, v, k)
            elif k == "batch":
                kw[k] = _sub(BatchPolicy, v, k)
            elif k == "new_epoch":
                kw[k] = (v,) if isinstance(v, str) else tuple(v)
            elif k in ("tokens_file", "tls_cert", "tls_key", "data_dir") and v is not None:
                kw[k] = str(_resolve(v, base))
            else:
                kw[k] = v
        return cls(**kw)


def with_channel_options(channels: tuple[ChannelSpec, ...], fallback: list[str] | tuple[str, ...] = (),
                         thresholds: list[str] | tuple[str, ...] = (),
                         scores: list[str] | tuple[str, ...] = ()) -> tuple[ChannelSpec, ...]:
    """Apply `--fallback CHANNEL`, `--scores CHANNEL` and `--anomaly-threshold CHANNEL=VALUE` flags."""
    by_name = {c.name: c for c in channels}

    def known(name: str, flag: str) -> str:
        if name not in by_name:
            raise ConfigError(f"{flag} names channel {name!r}, which is not defined; channels are {sorted(by_name)}")
        return name

    for name in fallback:
        name = known(name, f"--fallback {name}")
        by_name[name] = replace(by_name[name], fallback=True)
    for name in scores:
        name = known(name, f"--scores {name}")
        by_name[name] = replace(by_name[name], scores=True)
    for text in thresholds:
        name, sep, value = text.partition("=")
        try:
            threshold = float(value) if sep else None
        except ValueError:
            threshold = None
        if threshold is None:
            raise ConfigError(f"--anomaly-threshold {text!r}: expected CHANNEL=VALUE, e.g. digits=2500.0")
        name = known(name, f"--anomaly-threshold {text}")
        by_name[name] = replace(by_name[name], anomaly_threshold=threshold)
    return tuple(by_name[c.name] for c in channels)


def _resolve(p: str, base: Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base / q)


def _sub(kind: type, value: dict[str, Any], key: str) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(f"config[{key!r}]: unknown key(s) {sorted(unknown)}; known keys are {sorted(known)}")
    return kind(**value)


__all__ = ["BatchPolicy", "ChannelSpec", "ConfigError", "Limits", "ServerConfig", "field"]
