"""Prometheus metrics of one server instance.

A private CollectorRegistry per server so several servers (tests) live in one process; the
HTTP endpoint starts only when --metrics-port is given. The figures an operator needs to see
the codec pay off: raw bytes in vs bytes on the wire, frames in/out, queue depths, encode latency.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames_in = Counter(
            "latentwire_frames_in", "Frames committed to a channel", ["channel", "kind"], registry=r
        )
        self.frames_path = Counter(
            "latentwire_frames_path", "Frames committed per coding path (latent | residual | lossless fallback)",
            ["channel", "path"], registry=r,
        )
        self.frames_out = Counter("latentwire_frames_out", "Frames sent to subscribers", ["channel"], registry=r)
        self.frames_rejected = Counter(
            "latentwire_frames_rejected", "Frames refused in-band", ["channel", "reason"], registry=r
        )
        self.frames_duplicate = Counter(
            "latentwire_frames_duplicate", "Frames skipped as already committed (idempotent producer)", ["channel"],
            registry=r,
        )
        self.raw_bytes_in = Counter("latentwire_raw_bytes_in", "Raw sample bytes received", ["channel"], registry=r)
        self.wire_bytes_in = Counter(
            "latentwire_wire_bytes_in", "Packet bytes committed (coded size)", ["channel"], registry=r
        )
        self.wire_bytes_out = Counter(
            "latentwire_wire_bytes_out", "Packet bytes sent to subscribers", ["channel"], registry=r
        )
        self.queue_depth = Gauge(
            "latentwire_queue_depth", "RAW frames waiting for the batcher", ["channel"], registry=r
        )
        self.subscribers = Gauge("latentwire_subscribers", "Open Subscribe streams", ["channel"], registry=r)
        self.encode_seconds = Histogram(
            "latentwire_encode_seconds", "Wall time of one batch encode", ["channel"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
        )
        self.batch_frames = Histogram(
            "latentwire_batch_frames", "Frames per encoded batch", ["channel"], registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.limit_hits = Counter(
            "latentwire_limit_hits", "Requests refused by a configured limit", ["limit"], registry=r
        )
        self.store_errors = Counter(
            "latentwire_store_errors", "Store calls that failed (op: appending, reading, tailing, trimming, "
            "offset_conflict, ...)", ["channel", "op"], registry=r)
        self.store_state = Gauge(
            "latentwire_store_state", "1 while the channel's store refuses writes: state full (no space left in "
            "the data dir) or unavailable (Redis unreachable); 0 otherwise", ["channel", "state"], registry=r)
        self.commits_refused = Counter(
            "latentwire_commits_refused", "Commits the store refused while full or unavailable (their publishers "
            "were told and resend)", ["channel", "state"], registry=r)
        self.trimmed_frames = Counter(
            "latentwire_trimmed_frames", "Frames dropped by retention", ["channel", "reason"], registry=r
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (tests and logs); 0 when it was never set."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else float(v)
