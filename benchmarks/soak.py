"""Soak: publish/subscribe for a configurable time with faults injected; count lost, duplicated and
corrupted frames and sample the server's RSS.

Setup: `latentwire serve` as a child process (the packaged MNIST bundle at the lossless level, so
every received frame can be compared bit for bit with what was sent), one idempotent publisher at
--rate frames/s (frame k of the producer is digit k mod N; with one producer seq == k), two fast
subscribers, one subscriber reading 100x slower than the stream (it drains at the end), and the
faults: server restarts every --restart-every s (alternating kill -9 and SIGTERM, port closed for
1 s), subscribers cancelled or hitting their deadline mid-stream, publishers cancelled mid-stream,
and a bad publisher sending corrupt, undecodable and mis-shaped frames every few seconds.

    nice .venv/bin/python -m benchmarks.soak --minutes 8      # what BENCHMARKS.md reports
    nice .venv/bin/python -m benchmarks.soak --minutes 30     # the record run: same command, 30 min
    .venv/bin/python -m benchmarks.soak --minutes 1 --restart-every 20   # CI-sized

Writes benchmarks/results/soak.json (+ soak.png: RSS over time). Exit 1 unless 0 lost,
0 duplicated, 0 corrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from latentwire.client import Client
from latentwire.codec.codec import Codec, default_bundle_path
from latentwire.codec.coding import bitstream as B
from latentwire.v1 import latentwire_pb2 as pb
from latentwire.v1 import latentwire_pb2_grpc as pb_grpc

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
LOSSLESS = 10  # the packaged bundle's max_error 0 level


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    def __init__(self, bundle: Path, data: Path, port: int, log: Path):
        self.bundle, self.data, self.port, self.log = bundle, data, port, log
        self.proc: subprocess.Popen | None = None
        self.incarnation = 0

    def start(self) -> None:
        port_file = self.data / "port"
        port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "latentwire.server.main", "--channel", f"digits={self.bundle}:{LOSSLESS}",
               "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data), "--port-file", str(port_file),
               "--threads", "1", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.incarnation += 1

    def restart(self, how: str) -> None:
        assert self.proc is not None
        if how == "kill9":
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        time.sleep(1.0)  # the port is closed meanwhile
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class SubStats:
    name: str
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0
    next_seq: int = 0
    errors: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="lw-soak-"))
        self.bundle = Path(args.bundle) if args.bundle else default_bundle_path()
        self.codec = Codec.load(self.bundle, provider="cpu", threads=1)
        from latentwire.codec.sources import load_source, sample_data_root

        self.digits = np.ascontiguousarray(load_source(sample_data_root() / "mnist").samples)
        self.server = Server(self.bundle, self.tmp / "data", _free_port(), self.tmp / "server.log")
        self.server.data.mkdir(parents=True)
        self.target = f"127.0.0.1:{self.server.port}"
        self.stop = threading.Event()
        self.pub_stop = threading.Event()
        self.acked = 0
        self.publish_calls = 0
        self.publish_reconnects = 0
        self.subs = [SubStats("fast-1"), SubStats("fast-2"), SubStats("slow")]
        self.rss: list[tuple[float, int, float]] = []
        self.faults: dict[str, int] = {"kill9": 0, "sigterm": 0, "cancelled_subscribe": 0, "deadline_subscribe": 0,
                                       "cancelled_publish": 0, "bad_requests": 0, "bad_frames_rejected": 0,
                                       "bad_frames_accepted": 0}
        self.t0 = time.monotonic()

    # ---------------------------------------------------------------- workers

    def publisher(self) -> None:
        per = 50
        client = Client(self.target, cache_dir=self.tmp / "cache-pub", timeout=120)
        while not self.pub_stop.is_set():
            start = self.acked

            def frames(start: int = start):  # this attempt's start, bound here
                k = start
                t_next = time.monotonic()
                while not self.pub_stop.is_set():
                    idx = np.arange(k, k + per) % len(self.digits)
                    yield self.digits[idx]
                    k += per
                    t_next += per / self.args.rate
                    time.sleep(max(0.0, t_next - time.monotonic()))

            def on_ack(a, start: int = start) -> None:
                self.acked = start + a.first_frame + a.frames

            try:
                self.publish_calls += 1
                r = client.publish("digits", frames(), frames_per_message=per, producer_id="soak-producer",
                                   start_offset=start, on_ack=on_ack, max_backoff=1.0, max_retries=30)
                self.publish_reconnects += r.reconnects
            except grpc.RpcError:
                time.sleep(0.5)  # resume from the last acknowledged frame (the server drops repeats)
        client.close()

    def subscriber(self, st: SubStats, delay: float) -> None:
        client = Client(self.target, cache_dir=self.tmp / f"cache-{st.name}", timeout=120)
        while not self.stop.is_set():
            try:
                for p in client.subscribe_packets("digits", st.next_seq, max_backoff=1.0, stop=self.stop):
                    self._check(st, p)
                    if delay and not self.pub_stop.is_set():
                        time.sleep(delay)
            except grpc.RpcError as e:
                st.errors.append(f"{e.code().name}: {e.details()}"[:200])
                time.sleep(0.5)
        client.close()

    def _check(self, st: SubStats, p) -> None:
        if p.first_seq + p.count <= st.next_seq:
            st.duplicated += p.count
            return
        if p.first_seq > st.next_seq:
            st.lost += p.first_seq - st.next_seq
        try:
            frames = self.codec.decode(p.payload)
        except Exception as e:  # noqa: BLE001
            st.corrupted += p.count
            st.errors.append(f"decode: {e}"[:200])
            st.next_seq = p.first_seq + p.count
            return
        skip = max(0, st.next_seq - p.first_seq)
        seqs = np.arange(p.first_seq + skip, p.first_seq + p.count)
        want = self.digits[seqs % len(self.digits)]
        bad = int(np.count_nonzero(np.any((frames[skip:] != want).reshape(len(seqs), -1), axis=1)))
        st.corrupted += bad
        st.received += len(seqs)
        st.next_seq = p.first_seq + p.count

    def chaos_clients(self) -> None:
        """Cancelled / deadline-exceeded subscribers and publishers, and a bad publisher."""
        rng = random.Random(self.args.seed)
        junk = np.random.default_rng(self.args.seed)
        good = self.codec.encode(self.digits[:4], quality=LOSSLESS)
        h, payload = B.read_packet(good)
        while not self.pub_stop.wait(rng.uniform(1.0, 3.0)):
            ch = grpc.insecure_channel(self.target)
            stub = pb_grpc.LatentwireStub(ch)
            try:
                choice = rng.randrange(4)
                if choice == 0:
                    call = stub.Subscribe(pb.SubscribeRequest(channel="digits", from_seq=0,
                                                              max_packets_per_response=1))
                    for i, _ in enumerate(call):
                        if i >= rng.randrange(1, 20):
                            break
                    call.cancel()
                    self.faults["cancelled_subscribe"] += 1
                elif choice == 1:
                    try:
                        for _ in stub.Subscribe(pb.SubscribeRequest(channel="digits", latest=True),
                                                timeout=rng.uniform(0.05, 1.0)):
                            pass
                    except grpc.RpcError:
                        pass
                    self.faults["deadline_subscribe"] += 1
                elif choice == 2:
                    hold = threading.Event()

                    def reqs(hold: threading.Event = hold):
                        yield pb.PublishRequest(open=pb.PublishOpen(channel="digits", producer_id="cancelled"))
                        hold.wait(5)

                    publish = stub.Publish(reqs())
                    next(publish)
                    publish.cancel()
                    hold.set()
                    self.faults["cancelled_publish"] += 1
                else:
                    flipped = bytearray(good)
                    flipped[len(flipped) // 2] ^= 0x40
                    garbage = B.write_packet(model_id=self.codec.model_id, quality=h.quality,
                                             sample_shape=h.sample_shape, count=h.count, recon_crc=h.recon_crc,
                                             residual=h.has_residual,
                                             payload=junk.integers(0, 256, len(payload), dtype=np.uint8).tobytes())
                    body = bytearray(good[:-4])
                    body[-1] ^= 0xFF
                    wrong = np.zeros((3, 1, 27, 27), np.uint8)
                    msgs = [pb.PublishRequest(open=pb.PublishOpen(channel="digits")),
                            pb.PublishRequest(message_index=1, packets=pb.Packets(
                                packets=[bytes(flipped), garbage, good[:-9], b"LW\x07junk"])),
                            pb.PublishRequest(message_index=2, raw=pb.RawFrames(
                                data=wrong.tobytes(), dtype="uint8", shape=list(wrong.shape)))]
                    for r in stub.Publish(iter(msgs), timeout=30):
                        self.faults["bad_frames_rejected"] += r.rejected
                        self.faults["bad_frames_accepted"] += r.accepted
                    self.faults["bad_requests"] += 1
            except grpc.RpcError:
                pass  # the server may be restarting right now
            finally:
                ch.close()

    def sampler(self) -> None:
        while not self.stop.wait(2.0):
            proc = self.server.proc
            if proc is not None:
                mb = _rss_mb(proc.pid)
                if mb is not None:
                    self.rss.append((round(time.monotonic() - self.t0, 1), self.server.incarnation, round(mb, 1)))

    # ---------------------------------------------------------------- run

    def run(self) -> dict:
        a = self.args
        self.server.start()
        threads = [threading.Thread(target=self.publisher, daemon=True),
                   threading.Thread(target=self.chaos_clients, daemon=True),
                   threading.Thread(target=self.sampler, daemon=True)]
        slow_delay = 100 * 50 / a.rate  # one 50-frame packet per 100 packet-times: 100x slower
        threads += [threading.Thread(target=self.subscriber, args=(s, slow_delay if s.name == "slow" else 0.0),
                                     daemon=True) for s in self.subs]
        for t in threads:
            t.start()
        end = self.t0 + a.minutes * 60
        next_restart = self.t0 + a.restart_every
        kinds = ["kill9", "sigterm"]
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            if a.restart_every and time.monotonic() >= next_restart and end - time.monotonic() > 10:
                how = kinds[(self.faults["kill9"] + self.faults["sigterm"]) % 2]
                self.server.restart(how)
                self.faults[how] += 1
                next_restart = time.monotonic() + a.restart_every
                print(f"  t={time.monotonic() - self.t0:.0f}s {how} + restart; acked {self.acked}, "
                      f"received {[s.next_seq for s in self.subs]}", file=sys.stderr, flush=True)
        self.pub_stop.set()
        threads[0].join(120)
        with Client(self.target, timeout=60) as c:
            committed = c.channel("digits").next_seq
        drain_deadline = time.monotonic() + 300
        while any(s.next_seq < committed for s in self.subs) and time.monotonic() < drain_deadline:
            time.sleep(0.5)
        self.stop.set()
        for t in threads[1:]:
            t.join(30)
        self.server.stop()
        return self.report(committed)

    def report(self, committed: int) -> dict:
        by_inc: dict[int, list[float]] = {}
        for _, inc, mb in self.rss:
            by_inc.setdefault(inc, []).append(mb)
        warm = [v for v in by_inc.values() if len(v) >= 6]
        growth = [max(v[3:]) - v[3] for v in warm]  # after ~6 s of warm-up in each incarnation
        subs = []
        for s in self.subs:
            d = asdict(s)
            d["lost"] += max(0, committed - s.next_seq)  # anything never delivered counts as lost
            d["errors"] = s.errors[:5]
            subs.append(d)
        lost = sum(s["lost"] for s in subs)
        dup = sum(s["duplicated"] for s in subs)
        corrupted = sum(s["corrupted"] for s in subs)
        return {
            "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:]),
            "minutes": self.args.minutes,
            "rate_frames_per_s": self.args.rate,
            "frames_sent_acked": self.acked,
            "frames_committed": committed,
            "subscribers": subs,
            "lost": lost,
            "duplicated": dup,
            "corrupted": corrupted,
            "faults": self.faults,
            "publish_calls": self.publish_calls,
            "publish_reconnects": self.publish_reconnects,
            "server_incarnations": self.server.incarnation,
            "rss_mb": {"samples": self.rss, "max": max((m for _, _, m in self.rss), default=None),
                       "max_growth_within_an_incarnation": round(max(growth, default=0.0), 1),
                       "growth_per_incarnation": [round(g, 1) for g in growth]},
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_avg_at_end": os.getloadavg()},
            "bundle": self.codec.model_id[:12],
            "quality": LOSSLESS,
        }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["rss_mb"]["samples"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for inc in sorted({i for _, i, _ in s}):
        pts = [(t, m) for t, i, m in s if i == inc]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="C0")
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title(f"soak {result['minutes']} min: {result['frames_committed']} frames, lost {result['lost']}, "
                 f"dup {result['duplicated']}, {result['faults']['kill9']} kill -9 + "
                 f"{result['faults']['sigterm']} SIGTERM restarts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=300.0, help="frames/s the publisher offers")
    p.add_argument("--restart-every", type=float, default=90.0, help="seconds between server restarts (0: none)")
    p.add_argument("--bundle", help="bundle directory (default: the packaged MNIST codec)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "soak.json"))
    p.add_argument("--plot", default=str(RESULTS / "soak.png"))
    args = p.parse_args(argv)
    soak = Soak(args)
    try:
        result = soak.run()
    finally:
        soak.server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, Path(args.plot))
    r = result
    print(f"{r['minutes']} min: sent {r['frames_sent_acked']}, committed {r['frames_committed']}, "
          f"received {[s['received'] for s in r['subscribers']]}, lost {r['lost']}, duplicated {r['duplicated']}, "
          f"corrupted {r['corrupted']}; faults {r['faults']}; server RSS max {r['rss_mb']['max']} MB, growth "
          f"within an incarnation <= {r['rss_mb']['max_growth_within_an_incarnation']} MB")
    return 0 if r["lost"] == r["duplicated"] == r["corrupted"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
