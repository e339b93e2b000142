"""Shared parts of the streaming and memory benchmarks: the server as its own process, /proc
readers, the frames and packets the sender streams, and the receiver/sender worker loops.

Why processes: sender, server and receivers each run Python code per message; in one process the
GIL would serialize them and the benchmark would measure the GIL. So the server is `latentwire
serve` (a child process, port via --port-file) and the sender and every receiver are
multiprocessing workers (spawn: gRPC does not survive fork). All of them time-stamp with
time.monotonic() (CLOCK_MONOTONIC: one clock for every process on the machine), so end-to-end
latency is sender clock -> receiver clock without clock sync.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ modes


@dataclass(frozen=True)
class Mode:
    """How frames travel. edge: the sender encodes (Codec.encode) and publishes packets, the
    server only validates and relays. server: the sender publishes RAW frames, the server's
    batcher encodes them. raw: the baseline - the same frames, uncoded, in lossless packets whose
    zstd frame holds stored (uncompressed) blocks, through the same server and client paths."""

    name: str
    kind: str  # edge | server | raw
    quality: int  # codec quality level (ignored for raw)

    @property
    def channel(self) -> str:
        return self.name.replace("-", "_")

    @classmethod
    def parse(cls, text: str) -> Mode:
        if text == "raw":
            return cls("raw", "raw", 0)
        kind, _, q = text.partition("-q")
        if kind not in ("edge", "server") or not q.isdigit():
            raise SystemExit(f"mode {text!r}: use raw, edge-qN or server-qN (N a quality level, e.g. edge-q0)")
        return cls(text, kind, int(q))


def parse_modes(text: str) -> list[Mode]:
    return [Mode.parse(t.strip()) for t in text.split(",") if t.strip()]


# ------------------------------------------------------------------------------------ frames and packets


def mnist_digits(path: str | Path | None = None) -> np.ndarray:
    """The 10,000 MNIST test digits when ../shared/data is there, else the shipped 1,000-digit sample;
    `path`: a .npy file of (N, 1, 28, 28) uint8 digits instead (the link benchmark streams a chosen set)."""
    from latentwire.codec.sources import default_data_root, load_source

    if path is not None:
        return np.ascontiguousarray(np.load(path))

    root = default_data_root()
    if root is not None and (root / "mnist").is_dir():
        return np.ascontiguousarray(load_source(root / "mnist", split="test").samples)
    with np.load(REPO / "codec" / "assets" / "mnist_test_sample.npz") as z:
        return np.ascontiguousarray(z["samples"])


def zstd_stored(data: bytes) -> bytes:
    """A valid zstd frame holding `data` in raw (stored) blocks: decompression is a memcpy, so the
    raw baseline pays no compression on either side (RFC 8878: single segment, 4-byte content size)."""
    out = bytearray(b"\x28\xb5\x2f\xfd")
    out.append(0xA0)  # FCS field 4 bytes, single segment, no checksum, no dictionary
    out += struct.pack("<I", len(data))
    block = 128 << 10
    pos = 0
    while True:
        chunk = data[pos : pos + block]
        pos += len(chunk)
        last = pos >= len(data)
        out += struct.pack("<I", (len(chunk) << 3) | int(last))[:3]  # block type 0 = raw
        out += chunk
        if last:
            return bytes(out)


def raw_packet(model_id: str, frames: np.ndarray) -> bytes:
    from latentwire.codec.coding import bitstream

    return bitstream.write_packet(
        model_id=model_id, quality=0, sample_shape=tuple(int(d) for d in frames.shape[1:]), count=int(frames.shape[0]),
        payload=zstd_stored(np.ascontiguousarray(frames).tobytes()), lossless=True,
    )


def make_packet(codec: Any, mode: Mode, frames: np.ndarray) -> bytes:
    if mode.kind == "raw":
        return raw_packet(codec.model_id, frames)
    return codec.encode(frames, quality=mode.quality)


def chunks(digits: np.ndarray, batch: int, n_frames: int) -> Iterator[np.ndarray]:
    """n_frames digits in arrays of `batch`, cycling through the set."""
    pos, left = 0, n_frames
    while left > 0:
        take = min(batch, left)
        idx = (np.arange(pos, pos + take)) % digits.shape[0]
        yield digits[idx] if pos + take > digits.shape[0] else digits[pos : pos + take]
        pos = (pos + take) % digits.shape[0]
        left -= take


# ------------------------------------------------------------------------------------ /proc


def rss_bytes(pid: int | str = "self") -> int:
    return _status_kb(pid, "VmRSS:") * 1024


def hwm_bytes(pid: int | str = "self") -> int:
    return _status_kb(pid, "VmHWM:") * 1024


def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def server_socket_bytes(port: int, netns: str | None = None) -> dict[str, tuple[int, int]]:
    """Per established TCP connection of the server's port: (bytes_acked, bytes_received) from the
    kernel's tcp_info (`ss -ti`), keyed by the peer address. The delta over a run is what really
    crossed loopback as TCP payload: HTTP/2 frames, gRPC message prefixes, protobuf, pings.
    netns: the network namespace the server runs in (`ip netns exec NETNS ss ...`)."""
    try:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        out = subprocess.run(prefix + ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    conns: dict[str, tuple[int, int]] = {}
    peer = None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            parts = line.split()
            peer = parts[-1] if len(parts) >= 2 else None
            continue
        if peer is None:
            continue
        vals = {
            k: int(v) for k, v in (t.split(":", 1) for t in line.split() if ":" in t and t.split(":", 1)[1].isdigit())
        }
        conns[peer] = (vals.get("bytes_acked", 0), vals.get("bytes_received", 0))
    return conns


def subscriber_bytes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                     publisher: bool = True) -> int | None:
    """Bytes the server sent to its subscribers during a run: the acked-bytes delta of every
    connection except the publisher's (the one that sent the server the most), when it has one."""
    if not after:
        return None
    deltas = {k: (a - before.get(k, (0, 0))[0], r - before.get(k, (0, 0))[1]) for k, (a, r) in after.items()}
    skip = max(deltas, key=lambda k: deltas[k][1]) if publisher else None
    return sum(a for k, (a, _) in deltas.items() if k != skip)


def loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------------------------ the server


class ServerProcess:
    """`latentwire serve` in its own process, one channel per mode, all bound to one bundle."""

    def __init__(self, bundle: Path, modes: list[Mode], extra: list[str] | None = None, keep_dir: Path | None = None,
                 host: str = "127.0.0.1", prefix: list[str] | None = None):
        """host: the address it listens on; prefix: words run before the command (the link benchmark's
        `ip netns exec NS`, which execs, so the pid is still the server's)."""
        self.bundle, self.modes, self.extra = bundle, modes, extra or []
        self.host, self.prefix = host, prefix or []
        self.dir = Path(tempfile.mkdtemp(prefix="latentwire-bench-", dir=keep_dir))
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("latentwire")
        head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "latentwire.codec.cli"]
        cmd = self.prefix + head + ["serve", "--listen", f"{self.host}:0", "--data-dir", str(self.dir / "data"),
                      "--port-file", str(self.dir / "port"), "--threads", "1", "--log-level", "WARNING"]
        for m in self.modes:
            cmd += ["--channel", f"{m.channel}={self.bundle}:{m.quality}"]
        return cmd + self.extra

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.log_path = self.dir / "server.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        port_file = self.dir / "port"
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start in {timeout}s:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    def stop(self) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


# ------------------------------------------------------------------------------------ workers


def _quiet_threads() -> None:
    # one onnxruntime / BLAS thread per worker: the machine has 2 cores and many workers
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(k, "1")


def receiver_main(conn: Any, target: str, cache_dir: str, progress: Any = None) -> None:
    """A subscriber process. Commands: ("sub", channel, start_seq, n_frames, idle_timeout, keep_times)
    -> a dict of counters (+ per-frame decode-complete times when keep_times), None -> exit.

    Per frame it does no Python work: one Client.subscribe_batches step per Subscribe response
    (decode_many over the response's packets), a seq check per batch, and a slice assignment of
    the receive time. Loss/duplication are found from the seq order (no per-frame memory)."""
    _quiet_threads()
    from latentwire.client import Client

    client = Client(target, cache_dir=cache_dir)
    conn.send(("up", os.getpid()))
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        _, channel, start, n, idle, keep = cmd
        times = np.full(n, np.nan) if keep else None
        commits = np.full(n, np.nan) if keep else None  # server commit time, on the monotonic clock
        expected, lost, dup, delivered = start, 0, 0, 0
        payload = wire = responses = packets = 0
        bad_shape = 0
        end = start + n
        cpu0 = time.process_time()
        t_first = t_last = None
        conn.send(("ready", os.getpid()))
        try:
            for b in client.subscribe_batches(channel, start, idle_timeout=idle):
                t = time.monotonic()
                t_first = t if t_first is None else t_first
                t_last = t
                k = int(b.frames.shape[0])
                if b.frames.ndim != 4 or b.frames.shape[1:] != (1, 28, 28):
                    bad_shape += k
                if b.first_seq > expected:
                    lost += b.first_seq - expected
                elif b.first_seq < expected:
                    dup += expected - b.first_seq
                stop_at = min(b.end_seq, end)
                if times is not None and commits is not None and stop_at > b.first_seq:
                    lo = max(b.first_seq, start)
                    times[lo - start : stop_at - start] = t
                    # commit stamps are wall-clock (time.time() on the server): same machine, same clock
                    commits[lo - start : stop_at - start] = (b.timestamps[lo - b.first_seq : stop_at - b.first_seq]
                                                             - (time.time() - time.monotonic()))
                delivered += max(0, stop_at - max(b.first_seq, expected))
                expected = max(expected, b.end_seq)
                payload += b.payload_bytes
                wire += b.wire_bytes
                responses += 1
                packets += b.packets
                if progress is not None:
                    progress.value = delivered
                if expected >= end:
                    break
        except Exception as e:  # noqa: BLE001 - reported to the parent as a failed run
            conn.send(("result", {"error": f"{type(e).__name__}: {e}", "delivered": delivered}))
            continue
        lost += max(0, end - expected)
        conn.send(("result", {
            "delivered": delivered, "lost": lost, "duplicated": dup, "bad_shape": bad_shape,
            "t_first": t_first, "t_last": t_last, "payload_bytes": payload, "proto_bytes": wire,
            "responses": responses, "packets": packets,
            "cpu_s": time.process_time() - cpu0, "rss": rss_bytes(), "times": times, "commits": commits,
        }))
    client.close()


