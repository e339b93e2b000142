"""`latentwire demo`: the main job on one machine.

Starts the gRPC server with the packaged pretrained MNIST codec, a receiver subscribed to a
channel, and a sender publishing the real MNIST test digits shipped in the package — all on
127.0.0.1 — then prints what crossed the wire against raw, zstd and WebP, and the PSNR of what
the receiver decoded. Nothing here needs torch.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latentwire.codec.baselines import image_at_psnr, image_point, raw_point, zstd_point
from latentwire.codec.codec import Codec, default_bundle_path
from latentwire.codec.normalization import psnr_db
from latentwire.codec.sources import shipped_digits
from latentwire.v1 import latentwire_pb2 as pb

from .client import Client

CHANNEL = "digits"


class LocalServer:
    """`latentwire serve` on a free loopback port, as its own process: the client room runs the
    server the way a user does, through its command, and never imports it."""

    def __init__(self, data_dir: Path, channel: str, timeout: float = 60.0) -> None:
        self.data_dir, self.channel, self.timeout = data_dir, channel, timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        port_file = self.data_dir / "port"
        self._log = open(self.data_dir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "latentwire.codec.cli", "serve", "--listen", "127.0.0.1:0",
             "--channel", self.channel, "--data-dir", str(self.data_dir / "data"), "--port-file", str(port_file),
             "--log-level", "WARNING"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the demo server did not start:\n{(self.data_dir / 'server.log').read_text()}")
            time.sleep(0.05)
        return f"127.0.0.1:{int(port_file.read_text())}"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def sample_digits() -> tuple[np.ndarray, np.ndarray | None]:
    """The first 1000 MNIST test digits (uint8 (N,1,28,28)) and labels, shipped in the package."""
    shipped = shipped_digits()
    return shipped.samples, shipped.labels


@dataclass
class DemoResult:
    unique: int  # distinct real digits in the sample; the stream repeats them `repeat` times
    frames: int
    seconds: float
    frames_per_s: float
    quality: int
    packet_bytes_per_frame: float
    wire_bytes_per_frame: float
    psnr_db: float
    max_abs_error: int
    lost: int
    duplicated: int
    baselines: dict[str, dict[str, Any]]


def run_demo(quality: int | None = None, repeat: int = 10, rate: float | None = None,
             progress: bool = True) -> DemoResult:
    digits, _ = sample_digits()
    frames = np.concatenate([digits] * repeat)
    bundle = default_bundle_path()
    codec = Codec.load(bundle, provider="cpu")
    level = codec.default_quality if quality is None else quality
    with tempfile.TemporaryDirectory(prefix="latentwire-demo-") as data_dir, \
            LocalServer(Path(data_dir), f"{CHANNEL}={bundle}:{level}") as target:
        received: dict[int, np.ndarray] = {}
        counts = {"dup": 0, "packet_bytes": 0, "wire_bytes": 0, "packets": 0}
        spans: list[tuple[int, int]] = []  # (first seq, frames) of every packet the receiver got
        done = threading.Event()
        t_end = [0.0]

        def receive() -> None:
            with Client(target) as rx:
                codec_rx = rx.codec(codec.model_id)  # fetched over gRPC, hash-verified, cached
                for p in rx.subscribe_packets(CHANNEL, from_seq=0, idle_timeout=30):
                    counts["packet_bytes"] += len(p.payload)
                    counts["wire_bytes"] += pb.PacketRecord(  # the model id travels once per stream
                        first_seq=p.first_seq, count=p.count, timestamp=p.timestamp,
                        model_id="" if counts["packets"] else p.model_id,
                        quality=p.quality, sample_shape=p.sample_shape, payload=p.payload,
                    ).ByteSize() + 2  # + the repeated-field tag and length inside the response
                    counts["packets"] += 1
                    spans.append((p.first_seq, p.count))
                    batch = codec_rx.decode(p.payload)
                    for i in range(p.count):
                        seq = p.first_seq + i
                        counts["dup"] += seq in received
                        received[seq] = batch[i]
                    if len(received) >= len(frames):
                        t_end[0] = time.perf_counter()
                        done.set()
                        return

        rx_thread = threading.Thread(target=receive, daemon=True)
        rx_thread.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        with Client(target) as tx:
            if rate:
                step = max(1, int(rate // 10))
                for i in range(0, len(frames), step):
                    tx.publish(CHANNEL, frames[i : i + step], quality=level)
                    time.sleep(step / rate)
            else:
                tx.publish(CHANNEL, frames, quality=level)
        done.wait(timeout=120)
    n = len(frames)
    got = np.stack([received[s] for s in sorted(received)]) if received else np.empty((0, *digits.shape[1:]), np.uint8)
    seconds = (t_end[0] or time.perf_counter()) - t0
    psnr = psnr_db(frames[: len(got)], got, 255.0)
    return DemoResult(
        unique=len(digits),
        frames=len(got),
        seconds=seconds,
        frames_per_s=len(got) / seconds,
        quality=level,
        packet_bytes_per_frame=counts["packet_bytes"] / max(len(got), 1),
        wire_bytes_per_frame=counts["wire_bytes"] / max(len(got), 1),
        psnr_db=psnr,
        max_abs_error=int(np.abs(got.astype(int) - frames[: len(got)].astype(int)).max()) if len(got) else -1,
        lost=n - len(got),
        duplicated=counts["dup"],
        baselines=measure_baselines(frames, digits, psnr, spans, progress),
    )


def measure_baselines(frames: np.ndarray, digits: np.ndarray, psnr: float, spans: list[tuple[int, int]],
                      progress: bool = True) -> dict[str, dict[str, Any]]:
    """What a user would send instead, each labelled with how it was measured. zstd compresses
    exactly the frames of each packet latentwire sent (so it finds the redundancy between digits
    too); WebP codes each digit alone, as an image codec is used, at the cheapest quality that
    reaches latentwire's PSNR (a bisection: the slow part, hence the progress bar)."""
    out: dict[str, dict[str, Any]] = {}
    with tqdm(total=4, desc="measuring baselines", unit="codec", disable=not progress, file=sys.stderr,
              leave=False) as bar:
        bar.set_postfix_str("raw, zstd")
        out["raw (uint8 pixels)"] = raw_point(digits).to_dict()
        if spans:
            total = sum(zstd_point(frames[a : a + n], batch=n).bytes_per_sample * n for a, n in spans)
            per = sum(n for _, n in spans)
            point = zstd_point(digits[:1]).to_dict()
            point.update(
                setting=f"level=19, the frames of each of the {len(spans)} packets", bytes_per_sample=total / per
            )
            out[f"zstd-19, same {per // len(spans)}-digit batches as the packets, lossless"] = point
        out["zstd-19, each digit alone, lossless"] = zstd_point(digits).to_dict()
        bar.update(2)
        bar.set_postfix_str("WebP lossless")
        out["WebP lossless, each digit alone"] = image_point(digits, "webp", None).to_dict()
        bar.update(1)
        match = image_at_psnr(digits, "webp", psnr, on_try=lambda q: bar.set_postfix_str(f"WebP quality {q}"))
        out[f"WebP, each digit alone, cheapest quality >= {psnr:.1f} dB ({match.setting})"] = match.to_dict()
        bar.update(1)
    return out


