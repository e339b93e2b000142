"""Thin links: frames/s and latency through a shaped link, latentwire against the baselines.

    python -m benchmarks.link [--rates 64,1000,10000] [--modes edge-q0,edge-q2,edge-q5,raw]
                              [--baselines zstd-frame,zstd-batch,webp] [--seconds 3] [--latency-seconds 2]
                              [--data ../shared/data] [--no-slow-check] [--out benchmarks/results/link.json]

The link: two network namespaces joined by a veth pair, tbf on both ends' egress at each --rates
kbit/s (benchmarks/netns.py). The server side holds `latentwire serve` and the sender; the receiver
side holds the receivers. Sender and server share a namespace because the thin link this product
is for is the one to its subscribers: the edge encodes and publishes to a nearby server, and the
server fans out over whatever link each subscriber has. So every row crosses the link once, as the
receiver reads it: latentwire's Subscribe stream (HTTP/2 + gRPC + protobuf records around the
packets), and for the baselines length-prefixed messages on one plain TCP socket from a sender on
the server side (benchmarks/tcpframes.py: no server, no protocol, their best case).

Rows, per link rate: latentwire edge-qN (packets encoded by the sender, relayed by the server),
raw (the same digits uncoded, stored packets through the same server; streamkit.Mode), zstd-19 per
frame and per batch, and WebP per frame at the cheapest quality whose PSNR reaches each latentwire
level's (codec/baselines.image_at_psnr, on the same digits).

Per row two phases:
  * saturation: n frames as fast as they go, n sized to fill about --seconds of link time (at most
    --max-frames); packets/batches hold --packet-seconds of link time (at most 256 frames), so a
    64 kbit/s link is not handed one 30 s message. frames_per_s is the receiver's steady rate: the
    frames decoded after its first arrival over the time from the first arrival to the last.
    bytes_per_frame is what crossed the link as TCP payload per frame (latentwire: the server's
    socket counters, `ss`; baselines: the bytes written), link_bytes_per_frame the Ethernet bytes
    tbf passed (headers, retransmissions and ACK-less control included).
  * latency: frames offered at half the link's capacity (estimated from the codec's bytes per frame
    at that message size plus per-message overhead), at most --max-rate frames/s, 1-4 frames per
    message, encoded as they come; p50/p99 = decoded at the receiver - offered at the sender
    (CLOCK_MONOTONIC, one machine).
Then the slow-subscriber check: a subscriber behind --slow-kbit reads the raw channel while the
sender publishes --slow-frames raw frames as fast as the server takes them (tens of times the link
rate); the server's RSS is sampled throughout and must stay bounded (server/channels.py: no
per-subscriber queue, gRPC flow control holds at most one response).

Where namespaces cannot be made (not root, no iproute2, no tbf) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.linkrun import LinkRunner
from benchmarks.netns import LinkPair, NetnsUnavailable, tbf_burst_bytes, tbf_limit_bytes
from benchmarks.streamkit import Mode, chunks, make_packet, parse_modes, rss_bytes
from benchmarks.tcpframes import TcpCodec, message_sizes

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "link.json"
ZSTD_LEVEL = 19
MAX_BATCH = 256
LW_MESSAGE_OVERHEAD = 120.0  # B per message beyond the packet: Ethernet/IP/TCP 66, HTTP/2 9, gRPC 5, protobuf
TCP_MESSAGE_OVERHEAD = 70.0  # Ethernet/IP/TCP 66 + the 4-byte length prefix
LATENCY_LOAD = 0.5  # the latency phase offers half the link's capacity
SLOW_TARGET_MB = 50.0  # the server's RSS growth target of benchmarks.memory


@dataclass(frozen=True)
class Entry:
    """One kind of row: through the server (mode) or on a plain TCP socket (tcp)."""

    codec: str
    setting: str
    psnr_db: float
    mode: Mode | None = None
    tcp: TcpCodec | None = None
    matches: tuple[str, ...] = ()  # WebP: the latentwire levels whose PSNR it was matched to


class Planner:
    """Bytes per frame of each entry at a message size, from the digits themselves (cached)."""

    def __init__(self, codec: Any, digits: np.ndarray):
        self.codec, self.digits = codec, digits[:MAX_BATCH * 2]
        self._cache: dict[tuple[str, int], float] = {}

    def bytes_per_frame(self, e: Entry, k: int) -> float:
        key = (e.codec + e.setting, k if e.mode is not None or (e.tcp is not None and e.tcp.batched) else 1)
        if key not in self._cache:
            if e.mode is not None:
                whole = max(k, (len(self.digits) // k) * k)
                sizes = [len(make_packet(self.codec, e.mode, c)) for c in chunks(self.digits, k, whole)]
                self._cache[key] = float(np.sum(sizes)) / whole
            else:
                assert e.tcp is not None
                self._cache[key] = message_sizes(e.tcp, self.digits, k)
        return self._cache[key]

    def batch(self, e: Entry, link_bps: float, packet_seconds: float) -> int:
        """Frames per packet/message at saturation: --packet-seconds of link time, 1..256."""
        if e.tcp is not None and not e.tcp.batched:
            return 1
        return int(np.clip(link_bps * packet_seconds / self.bytes_per_frame(e, MAX_BATCH), 1, MAX_BATCH))

    def latency_plan(self, e: Entry, link_bps: float, max_rate: float) -> tuple[float, int]:
        """(offered frames/s, frames per message): LATENCY_LOAD of the capacity at that message size."""
        overhead = LW_MESSAGE_OVERHEAD if e.mode is not None else TCP_MESSAGE_OVERHEAD
        k = 1
        rate = min(max_rate, LATENCY_LOAD * link_bps / (self.bytes_per_frame(e, 1) + overhead))
        if rate > 250 and (e.mode is not None or (e.tcp is not None and e.tcp.batched)):
            k = min(4, math.ceil(rate / 250))  # at most ~250 messages/s: the sender encodes each live
            rate = min(max_rate, LATENCY_LOAD * link_bps / (self.bytes_per_frame(e, k) + overhead / k))
        return rate, k


def load_digits(data: str | None) -> np.ndarray:
    """The shipped 1,000-digit MNIST test sample, or the test split under --data DIR/mnist."""
    from latentwire.codec.sources import load_source

    if data:
        return np.ascontiguousarray(load_source(Path(data) / "mnist", split="test").samples)
    with np.load(Path(__file__).resolve().parents[1] / "codec" / "assets" / "mnist_test_sample.npz") as z:
        return np.ascontiguousarray(z["samples"])


def build_entries(codec: Any, digits: np.ndarray, modes: list[Mode], baselines: list[str],
                  match_digits: int) -> list[Entry]:
    from latentwire.codec.baselines import image_at_psnr
    from latentwire.codec.normalization import psnr_db

    entries: list[Entry] = []
    sample = digits[:match_digits]
    for m in modes:
        if m.kind == "raw":
            entries.append(Entry("raw", "stored packets via the server", float("inf"), mode=m))
        elif m.kind == "edge":
            psnr = psnr_db(sample, codec.decode(codec.encode(sample, quality=m.quality)), 255.0)
            entries.append(Entry("latentwire", m.name, psnr, mode=m))
        else:
            raise SystemExit(f"--modes {m.name}: the link benchmark runs edge-qN and raw (the edge encodes)")
    for b in baselines:
        if b == "zstd-frame":
            entries.append(Entry("zstd", f"level {ZSTD_LEVEL}, per frame", float("inf"),
                                 tcp=TcpCodec("zstd", ZSTD_LEVEL)))
        elif b == "zstd-batch":
            entries.append(Entry("zstd", f"level {ZSTD_LEVEL}, per batch", float("inf"),
                                 tcp=TcpCodec("zstd", ZSTD_LEVEL, batched=True)))
        elif b == "webp":
            by_q: dict[int, tuple[float, list[str]]] = {}
            for e in [e for e in entries if e.codec == "latentwire"]:
                point = image_at_psnr(sample, "webp", e.psnr_db)
                q = int(point.setting.split("=")[1])
                by_q.setdefault(q, (point.psnr_db, []))[1].append(e.setting)
            for q, (psnr, levels) in sorted(by_q.items()):
                entries.append(Entry("webp", f"q={q}, per frame (matched to {', '.join(levels)})", psnr,
                                     tcp=TcpCodec("webp", q), matches=tuple(levels)))
        else:
            raise SystemExit(f"--baselines {b!r}: choose from zstd-frame, zstd-batch, webp")
    return entries


def run_row(runner: LinkRunner, planner: Planner, e: Entry, kbit: float, args: argparse.Namespace) -> dict[str, Any]:
    link_bps = kbit * 1000 / 8
    batch = planner.batch(e, link_bps, args.packet_seconds)
    k_msg = batch if (e.mode is not None or (e.tcp is not None and e.tcp.batched)) else 1
    est = planner.bytes_per_frame(e, k_msg) * 1.08  # TCP/IP and framing on top of the payload
    n = int(np.clip(args.seconds * link_bps / est, 3 * k_msg, args.max_frames))
    sat = runner.run(e.mode, e.tcp, n, batch, None, args.timeout)
    rate, k = planner.latency_plan(e, link_bps, args.max_rate)
    n_lat = int(np.clip(rate * args.latency_seconds, 10, 4000))
    lat = runner.run(e.mode, e.tcp, n_lat, k, rate, args.timeout)
    fps, bpf = sat.get("frames_per_s"), sat.get("bytes_per_frame")
    row: dict[str, Any] = {
        "codec": e.codec, "setting": e.setting, "link_kbit": kbit, "frames_per_s": fps, "bytes_per_frame": bpf,
        "p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms"),
        "psnr_db": None if math.isinf(e.psnr_db) else e.psnr_db, "lossless": math.isinf(e.psnr_db),
        "matched_to": list(e.matches),
        "capacity_frames_per_s": link_bps / bpf if bpf else None,
        "link_utilization": fps * bpf / link_bps if fps and bpf else None,
        "saturation": sat, "latency": lat,
    }
    for key in ("payload_bytes_per_frame", "link_bytes_per_frame", "bytes_source", "frames", "batch", "delivered",
                "lost", "duplicated", "bad_shape", "errors", "loadavg_start"):
        row[key] = sat.get(key)
    row["errors"] = list(sat.get("errors", [])) + list(lat.get("errors", []))
    return row


def slow_check(runner: LinkRunner, link: LinkPair, kbit: float, frames: int, seconds: float,
               timeout: float) -> dict[str, Any]:
    """A subscriber behind `kbit` while the sender publishes `frames` raw frames at full speed."""
    raw = Mode("raw", "raw", 0)
    link.shape(kbit)
    batch = 64  # 50 KB packets: a Subscribe response of a few packets crosses the link in about a second
    n_sub = max(batch, int(seconds * kbit * 1000 / 8 / 800))
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append((time.monotonic(), rss_bytes(runner.server.pid)))

    rss0 = rss_bytes(runner.server.pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        res = runner.slow_subscriber(raw, frames, batch, n_sub, timeout)
    finally:
        done.set()
        sampler.join()
    rss = np.array([r for _, r in samples] or [rss0]) / 2**20
    growth = float(rss.max() - rss0 / 2**20)
    stream_bytes = res["published_bytes"]
    stream_bps = stream_bytes / max(res["publish_seconds"], 1e-9)
    bound = min(SLOW_TARGET_MB, stream_bytes / 2**20 / 2)
    ok = (not res["errors"] and res["lost"] == 0 and res["duplicated"] == 0 and growth < bound
          and stream_bps > 10 * kbit * 1000 / 8)
    return {"link_kbit": kbit, "published_frames": frames, "published_mb": stream_bytes / 2**20,
            "publish_seconds": res["publish_seconds"], "stream_over_link": stream_bps / (kbit * 1000 / 8),
            "subscriber_frames": res["delivered"], "subscriber_frames_per_s": res["frames_per_s"],
            "subscriber_lost": res["lost"], "subscriber_duplicated": res["duplicated"],
            "server_rss_mb_before": rss0 / 2**20, "server_rss_mb_max": float(rss.max()),
            "server_rss_mb_end": float(rss[-1]), "server_rss_growth_mb": growth, "bound_mb": bound,
            "rss_samples_mb": [round(float(x), 2) for x in rss], "errors": res["errors"], "pass": ok}


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.common import git_commit, machine_info, version, write_result
    from benchmarks.linkreport import plot, print_rows, targets
    from latentwire.codec.codec import Codec, default_bundle_path

    p = argparse.ArgumentParser(prog="python -m benchmarks.link", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="64,1000,10000", help="link rates in kbit/s")
    p.add_argument("--modes", default="edge-q0,edge-q2,edge-q5,raw", help="edge-qN and raw (see benchmarks.streaming)")
    p.add_argument("--baselines", default="zstd-frame,zstd-batch,webp", help="zstd-frame, zstd-batch, webp ('' none)")
    p.add_argument("--seconds", type=float, default=3.0, help="link time per saturation row (frames sized to it)")
    p.add_argument("--latency-seconds", type=float, default=2.0, help="seconds of paced frames per latency row")
    p.add_argument("--max-frames", type=int, default=40000, help="frames per saturation row at most (CPU-bound rows)")
    p.add_argument("--max-rate", type=float, default=1000.0, help="offered frames/s of a latency row at most")
    p.add_argument("--packet-seconds", type=float, default=0.1, help="link time of one packet/batch at saturation")
    p.add_argument("--packets-per-response", type=int, default=4,
                   help="the server's subscribe_packets_per_response: a response crosses a thin link in one piece")
    p.add_argument("--match-digits", type=int, default=1000, help="digits the PSNRs (and WebP's match) are taken on")
    p.add_argument("--slow-kbit", type=float, default=1000.0, help="the slow subscriber's link rate")
    p.add_argument("--slow-frames", type=int, default=100000, help="raw frames published past the slow subscriber")
    p.add_argument("--no-slow-check", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a receiver waits without data")
    p.add_argument("--data", default=None, help="data root holding mnist/ (default: the shipped 1,000-digit sample)")
    p.add_argument("--bundle", default=None, help="bundle dir (default: the shipped MNIST bundle)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    command = "python -m benchmarks.link " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    modes = parse_modes(args.modes)
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds too, so the namespaces go
        signal.signal(signal.SIGTERM, _terminate)
    try:
        link = LinkPair.create()
    except NetnsUnavailable as e:
        print(f"benchmarks.link: SKIPPED - network namespaces cannot be made here: {e}", flush=True)
        return 0
    started = _dt.datetime.now(_dt.timezone.utc)
    machine = machine_info()
    bundle = Path(args.bundle) if args.bundle else default_bundle_path()
    rows: list[dict[str, Any]] = []
    slow: dict[str, Any] | None = None
    work = Path(tempfile.mkdtemp(prefix="latentwire-link-"))
    runner: LinkRunner | None = None
    try:
        codec = Codec.load(bundle, provider="cpu", threads=1)
        digits = load_digits(args.data)
        entries = build_entries(codec, digits, modes, [b.strip() for b in args.baselines.split(",") if b.strip()],
                                args.match_digits)
        planner = Planner(codec, digits)
        digits_file = work / "digits.npy"
        np.save(digits_file, digits)
        server_modes = [e.mode for e in entries if e.mode is not None]
        if not args.no_slow_check and not any(m.kind == "raw" for m in server_modes):
            server_modes.append(Mode("raw", "raw", 0))
        runner = LinkRunner(link, bundle, server_modes, digits_file, work, args.packets_per_response)
        link.shape(None)  # warm-up unshaped: the receiver fetches the bundle from the server once
        runner.warm_up(args.timeout)
        for kbit in rates:
            link.shape(kbit)
            for entry in entries:
                row = run_row(runner, planner, entry, kbit, args)
                rows.append(row)
                print_rows([row])
        if not args.no_slow_check:
            slow = slow_check(runner, link, args.slow_kbit, args.slow_frames, args.seconds, args.timeout)
            print(f"slow subscriber at {slow['link_kbit']:g} kbit/s: {slow['published_mb']:.0f} MB published "
                  f"({slow['stream_over_link']:.0f}x the link), server RSS {slow['server_rss_mb_before']:.0f} -> max "
                  f"{slow['server_rss_mb_max']:.0f} MB (+{slow['server_rss_growth_mb']:.1f}, bound "
                  f"{slow['bound_mb']:.0f}), subscriber {slow['subscriber_frames']} frames in order: "
                  f"{'pass' if slow['pass'] else 'FAIL'}", flush=True)
        qdisc = link.qdisc_stats()
    finally:
        if runner is not None:
            runner.close()
        link.delete()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    from benchmarks.streamkit import loadavg

    machine["loadavg_1m_end"] = loadavg()
    checks = targets(rows, slow)
    report = {
        "benchmark": "link", "command": command, "started": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(), "machine": machine,
        "versions": {k: version(k) for k in ("grpcio", "onnxruntime", "numpy", "zstandard", "pillow")},
        "bundle": {"path": str(bundle), "model_id": codec.model_id}, "digits": int(len(digits)),
        "link": {"namespaces": [link.server_ns, link.receiver_ns], "addresses": [link.server_addr, link.receiver_addr],
                 "shaped": "both directions, tbf on each veth end's egress; one segment per packet (no GSO)",
                 "tbf": {f"{k:g}": {"burst_bytes": tbf_burst_bytes(k), "limit_bytes": tbf_limit_bytes(k)}
                         for k in rates},
                 "last_qdisc_stats": qdisc},
        "settings": {k: getattr(args, k) for k in ("rates", "modes", "baselines", "seconds", "latency_seconds",
                                                     "max_frames", "max_rate", "packet_seconds", "packets_per_response",
                                                     "match_digits", "slow_kbit", "slow_frames", "timeout", "data")},
        "targets": checks, "rows": rows, "slow_subscriber": slow,
    }
    out = write_result(args.out, report)
    if not args.no_plot:
        plot(out.with_suffix(".png"), rows)
    for c in checks:
        print(f"target: {c['target']}: {c['measured']} -> {'pass' if c['pass'] else 'MISSED'}")
    print(f"wrote {out}")
    bad = [r for r in rows if r["errors"] or r.get("lost") or r.get("duplicated")]
    return 1 if bad or (slow is not None and slow["errors"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
