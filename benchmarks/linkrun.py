"""The link benchmark's processes: `latentwire serve` and a latentwire sender on the server side of
the link, a latentwire receiver and the TCP baseline's sender/receiver pair across it, each started
with `ip netns exec` (benchmarks/nsworker.py) and driven over a Unix-socket Connection with the
same commands as benchmarks/streamkit.py's workers. One run = one phase of one row."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.netns import LinkPair
from benchmarks.streamkit import REPO, Mode, ServerProcess, expect, loadavg, server_socket_bytes, subscriber_bytes
from benchmarks.tcpframes import TcpCodec

START_TIMEOUT = 300.0  # a worker's imports (onnxruntime, grpc) on a busy 2-core machine


def steady_fps(times: np.ndarray, t_start: float) -> float | None:
    """Frames decoded after the first arrival over the time from the first arrival to the last: the
    link's steady rate, free of connection set-up and of the first message's own transfer."""
    t = times[np.isfinite(times)]
    if t.size == 0:
        return None
    t_first, t_last = float(t.min()), float(t.max())
    after = int(np.count_nonzero(t > t_first))
    if after == 0 or t_last <= t_first:
        return float(t.size / max(t_last - t_start, 1e-9))
    return after / (t_last - t_first)


class LinkRunner:
    def __init__(self, link: LinkPair, bundle: Path, modes: list[Mode], digits_file: Path, work: Path,
                 packets_per_response: int):
        self.link = link
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.modes = modes
        self.next_seq = {m.channel: 0 for m in modes}
        self.sock_dir = work / "sockets"
        self.sock_dir.mkdir(mode=0o700)
        self.log = open(work / "workers.log", "ab")
        cfg = work / "server.json"
        cfg.write_text(json.dumps({"subscribe_packets_per_response": packets_per_response}))
        self.server = ServerProcess(bundle, modes, ["--retention-bytes", str(512 << 20), "--config", str(cfg)],
                                    host=link.server_addr, prefix=link.exec_prefix(link.server_ns))
        try:  # whatever started before a failure (or a signal) is stopped again
            self.server.start()
            target = self.server.target
            self.lw_tx = self._spawn(link.server_ns, "lw-sender",
                                     [target, str(bundle), str(work / "cache-sender"), str(digits_file)])
            self.lw_rx = self._spawn(link.receiver_ns, "lw-receiver", [target, str(work / "cache-receiver")])
            self.tcp_tx = self._spawn(link.server_ns, "tcp-sender", [link.server_addr, str(digits_file)])
            self.tcp_rx = self._spawn(link.receiver_ns, "tcp-receiver", [])
            for conn in self.conns:
                expect(conn, "up", START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def _spawn(self, ns: str, role: str, args: list[str]) -> Connection:
        path = self.sock_dir / f"{role}.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(1)
        srv.settimeout(1.0)
        proc = subprocess.Popen(self.link.exec_prefix(ns) + [sys.executable, "-m", "benchmarks.nsworker", role,
                                                             str(path), *args],
                                cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    s, _ = srv.accept()
                    break
                except TimeoutError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"worker {role} in {ns} did not connect (exit {proc.poll()}); "
                                           f"see {self.log.name}") from None
        finally:
            srv.close()
        s.settimeout(None)
        conn = Connection(s.detach())
        self.conns.append(conn)
        return conn

    def warm_up(self, timeout: float) -> None:
        """Sessions, the receiver's bundle download, onnxruntime's first runs: not recorded."""
        for mode in self.modes:
            r = self.run(mode, None, 128, 64, None, timeout)
            if r["errors"]:
                raise RuntimeError(f"warm-up on {mode.name}: {r['errors']}")
        r = self.run(None, TcpCodec("zstd", 3), 64, 1, None, timeout)
        if r["errors"]:
            raise RuntimeError(f"warm-up of the TCP pair: {r['errors']}")

    def run(self, mode: Mode | None, tcp: TcpCodec | None, n: int, batch: int, rate: float | None,
            timeout: float) -> dict[str, Any]:
        limit = timeout + 300.0
        load0 = loadavg()
        if mode is not None:
            channel = mode.channel
            self.lw_rx.send(("sub", channel, self.next_seq[channel], n, timeout, True))
            expect(self.lw_rx, "ready", 60)
            time.sleep(0.3)  # let the Subscribe call reach the server
            sock0 = server_socket_bytes(self.server.port, self.link.server_ns)
            link0 = self.link.tx_bytes()
            self.lw_tx.send(("rate", mode, channel, n, batch, rate) if rate else ("sat", mode, channel, n, batch))
            tx = expect(self.lw_tx, "result", limit)
            rx = expect(self.lw_rx, "result", limit)
            link1 = self.link.tx_bytes()
            sock = subscriber_bytes(sock0, server_socket_bytes(self.server.port, self.link.server_ns))
            if tx.get("first_seq") is not None:
                self.next_seq[channel] = tx["first_seq"] + tx["accepted"]
        else:
            assert tcp is not None
            self.tcp_tx.send(("rate" if rate else "sat", tcp, n, batch, rate))
            port = expect(self.tcp_tx, "port", limit)  # the messages are coded before the port is announced
            link0 = self.link.tx_bytes()
            self.tcp_rx.send(("recv", self.link.server_addr, port, tcp, n))
            rx = expect(self.tcp_rx, "result", limit)
            tx = expect(self.tcp_tx, "result", limit)
            link1 = self.link.tx_bytes()
            sock = tx.get("sent_bytes")
        return summarize(n, batch, rate, tx, rx, sock, link0, link1, load0, tcp is not None)

    def slow_subscriber(self, mode: Mode, frames: int, batch: int, n_sub: int, timeout: float) -> dict[str, Any]:
        """The receiver reads n_sub frames of `mode`'s channel through the link while the sender
        publishes `frames` from the same position as fast as the server takes them."""
        channel = mode.channel
        self.lw_rx.send(("sub", channel, self.next_seq[channel], n_sub, timeout, True))
        expect(self.lw_rx, "ready", 60)
        time.sleep(0.3)
        self.lw_tx.send(("sat", mode, channel, frames, batch))
        tx = expect(self.lw_tx, "result", timeout + 600)
        rx = expect(self.lw_rx, "result", timeout + 600)
        errors = [r["error"] for r in (tx, rx) if "error" in r]
        if tx.get("first_seq") is not None:
            self.next_seq[channel] = tx["first_seq"] + tx["accepted"]
        return {"errors": errors, "published_bytes": tx.get("sent_bytes", 0), "publish_seconds": tx.get("seconds", 0.0),
                "delivered": rx.get("delivered", 0), "lost": rx.get("lost"), "duplicated": rx.get("duplicated"),
                "frames_per_s": steady_fps(rx["times"], rx["t_first"] or 0.0) if "times" in rx else None}

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self.procs[len(self.conns):]:  # started, not yet connected: nothing to tell them
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.terminate()  # a worker still starting up, or stuck in a socket call
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for conn in self.conns:
            conn.close()
        self.server.stop()
        self.log.close()


def summarize(n: int, batch: int, rate: float | None, tx: dict, rx: dict, sock_bytes: int | None,
              link0: tuple[int, int], link1: tuple[int, int], load0: float | None, tcp: bool) -> dict[str, Any]:
    errors = [r["error"] for r in (tx, rx) if "error" in r]
    out: dict[str, Any] = {"frames": n, "batch": batch, "rate": rate, "errors": errors, "loadavg_start": load0,
                           "pid": os.getpid()}
    if errors:
        return out
    delivered = int(rx["delivered"])
    offered, times = tx["offered"], rx["times"]
    lat = (times - offered)[np.isfinite(times)]
    per = max(delivered, 1)
    out.update({
        "delivered": delivered, "lost": rx["lost"], "duplicated": rx["duplicated"], "bad_shape": rx["bad_shape"],
        "frames_per_s": steady_fps(times, float(offered[0])),
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat.size else None,
        "max_ms": float(lat.max() * 1e3) if lat.size else None,
        "payload_bytes_per_frame": rx["payload_bytes"] / per,
        "bytes_per_frame": (sock_bytes / per) if sock_bytes else rx.get("proto_bytes", 0) / per,
        "bytes_source": ("bytes written on the socket" if tcp else "server socket, ss bytes_acked") if sock_bytes
        else "protobuf bytes of the Subscribe responses (ss unavailable)",
        "link_bytes_per_frame": (link1[0] - link0[0]) / per,
        "reverse_link_bytes": link1[1] - link0[1],
        "sender_seconds": tx.get("seconds"), "receiver_cpu_us_per_frame": 1e6 * rx["cpu_s"] / per,
    })
    return out