def sender_main(conn: Any, target: str, bundle: str, cache_dir: str, progress: Any = None,
                digits_file: str | None = None) -> None:
    """The publisher process. Commands:
    ("sat", mode, channel, n, batch): as fast as publish allows, packets pre-encoded from the
        10k test digits before the clock starts (edge, raw) or raw frames the server encodes (server);
    ("rate", mode, channel, n, batch, rate): paced at `rate` frames/s, `batch` frames per message,
        encoded live per message (edge, raw) so latency includes the sender's encode;
    None: exit. Replies with per-frame offered times (monotonic) and the PublishResult counters.
    digits_file: a .npy of the digits to send (default: mnist_digits())."""
    _quiet_threads()
    from latentwire.client import Client
    from latentwire.codec.codec import Codec

    digits = mnist_digits(digits_file)
    codec = Codec.load(bundle, provider="cpu", threads=1)
    client = Client(target, cache_dir=cache_dir)
    pools: dict[tuple[str, int], list[bytes]] = {}
    conn.send(("up", os.getpid()))
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        kind, mode, channel, n, batch = cmd[:5]
        rate = cmd[5] if kind == "rate" else None
        keep = cmd[6] if len(cmd) > 6 else True  # the memory benchmark keeps no per-frame arrays
        offered = np.empty(n if keep else 0)
        sent = [0]
        if kind == "sat" and mode.kind != "server" and (mode.name, batch) not in pools:
            whole = (digits.shape[0] // batch) * batch or batch  # full packets only: counts must match
            pools[(mode.name, batch)] = [make_packet(codec, mode, c) for c in chunks(digits, batch, whole)]

        # this command's values bound as defaults: the publish call below drains both generators
        def frames(batch: int = batch, n: int = n, rate: float | None = rate, keep: bool = keep,
                   offered: np.ndarray = offered, sent: list[int] = sent) -> Iterator[np.ndarray]:
            t0 = time.monotonic()
            for c in chunks(digits, batch, n):
                i, k = sent[0], c.shape[0]
                if rate:
                    due = t0 + (i + k - 1) / rate  # the message leaves when its last frame has arrived
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    if keep:
                        offered[i : i + k] = t0 + np.arange(i, i + k) / rate
                elif keep:
                    offered[i : i + k] = time.monotonic()
                sent[0] += k
                if progress is not None:
                    progress.value = sent[0]
                yield c

        def packets(mode: Any = mode, batch: int = batch, rate: float | None = rate) -> Iterator[bytes]:
            if rate:
                for c in frames():
                    yield make_packet(codec, mode, c)
                return
            pool = pools[(mode.name, batch)]
            for j, c in enumerate(frames()):
                p = pool[j % len(pool)]
                yield p if c.shape[0] == batch else make_packet(codec, mode, c)

        cpu0, t0 = time.process_time(), time.monotonic()
        try:
            if mode.kind == "server":
                r = client.publish(channel, frames(), quality=mode.quality, frames_per_message=batch)
            else:
                r = client.publish_packets(channel, packets())
        except Exception as e:  # noqa: BLE001
            conn.send(("result", {"error": f"{type(e).__name__}: {e}"}))
            continue
        conn.send(("result", {
            "accepted": r.accepted, "rejected": r.rejected, "duplicates": r.duplicates, "first_seq": r.first_seq,
            "messages": r.messages, "sent_bytes": r.sent_bytes, "seconds": time.monotonic() - t0,
            "cpu_s": time.process_time() - cpu0, "rss": rss_bytes(), "offered": offered if keep else None,
            "errors": [e.message for e in r.errors[:3]],
        }))
    client.close()


def expect(conn: Any, tag: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"no {tag!r} from a worker within {timeout:.0f}s")
    got, value = conn.recv()
    if got != tag:
        raise RuntimeError(f"worker sent {got!r}, expected {tag!r}")
    return value
