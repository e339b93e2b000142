"""A thin link for benchmarks: two network namespaces joined by a veth pair, shaped with tbf.

Why namespaces and tbf: the machines this runs on have no netem and no second host, but they do
have network namespaces and the token-bucket filter. A veth pair between a "server side" and a
"receiver side" namespace carries every byte between them through the kernel's real TCP stack;
a tbf qdisc on each end's egress makes that path a link of a chosen rate in both directions
(data one way, ACKs and window updates the other).

Names carry the creating process's pid (``lwlink<pid>s`` / ``lwlink<pid>r``), so concurrent runs
never meet, and a run killed before its cleanup leaves names the next run recognises as stale (the
pid is gone) and deletes. Addresses are a /30 inside these two namespaces only; nothing is routed
anywhere else. Every command that fails raises NetnsUnavailable with the tool's own message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

PREFIX = "lwlink"
SERVER_IF, RECEIVER_IF = "lwsrv", "lwrcv"
MTU_FRAME = 1514  # the largest Ethernet frame the veth carries at MTU 1500: tbf's bucket must hold one
TBF_LATENCY_MS = 100  # tbf's queue holds this much link time...
TBF_MIN_QUEUE = 16384  # ...but at least these bytes: a local TCP sender may hand it a few 1514-byte frames at
# once, and a queue of 2 KB (100 ms at 64 kbit/s) drops them and stalls TCP in retransmission timeouts


class NetnsUnavailable(RuntimeError):
    """Namespaces, veth or tbf cannot be made here (not root, no iproute2, no sch_tbf...)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        raise NetnsUnavailable(f"`ip {' '.join(args)}`: {e}") from e
    if check and r.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {(r.stderr or r.stdout).strip()}")
    return r


def _tc(ns: str, *args: str) -> None:
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        raise NetnsUnavailable(f"`tc {' '.join(args)}`: {e}") from e
    if r.returncode != 0:
        raise NetnsUnavailable(f"`tc {' '.join(args)}` in {ns} failed: {(r.stderr or r.stdout).strip()}")


def tbf_burst_bytes(kbit: float) -> int:
    """The bucket: one full frame plus 4 ms of tokens (rate / HZ at HZ=250), so a fast link is not
    throttled by timer granularity and a slow one lets through little more than one frame at once."""
    return max(MTU_FRAME + 86, int(kbit * 1000 / 8 * 0.004))


def tbf_limit_bytes(kbit: float) -> int:
    return max(int(kbit * 1000 / 8 * TBF_LATENCY_MS / 1000), TBF_MIN_QUEUE) + tbf_burst_bytes(kbit)


def stale_names() -> list[str]:
    """Namespaces an earlier run of this benchmark left behind (its pid no longer runs)."""
    r = _ip("netns", "list", check=False)
    out = []
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name[len(PREFIX):-1]
        if name.startswith(PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            out.append(name)
    return out


@dataclass
class LinkPair:
    """The two namespaces. server_ns holds the server (and the sender); receiver_ns the receivers."""

    server_ns: str
    receiver_ns: str
    server_addr: str
    receiver_addr: str
    kbit: float | None = None
    made: bool = False

    @classmethod
    def create(cls) -> LinkPair:
        if shutil.which("ip") is None:
            raise NetnsUnavailable("iproute2's `ip` is not installed")
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            raise NetnsUnavailable(f"making network namespaces needs root (running as uid {os.geteuid()})")
        for name in stale_names():
            _ip("netns", "del", name, check=False)
        pid = os.getpid()
        subnet = 4 * (pid % 64)  # a /30 in 10.250.0.0/24: only ever seen inside these namespaces
        pair = cls(f"{PREFIX}{pid}s", f"{PREFIX}{pid}r", f"10.250.0.{subnet + 1}", f"10.250.0.{subnet + 2}")
        try:
            pair._make()
            pair._probe()
        except BaseException:
            pair.delete()
            raise
        return pair

    def _make(self) -> None:
        _ip("netns", "add", self.server_ns)
        self.made = True
        _ip("netns", "add", self.receiver_ns)
        _ip("link", "add", SERVER_IF, "netns", self.server_ns, "type", "veth",
            "peer", "name", RECEIVER_IF, "netns", self.receiver_ns)
        for ns, dev, addr in ((self.server_ns, SERVER_IF, self.server_addr),
                              (self.receiver_ns, RECEIVER_IF, self.receiver_addr)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            # one segment per packet, as on a real serial link: no 64 KB GSO super-packets for tbf to split
            _ip("-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1", "gso_max_size", str(MTU_FRAME))
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _probe(self) -> None:
        """What the benchmark needs later, tried now, so a missing piece is a skip and not a crash:
        running a program inside a namespace, and tbf (the sch_tbf module)."""
        for ns in (self.server_ns, self.receiver_ns):
            try:
                r = subprocess.run(self.exec_prefix(ns) + [sys.executable, "-c", "pass"], capture_output=True,
                                   text=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as e:
                raise NetnsUnavailable(f"`ip netns exec {ns} python`: {e}") from e
            if r.returncode != 0:
                raise NetnsUnavailable(f"`ip netns exec {ns} python` failed: {(r.stderr or r.stdout).strip()}")
        self.shape(1000)
        self.shape(None)

    def shape(self, kbit: float | None) -> None:
        """tbf at `kbit` on both ends' egress; None: no qdisc (the veth's own speed)."""
        for ns, dev in ((self.server_ns, SERVER_IF), (self.receiver_ns, RECEIVER_IF)):
            if self.kbit is not None:
                _tc(ns, "qdisc", "del", "dev", dev, "root")
            if kbit is not None:
                _tc(ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{kbit:g}kbit",
                    "burst", str(tbf_burst_bytes(kbit)), "limit", str(tbf_limit_bytes(kbit)))
        self.kbit = kbit

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def tx_bytes(self) -> tuple[int, int]:
        """Bytes each end has sent (Ethernet frames as tbf counts them): (server side, receiver side)."""
        out = []
        for ns, dev in ((self.server_ns, SERVER_IF), (self.receiver_ns, RECEIVER_IF)):
            info = json.loads(_ip("-n", ns, "-s", "-j", "link", "show", "dev", dev).stdout)
            out.append(int(info[0]["stats64"]["tx"]["bytes"]))
        return out[0], out[1]

    def qdisc_stats(self) -> dict[str, dict]:
        """tbf's own counters per end (sent bytes, drops, overlimits) for the report."""
        out = {}
        for ns, dev in ((self.server_ns, SERVER_IF), (self.receiver_ns, RECEIVER_IF)):
            r = subprocess.run(["ip", "netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show", "dev", dev],
                               capture_output=True, text=True, timeout=20)
            try:
                q = json.loads(r.stdout)[0]
                out[dev] = {k: q.get(k) for k in ("kind", "bytes", "packets", "drops", "overlimits", "requeues")}
            except (ValueError, IndexError, KeyError):
                out[dev] = {"error": (r.stderr or r.stdout).strip()}
        return out

    def delete(self) -> None:
        if not self.made:
            return
        for ns in (self.server_ns, self.receiver_ns):
            _ip("netns", "del", ns, check=False)
        self.made = False