def print_report(r: DemoResult) -> None:
    print(f"\nlatentwire demo: {r.frames} frames ({r.unique} real MNIST test digits shipped in the package, "
          f"sent {r.frames // max(r.unique, 1)}x), sender -> server -> receiver on 127.0.0.1")
    print(f"  delivered {r.frames} frames in {r.seconds:.2f} s = {r.frames_per_s:,.0f} frames/s "
          f"(lost {r.lost}, duplicated {r.duplicated})")
    print(f"  quality level {r.quality}: PSNR {r.psnr_db:.2f} dB, max abs error {r.max_abs_error} (0..255 pixels)\n")
    rows = [("latentwire (on the wire)", r.wire_bytes_per_frame, r.psnr_db),
            ("latentwire (packets)", r.packet_bytes_per_frame, r.psnr_db)]
    rows += [(name, b["bytes_per_sample"], b["psnr_db"]) for name, b in r.baselines.items()]
    width = max(len(name) for name, _, _ in rows) + 2
    print(f"  {'bytes per digit':<{width}}{'bytes':>9}{'vs latentwire':>15}{'PSNR dB':>10}")
    for name, size, psnr in rows:
        ratio = size / r.wire_bytes_per_frame
        shown = "lossless" if psnr is None or psnr == float("inf") else f"{psnr:.2f}"
        print(f"  {name:<{width}}{size:>9.1f}{ratio:>14.1f}x{shown:>10}")


def add_parser(subparsers: Any, name: str = "demo") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="stream the shipped MNIST sample through a local server and report savings")
    p.add_argument("--quality", type=int, default=None, help="quality level (default: the bundle's)")
    p.add_argument("--repeat", type=int, default=10, help="stream the 1000 shipped digits this many times")
    p.add_argument("--rate", type=float, default=None, help="offered frames/s (default: as fast as possible)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    result = run_demo(args.quality, args.repeat, args.rate)
    if args.json:
        print(json.dumps(result.__dict__, indent=2, default=float))
    else:
        print_report(result)
    return 0 if result.lost == 0 and result.duplicated == 0 else 1
