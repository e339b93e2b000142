"""Memory growth over a long stream: server and client RSS while 1,000,000 frames go through.

    python -m benchmarks.memory --frames 1000000 [--mode edge-q0] [--batch 64] [--interval 0.5]
                                [--out benchmarks/results/memory.json]

The counterpart of Triton's L0_memory_growth / L0_client_memory_growth. The server is `latentwire
serve` in its own process (port via --port-file); one sender and one subscriber are worker processes
(benchmarks/streamkit.py) that keep no per-frame state, so whatever their RSS does is the client
library's and gRPC's. RSS (VmRSS from /proc/PID/status) of all three is sampled every --interval
seconds against frames delivered. Growth = RSS at the end minus RSS once --warmup frames were
delivered (arenas, caches, sessions and gRPC buffers are sized by then); the slope is a least-squares
fit over the post-warm-up samples (MB per 100k frames). Targets: server < 50 MB, client < 10 MB.
Writes the JSON and a PNG (RSS vs frames).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import shlex
import shutil
import sys
import tempfile
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
    receiver_main,
    rss_bytes,
    sender_main,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "memory.json"
TARGET_MB = {"server": 50.0, "sender": 10.0, "receiver": 10.0}



def _started(pid: int | None) -> int:
    if pid is None:
        raise RuntimeError("a benchmark process has no pid: it was never started")
    return pid

def growth(frames: np.ndarray, rss: np.ndarray, warm_at: int) -> dict[str, Any]:
    """RSS figures (MB) of one process from its samples; `warm_at`: frames delivered at warm-up."""
    mb = rss / 2**20
    after = frames >= warm_at
    if not after.any():
        after = np.ones_like(frames, dtype=bool)
    base = float(mb[after][0])
    slope = None
    if after.sum() >= 3 and np.ptp(frames[after]) > 0:
        slope = float(np.polyfit(frames[after] / 1e5, mb[after], 1)[0])
    late = frames >= frames[-1] / 2  # the second half: a leak keeps climbing, a high-water mark does not
    late_slope = None
    if late.sum() >= 3 and np.ptp(frames[late]) > 0:
        late_slope = float(np.polyfit(frames[late] / 1e5, mb[late], 1)[0])
    return {"start_mb": float(mb[0]), "warm_mb": base, "end_mb": float(mb[-1]), "max_mb": float(mb.max()),
            "growth_mb": float(mb[-1]) - base, "max_over_warm_mb": float(mb[after].max()) - base,
            "slope_mb_per_100k_frames": slope, "second_half_slope_mb_per_100k_frames": late_slope}


def plot(out_png: Path, series: dict[str, list], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    frames = np.asarray(series["delivered"]) / 1e3
    for name in ("server", "sender", "receiver"):
        ax.plot(frames, np.asarray(series[f"rss_{name}"]) / 2**20, label=f"{name} (RSS)")
    ax.axvline(meta["warmup"] / 1e3, color="grey", ls=":", lw=1, label="warm-up mark")
    ax.set_xlabel("frames delivered to the subscriber (thousands)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"latentwire memory over {meta['frames']:,} frames ({meta['mode']}, {meta['batch']} frames/packet)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.common import git_commit, machine_info, version
    from latentwire.codec.codec import default_bundle_path

    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--mode", default="edge-q0", help="raw, edge-qN or server-qN (see benchmarks.streaming)")
    p.add_argument("--batch", type=int, default=64, help="frames per packet / publish message")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    p.add_argument("--warmup", type=int, default=None, help="frames delivered before the baseline (default 5%%)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds the subscriber waits without data")
    p.add_argument("--bundle", default=None)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)

    started = _dt.datetime.now(_dt.timezone.utc)
    mode = Mode.parse(args.mode)
    bundle = Path(args.bundle) if args.bundle else default_bundle_path()
    warmup = args.warmup if args.warmup is not None else max(args.batch, args.frames // 20)
    machine = machine_info()
    ctx = mp.get_context("spawn")
    cache = tempfile.mkdtemp(prefix="latentwire-bench-cache-")
    server = ServerProcess(bundle, [mode], ["--retention-bytes", str(256 << 20)]).start()
    sent_v, got_v = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False)
    tx_conn, tx_child = ctx.Pipe()
    rx_conn, rx_child = ctx.Pipe()
    tx = ctx.Process(target=sender_main, args=(tx_child, server.target, str(bundle), cache, sent_v), daemon=True)
    rx = ctx.Process(target=receiver_main, args=(rx_child, server.target, cache, got_v), daemon=True)
    tx.start()
    rx.start()
    series: dict[str, list] = {k: [] for k in ("t", "delivered", "sent", "rss_server", "rss_sender", "rss_receiver",
                                               "server_cpu_s", "loadavg")}
    result: dict[str, Any] = {}
    try:
        expect(tx_conn, "up", 300)
        expect(rx_conn, "up", 300)
        rx_conn.send(("sub", mode.channel, 0, args.frames, args.timeout, False))
        expect(rx_conn, "ready", 60)
        time.sleep(0.3)
        t0 = time.monotonic()
        tx_conn.send(("sat", mode, mode.channel, args.frames, args.batch, None, False))
        pids = {name: _started(p.pid) for name, p in (("server", server), ("sender", tx), ("receiver", rx))}
        tx_result = rx_result = None
        while rx_result is None:
            now = time.monotonic() - t0
            series["t"].append(now)
            series["delivered"].append(got_v.value)
            series["sent"].append(sent_v.value)
            for name, pid in pids.items():
                series[f"rss_{name}"].append(rss_bytes(pid))
            series["server_cpu_s"].append(cpu_seconds(server.pid))
            series["loadavg"].append(loadavg())
            if tx_result is None and tx_conn.poll():
                tx_result = tx_conn.recv()[1]
            if rx_conn.poll(args.interval):
                rx_result = rx_conn.recv()[1]
            if now > args.timeout + args.frames / 1000.0:
                raise TimeoutError(f"no end after {now:.0f}s ({got_v.value} frames delivered)")
        if tx_result is None:
            tx_result = expect(tx_conn, "result", 60)
        seconds = time.monotonic() - t0
        # one last sample at the end of the stream
        series["t"].append(seconds)
        series["delivered"].append(rx_result.get("delivered", got_v.value))
        series["sent"].append(sent_v.value)
        for name, pid in pids.items():
            series[f"rss_{name}"].append(rss_bytes(pid))
        series["server_cpu_s"].append(cpu_seconds(server.pid))
        series["loadavg"].append(loadavg())
        hwm = {name: hwm_bytes(pid) / 2**20 for name, pid in pids.items()}
        frames_arr = np.asarray(series["delivered"])
        result = {name: growth(frames_arr, np.asarray(series[f"rss_{name}"]), warmup) for name in pids}
        for name in pids:
            result[name]["hwm_mb"] = hwm[name]
            result[name]["target_mb"] = TARGET_MB[name]
            result[name]["met"] = result[name]["growth_mb"] < TARGET_MB[name]
    finally:
        for conn in (tx_conn, rx_conn):
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for proc in (tx, rx):
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
        server.stop()
        shutil.rmtree(cache, ignore_errors=True)
    import grpc

    machine["loadavg_1m_end"] = loadavg()
    errors = [r["error"] for r in (tx_result, rx_result) if r and "error" in r]
    report = {
        "benchmark": "memory",
        "command": "python -m benchmarks.memory " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "started": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "mode": {"name": mode.name, "kind": mode.kind, "quality": mode.quality},
        "frames": args.frames, "batch": args.batch, "warmup_frames": warmup, "interval_s": args.interval,
        "seconds": seconds,
        "frames_per_s": rx_result.get("delivered", 0) / seconds if seconds else None,
        "delivered": rx_result.get("delivered"), "lost": rx_result.get("lost"),
        "duplicated": rx_result.get("duplicated"), "errors": errors,
        "publish": {k: tx_result.get(k) for k in ("accepted", "rejected", "duplicates", "messages", "seconds")},
        "server_cpu_cores": (series["server_cpu_s"][-1] - series["server_cpu_s"][0]) / seconds if seconds else None,
        "rss": result,
        "grpc_version": grpc.__version__,
        "versions": {k: version(k) for k in ("grpcio", "protobuf", "onnxruntime", "numpy")},
        "machine": machine,
        "series": series,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_plot:
        plot(out.with_suffix(".png"), series, {"frames": args.frames, "mode": mode.name, "batch": args.batch,
                                               "warmup": warmup})
    print(f"\n{report['delivered']:,} frames in {seconds:.1f} s ({report['frames_per_s']:,.0f} frames/s), "
          f"lost {report['lost']}, duplicated {report['duplicated']}, mode {mode.name}, {args.batch} frames/packet")
    print(f"{'process':<9} {'start':>7} {'warm':>7} {'end':>7} {'max':>7} {'growth':>7} {'MB/100k':>8} "
          f"{'2nd half':>8} {'target':>7}")
    for name, g in result.items():
        slope, late = g["slope_mb_per_100k_frames"], g["second_half_slope_mb_per_100k_frames"]
        print(
            f"{name:<9} {g['start_mb']:>7.1f} {g['warm_mb']:>7.1f} {g['end_mb']:>7.1f} {g['max_mb']:>7.1f} "
            f"{g['growth_mb']:>+7.1f} {'-' if slope is None else format(slope, '+.2f'):>8} "
            f"{'-' if late is None else format(late, '+.2f'):>8} "
            f"{'<' + format(g['target_mb'], '.0f'):>7} {'met' if g['met'] else 'MISSED'}"
        )
    print(f"wrote {out}")
    ok = not errors and report["lost"] == 0 and report["duplicated"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
