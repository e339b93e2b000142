"""Streaming: sender -> server -> N subscribers on loopback, codec modes against the raw baseline.

    python -m benchmarks.streaming --subscribers 1,4,16 --frames 40000 --rate 1000
                                   [--modes edge-q0,edge-q5,server-q0,raw] [--batch 256]
                                   [--rate-frames 5000 --rate-batch 4] [--repeat 2]
                                   [--stores sqlite,redis,redis-x2] [--wire-sizes 1,8,256]
                                   [--out benchmarks/results/streaming.json]

--stores runs the same matrix once per store setup, interleaved, in one run: "sqlite" (the
embedded store), "redis" (one server on Redis Streams, a redis-server started for the run), and
"redis-xN" (N server replicas sharing that Redis; the sender publishes to replica 0 and
subscriber i reads from replica (i + 1) mod N, a client-side round robin that starts on another
replica, so with one subscriber every frame crosses from one replica to the other through Redis).

Per (subscribers N, mode) two phases:
  * saturation: the sender publishes --frames digits as fast as the pipeline takes them (packets of
    --batch frames; edge/raw packets pre-encoded before the clock starts), every subscriber decodes
    every frame. Delivered frames/s per subscriber = frames / (last frame decoded - first frame sent).
  * rate: --rate frames/s offered for --rate-frames frames in messages of --rate-batch frames, encoded
    live by the sender (edge/raw) or by the server's batcher (server): end-to-end latency p50/p99 =
    decoded at the receiver (after decode_many) minus the frame's offered time on the sender's clock
    (CLOCK_MONOTONIC, same machine), so it includes the sender's wait for its message to fill.
Also per run: server CPU (cores = CPU seconds / wall seconds, from /proc), server RSS, bytes per frame
(packet bytes, protobuf bytes of the Subscribe responses, and socket bytes the receiver read), lost
and duplicated frames. The raw mode sends the same digits uncoded (784 B) through the same server and
client code, so "gain" columns are codec vs raw in the same repeat.

Wire bytes (benchmarks/wire_bytes.py): per edge mode, the protobuf bytes the sender put on the wire
per frame at 1, 8 and 256 frames per message (one frame per message with and without compact
stream frames), against the first store setup's server.

Method: one server process and one worker process per subscriber for the whole run (startup is not
timed); modes and subscriber counts are interleaved and rotated per repeat; tables show medians over
repeats. The machine is shared: loadavg is recorded per run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.streamkit import (
    Mode,
    ServerProcess,
    cpu_seconds,
    expect,
    hwm_bytes,
    loadavg,
    parse_modes,
    receiver_main,
    rss_bytes,
    sender_main,
    server_socket_bytes,
    subscriber_bytes,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "streaming.json"
RAW_FRAME_BYTES = 784


class Bench:
    """The long-lived processes: the server replicas, one sender, max(N) receivers."""

    def __init__(self, bundle: Path, modes: list[Mode], n_receivers: int, server_args: list[str], replicas: int = 1):
        self.ctx = mp.get_context("spawn")
        self.cache = tempfile.mkdtemp(prefix="latentwire-bench-cache-")
        self.servers = [ServerProcess(bundle, modes, server_args).start() for _ in range(replicas)]
        self.server = self.servers[0]
        self.procs: list[Any] = []
        self.sender = self._spawn(sender_main, (self.server.target, str(bundle), self.cache))
        self.receivers = [self._spawn(receiver_main, (self.servers[(i + 1) % replicas].target, self.cache))
                          for i in range(n_receivers)]
        for conn in [self.sender, *self.receivers]:
            expect(conn, "up", 300)
        from latentwire.client import Client

        self.client = Client(self.server.target)

    def _spawn(self, fn: Any, args: tuple) -> Any:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=fn, args=(child, *args), daemon=True)
        p.start()
        self.procs.append(p)
        return parent

    def close(self) -> None:
        for conn in [self.sender, *self.receivers]:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        self.client.close()
        for server in self.servers:
            server.stop()
        import shutil

        shutil.rmtree(self.cache, ignore_errors=True)

    def run(self, mode: Mode, n_sub: int, phase: str, frames: int, batch: int, rate: float | None,
            timeout: float) -> dict[str, Any]:
        channel = mode.channel
        base = self.client.channel(channel).next_seq
        subs = self.receivers[:n_sub]
        for conn in subs:
            conn.send(("sub", channel, base, frames, timeout, True))
        for conn in subs:
            expect(conn, "ready", 60)
        time.sleep(0.3)  # let the Subscribe calls reach the server
        sock0 = [server_socket_bytes(s.port) for s in self.servers]
        load0, cpu0, t0 = loadavg(), sum(cpu_seconds(s.pid) for s in self.servers), time.monotonic()
        rss_samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.25):
                rss_samples.append(max(rss_bytes(s.pid) for s in self.servers))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        self.sender.send(("rate" if phase == "rate" else "sat", mode, channel, frames, batch, rate))
        limit = timeout + frames / 500.0
        tx = expect(self.sender, "result", limit)
        rx = [expect(conn, "result", limit) for conn in subs]
        t_end = max([r["t_last"] for r in rx if r.get("t_last")] or [time.monotonic()])
        cpu1, t1 = sum(cpu_seconds(s.pid) for s in self.servers), time.monotonic()
        parts = [subscriber_bytes(b, server_socket_bytes(s.port), publisher=(i == 0))
                 for i, (b, s) in enumerate(zip(sock0, self.servers, strict=True))]
        counted = [p for p in parts if p is not None]
        tcp = sum(counted) if len(counted) == len(parts) else None
        done.set()
        sampler.join()
        return summarize(mode, n_sub, phase, frames, batch, rate, base, tx, rx, t0, t_end,
                         (cpu1 - cpu0) / max(t1 - t0, 1e-9), rss_samples or [rss_bytes(self.server.pid)],
                         max(hwm_bytes(s.pid) for s in self.servers), load0, loadavg(), tcp)


def summarize(mode: Mode, n_sub: int, phase: str, frames: int, batch: int, rate: float | None, base: int,
              tx: dict, rx: list[dict], t0: float, t_end: float, server_cores: float, rss: list[int], hwm: int,
              load0: float | None, load1: float | None, tcp_bytes: int | None) -> dict[str, Any]:
    errors = [r["error"] for r in [tx, *rx] if "error" in r]
    out: dict[str, Any] = {
        "mode": mode.name, "kind": mode.kind, "quality": None if mode.kind == "raw" else mode.quality,
        "subscribers": n_sub, "phase": phase, "frames": frames, "batch": batch, "rate": rate, "first_seq": base,
        "errors": errors, "loadavg_start": load0, "loadavg_end": load1,
    }
    if errors:
        return out
    offered = tx["offered"]
    lat = np.concatenate([r["times"] - offered for r in rx])
    lat = lat[np.isfinite(lat)]
    # where the time goes: offered -> committed by the server (sender wait + encode + publish +
    # batcher/verify + SQLite commit), committed -> decoded at the receiver (fan-out + decode)
    to_commit = np.concatenate([r["commits"] - offered for r in rx])
    to_commit = to_commit[np.isfinite(to_commit)]
    after_commit = np.concatenate([r["times"] - r["commits"] for r in rx])
    after_commit = after_commit[np.isfinite(after_commit)]
    t_first_sent = float(offered[0])
    per_sub = [r["delivered"] / max(r["t_last"] - t_first_sent, 1e-9) for r in rx if r["t_last"]]
    delivered = sum(r["delivered"] for r in rx)
    out.update({
        "sender": {k: tx[k] for k in ("accepted", "rejected", "duplicates", "first_seq", "messages", "sent_bytes",
                                      "seconds", "cpu_s", "rss", "errors")},
        "sender_frames_per_s": frames / max(float(offered[-1]) - t_first_sent, 1e-9) if frames > 1 else None,
        "delivered": delivered,
        "lost": sum(r["lost"] for r in rx),
        "duplicated": sum(r["duplicated"] for r in rx),
        "bad_shape": sum(r["bad_shape"] for r in rx),
        "seconds": t_end - t_first_sent,
        "frames_per_s_per_subscriber": {"min": float(min(per_sub)), "median": float(np.median(per_sub)),
                                        "max": float(max(per_sub))} if per_sub else None,
        "frames_per_s_total": delivered / max(t_end - t_first_sent, 1e-9),
        "latency_ms": {"p50": float(np.percentile(lat, 50) * 1e3), "p99": float(np.percentile(lat, 99) * 1e3),
                       "max": float(lat.max() * 1e3), "mean": float(lat.mean() * 1e3)} if lat.size else None,
        "latency_split_ms": {
            "offered_to_commit_p50": float(np.percentile(to_commit, 50) * 1e3) if to_commit.size else None,
            "offered_to_commit_p99": float(np.percentile(to_commit, 99) * 1e3) if to_commit.size else None,
            "commit_to_decoded_p50": float(np.percentile(after_commit, 50) * 1e3) if after_commit.size else None,
            "commit_to_decoded_p99": float(np.percentile(after_commit, 99) * 1e3) if after_commit.size else None,
        },
        "bytes_per_frame": {
            "raw": RAW_FRAME_BYTES,
            "packet": sum(r["payload_bytes"] for r in rx) / max(delivered, 1),
            "proto": sum(r["proto_bytes"] for r in rx) / max(delivered, 1),
            "socket": tcp_bytes / max(delivered, 1) if tcp_bytes is not None else None,
        },
        "responses_per_subscriber": float(np.mean([r["responses"] for r in rx])),
        "packets_per_response": sum(r["packets"] for r in rx) / max(sum(r["responses"] for r in rx), 1),
        "receiver_cpu_us_per_frame": 1e6 * sum(r["cpu_s"] for r in rx) / max(delivered, 1),
        "receiver_rss_mb": float(np.median([r["rss"] for r in rx]) / 2**20),
        "server_cores": server_cores,
        "server_rss_mb": {"median": float(np.median(rss) / 2**20), "max": float(max(rss) / 2**20),
                          "hwm": hwm / 2**20},
    })
    b = out["bytes_per_frame"]
    b["proto_over_packet"] = b["proto"] / b["packet"] if b["packet"] else None
    b["socket_over_packet"] = b["socket"] / b["packet"] if b["packet"] and b["socket"] else None
    return out


# ------------------------------------------------------------------------------------ report

KEYS = ("frames_per_s_per_subscriber.median", "frames_per_s_total", "latency_ms.p50", "latency_ms.p99",
        "latency_split_ms.offered_to_commit_p50", "latency_split_ms.offered_to_commit_p99",
        "latency_split_ms.commit_to_decoded_p50", "latency_split_ms.commit_to_decoded_p99",
        "server_cores", "server_rss_mb.max", "bytes_per_frame.packet", "bytes_per_frame.proto",
        "bytes_per_frame.socket", "bytes_per_frame.proto_over_packet", "bytes_per_frame.socket_over_packet",
        "receiver_cpu_us_per_frame", "packets_per_response", "lost", "duplicated", "loadavg_start")


def _get(d: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or d.get(part) is None:
            return None
        d = d[part]
    return d


def medians(runs: list[dict]) -> list[dict]:
    """One row per (store setup, phase, N, mode): the median of each figure over repeats; gain vs raw
    and, for other setups, frames/s against the embedded store, per repeat."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r.get("store", "sqlite"), r["phase"], r["subscribers"], r["mode"]), []).append(r)
    rows = []
    for (store, phase, n, mode), rs in sorted(groups.items(), key=lambda kv: kv[0]):
        row: dict[str, Any] = {"store": store, "phase": phase, "subscribers": n, "mode": mode, "repeats": len(rs),
                               "errors": sum(len(r["errors"]) for r in rs)}
        for k in KEYS:
            vals = [v for v in (_get(r, k) for r in rs) if v is not None]
            row[k] = float(np.median(vals)) if vals else None
        if mode != "raw":  # same-repeat ratio against the raw baseline
            ratios_fps, ratios_bytes = [], []
            for r in rs:
                raw = next((x for x in runs if x["phase"] == phase and x["subscribers"] == n and x["mode"] == "raw"
                            and x.get("repeat") == r.get("repeat") and x.get("store", "sqlite") == store
                            and not x["errors"]), None)
                if raw and not r["errors"]:
                    ratios_fps.append(_get(r, "frames_per_s_per_subscriber.median") /
                                      _get(raw, "frames_per_s_per_subscriber.median"))
                    if _get(raw, "bytes_per_frame.socket") and _get(r, "bytes_per_frame.socket"):
                        ratios_bytes.append(_get(raw, "bytes_per_frame.socket") / _get(r, "bytes_per_frame.socket"))
            row["fps_vs_raw"] = float(np.median(ratios_fps)) if ratios_fps else None
            row["wire_bytes_saving_vs_raw"] = float(np.median(ratios_bytes)) if ratios_bytes else None
        if store != "sqlite":  # same-repeat ratio against the embedded store
            ratios = []
            for r in rs:
                base = next((x for x in runs if x["phase"] == phase and x["subscribers"] == n and x["mode"] == mode
                             and x.get("repeat") == r.get("repeat") and x.get("store", "sqlite") == "sqlite"
                             and not x["errors"]), None)
                if base and not r["errors"] and _get(base, "frames_per_s_per_subscriber.median"):
                    ratios.append(_get(r, "frames_per_s_per_subscriber.median") /
                                  _get(base, "frames_per_s_per_subscriber.median"))
            row["fps_vs_sqlite"] = float(np.median(ratios)) if ratios else None
        rows.append(row)
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_tables(rows: list[dict]) -> None:
    for phase in ("saturation", "rate"):
        sel = [r for r in rows if r["phase"] == phase]
        if not sel:
            continue
        print(f"\n{phase}: medians over repeats")
        print(
            f"{'store':<9} {'N':>3} {'mode':<10} {'fps/sub':>9} {'total':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'srv cores':>9} "
            f"{'srv MB':>7} {'pkt B/f':>8} {'wire B/f':>9} {'wire/pkt':>8} {'vs raw':>7} {'vs sqlite':>9} "
            f"{'lost':>5} {'dup':>4}"
        )
        for r in sel:
            print(
                f"{r['store']:<9} {r['subscribers']:>3} {r['mode']:<10} "
                f"{_fmt(r['frames_per_s_per_subscriber.median'], ',.0f'):>9} "
                f"{_fmt(r['frames_per_s_total'], ',.0f'):>9} {_fmt(r['latency_ms.p50'], '.1f'):>8} "
                f"{_fmt(r['latency_ms.p99'], '.1f'):>8} {_fmt(r['server_cores'], '.2f'):>9} "
                f"{_fmt(r['server_rss_mb.max'], '.0f'):>7} {_fmt(r['bytes_per_frame.packet'], '.1f'):>8} "
                f"{_fmt(r['bytes_per_frame.socket'], '.1f'):>9} "
                f"{_fmt(r['bytes_per_frame.socket_over_packet'], '.3f'):>8} "
                f"{_fmt(r.get('fps_vs_raw'), '.2f'):>7} {_fmt(r.get('fps_vs_sqlite'), '.2f'):>9} "
                f"{_fmt(r['lost'], '.0f'):>5} {_fmt(r['duplicated'], '.0f'):>4}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.common import git_commit, machine_info, version
    from latentwire.codec.codec import Codec, default_bundle_path

    p = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", default="1,4,16", help="comma-separated subscriber counts")
    p.add_argument("--frames", type=int, default=40000, help="frames per saturation run (each subscriber gets all)")
    p.add_argument("--rate", type=float, default=1000.0, help="offered frames/s of the fixed-rate phase (0: skip it)")
    p.add_argument("--rate-frames", type=int, default=5000, help="frames per fixed-rate run")
    p.add_argument("--rate-batch", type=int, default=4, help="frames per message at the fixed rate")
    p.add_argument("--batch", type=int, default=256, help="frames per packet/message at saturation")
    p.add_argument("--modes", default="edge-q0,edge-q5,server-q0,raw",
                   help="raw, edge-qN (sender encodes), server-qN (server encodes RAW frames)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a subscriber waits without data")
    p.add_argument("--bundle", default=None, help="bundle dir (default: the shipped codec/assets/mnist-dense)")
    p.add_argument("--server-json", default=None,
                   help='extra ServerConfig keys as JSON, e.g. \'{"verify_packets": false}\' (passed as --config)')
    p.add_argument("--stores", default="sqlite",
                   help="store setups to compare in this run: sqlite, redis, redis-xN (N replicas on one Redis)")
    p.add_argument("--wire-sizes", default="1,8,256",
                   help="frames per message for the wire-bytes rows ('' to skip)")
    p.add_argument("--wire-frames", type=int, default=2048, help="digits published per wire-bytes row")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)

    started = _dt.datetime.now(_dt.timezone.utc)
    bundle = Path(args.bundle) if args.bundle else default_bundle_path()
    codec = Codec.load(bundle, provider="cpu", threads=1)
    modes = parse_modes(args.modes)
    subs = [int(s) for s in args.subscribers.split(",") if s.strip()]
    phases = ["saturation"] + (["rate"] if args.rate > 0 else [])
    machine = machine_info()
    server_args = ["--retention-bytes", str(512 << 20), "--max-subscribers", str(max(64, max(subs) + 8))]
    if args.server_json:
        cfg = Path(tempfile.mkdtemp(prefix="latentwire-bench-cfg-")) / "server.json"
        cfg.write_text(args.server_json)
        server_args += ["--config", str(cfg)]
    setups = [s.strip() for s in args.stores.split(",") if s.strip()]
    redis = None
    benches: dict[str, Bench] = {}
    t_setup = time.monotonic()
    runs: list[dict] = []
    try:
        for setup in setups:
            extra = list(server_args)
            replicas = 1
            if setup.startswith("redis"):
                if redis is None:
                    from benchmarks.common import RedisServer

                    redis = RedisServer(Path(tempfile.mkdtemp(prefix="latentwire-bench-redis-"))).start()
                replicas = int(setup.split("-x", 1)[1]) if "-x" in setup else 1
                # each setup its own channels: prefix the Redis keys by giving each a DB of its own. The
                # Redis is volatile on purpose (figures comparable with earlier runs; the run's data is
                # thrown away), which the server refuses without the flag
                extra += ["--store", f"redis://127.0.0.1:{redis.port}/{len(benches)}", "--allow-volatile-store"]
            elif setup != "sqlite":
                raise SystemExit(f"--stores: unknown setup {setup!r} (sqlite, redis, redis-xN)")
            benches[setup] = Bench(bundle, modes, max(subs), extra, replicas)
        setup_s = time.monotonic() - t_setup
        wire: list[dict] = []
        sizes = [int(k) for k in args.wire_sizes.split(",") if k.strip()]
        if sizes:
            from benchmarks.wire_bytes import measure, print_rows

            with np.load(Path(__file__).resolve().parents[1] / "codec" / "assets" / "mnist_test_sample.npz") as z:
                digits = np.resize(z["samples"], (args.wire_frames, *z["samples"].shape[1:]))
            wire = measure(next(iter(benches.values())).server.target, modes, sizes, digits)
            print_rows(wire)
        for bench in benches.values():
            for m in modes:  # warm-up: sessions, caches, bundle download; not recorded
                bench.run(m, max(subs), "saturation", 2 * args.batch, args.batch, None, args.timeout)
        for rep in range(args.repeat):
            k = rep % len(modes)
            order = [(n, m) for n in (subs if rep % 2 == 0 else subs[::-1]) for m in modes[k:] + modes[:k]]
            for n, m in order:
                for phase in phases:
                    for setup in (setups if rep % 2 == 0 else setups[::-1]):
                        bench = benches[setup]
                        if phase == "rate":
                            r = bench.run(m, n, phase, args.rate_frames, args.rate_batch, args.rate, args.timeout)
                        else:
                            r = bench.run(m, n, phase, args.frames, args.batch, None, args.timeout)
                        r["repeat"], r["store"] = rep, setup
                        runs.append(r)
                        fps = _get(r, "frames_per_s_per_subscriber.median")
                        print(f"rep {rep} {setup:<9} N={n:<2} {m.name:<10} {phase:<10} fps/sub={_fmt(fps, ',.0f')} "
                              f"p99={_fmt(_get(r, 'latency_ms.p99'), '.1f')}ms lost={r.get('lost')} "
                              f"dup={r.get('duplicated')} load={_fmt(r['loadavg_start'], '.1f')} "
                              f"{'ERR ' + str(r['errors']) if r['errors'] else ''}", flush=True)
    finally:
        for bench in benches.values():
            bench.close()
        if redis is not None:
            redis.stop()
    rows = medians(runs)
    print_tables(rows)
    machine["loadavg_1m_end"] = loadavg()
    import grpc

    report = {
        "benchmark": "streaming",
        "command": "python -m benchmarks.streaming " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "started": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "bundle": {"path": str(bundle), "model_id": codec.model_id},
        "modes": {m.name: {"kind": m.kind, "quality": m.quality, "channel": m.channel} for m in modes},
        "settings": {k: getattr(args, k) for k in ("subscribers", "frames", "rate", "rate_frames", "rate_batch",
                                                     "batch", "repeat", "timeout", "server_json", "stores",
                                                     "wire_sizes", "wire_frames")},
        "server_commands": {setup: b.server.command() for setup, b in benches.items()},
        "setup_seconds": setup_s,
        "versions": {k: version(k) for k in ("grpcio", "protobuf", "onnxruntime", "numpy", "constriction")},
        "grpc_version": grpc.__version__,
        "machine": machine,
        "summary": rows,
        "wire_bytes": wire,
        "runs": [{k: v for k, v in r.items()} for r in runs],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(not r["errors"] and r.get("lost") == 0 and r.get("duplicated") == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
