"""Smoke test of the thin-link benchmark: one link rate (1 Mbit/s, tbf both ways between two real
network namespaces), latentwire edge-q2 and zstd per frame, a couple of seconds each, through a real
server and real sockets. Where namespaces cannot be made the benchmark must say so and exit 0; the
test then skips with the benchmark's own words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from benchmarks.streamkit import REPO, Mode, chunks, make_packet
from benchmarks.tcpframes import HEADER

ROW_KEYS = {"codec", "setting", "link_kbit", "frames_per_s", "bytes_per_frame", "p50_ms", "p99_ms"}
KBIT = 1000.0


def _run(args: list[str], *prefix: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "benchmarks.link", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _digits() -> np.ndarray:
    with np.load(REPO / "codec" / "assets" / "mnist_test_sample.npz") as z:
        return z["samples"]


def _zstd_sent_per_frame(n: int) -> float:
    """What the baseline's sender writes for n digits: [u32 length][zstd-19 of the digit] each."""
    cctx, digits = zstandard.ZstdCompressor(level=19), _digits()
    pool = [len(cctx.compress(d.tobytes())) + HEADER.size for d in digits]
    return sum(pool[j % len(pool)] for j in range(n)) / n


def _latentwire_sent_per_frame(n: int, batch: int, quality: int) -> float:
    """The packets streamkit's sender publishes at saturation: a pool of whole packets, cycled."""
    from latentwire.codec.codec import Codec, default_bundle_path

    codec, digits, mode = Codec.load(default_bundle_path(), provider="cpu", threads=1), _digits(), Mode.parse(
        f"edge-q{quality}")
    whole = (len(digits) // batch) * batch or batch
    pool = [len(make_packet(codec, mode, c)) for c in chunks(digits, batch, whole)]
    sizes = [pool[j % len(pool)] if c.shape[0] == batch else len(make_packet(codec, mode, c))
             for j, c in enumerate(chunks(digits, batch, n))]
    return sum(sizes) / n


def test_link_benchmark_at_one_rate(tmp_path: Path) -> None:
    out = tmp_path / "link.json"
    r = _run(["--rates", f"{KBIT:g}", "--modes", "edge-q2", "--baselines", "zstd-frame", "--seconds", "1.5",
              "--latency-seconds", "1", "--no-slow-check", "--out", str(out)])
    skipped = [line for line in r.stdout.splitlines() if "SKIPPED" in line]
    if skipped:
        assert r.returncode == 0, r.stdout + r.stderr
        assert not out.exists()
        pytest.skip(skipped[0])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"machine", "git_commit", "command", "targets", "rows"} <= set(report)
    assert "--rates 1000" in report["command"] and report["machine"]["cpu_count"] >= 1
    rows = {(row["codec"], row["setting"]): row for row in report["rows"]}
    assert set(rows) == {("latentwire", "edge-q2"), ("zstd", "level 19, per frame")}
    link_bytes_per_s = KBIT * 1000 / 8
    for row in rows.values():
        assert ROW_KEYS <= set(row) and row["link_kbit"] == KBIT
        assert row["errors"] == [] and row["lost"] == 0 and row["duplicated"] == 0 and row["bad_shape"] == 0, row
        assert row["delivered"] == row["frames"] > 0
        assert row["frames_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        # the link is really 1 Mbit/s: what crossed it per second stays within tbf's rate (its 4 ms
        # bucket and timer slack allowed), and the link carried at least the payload
        assert row["frames_per_s"] * row["bytes_per_frame"] <= 1.1 * link_bytes_per_s, row
        assert row["link_bytes_per_frame"] >= row["bytes_per_frame"] >= row["payload_bytes_per_frame"] > 0
    zstd = rows[("zstd", "level 19, per frame")]
    assert zstd["bytes_per_frame"] == pytest.approx(_zstd_sent_per_frame(zstd["frames"]), rel=1e-12)
    lw = rows[("latentwire", "edge-q2")]
    assert lw["payload_bytes_per_frame"] == pytest.approx(
        _latentwire_sent_per_frame(lw["frames"], lw["batch"], 2), rel=1e-12)
    # HTTP/2, gRPC and the Subscribe records around the packets: a few percent at these batches
    assert lw["bytes_per_frame"] < 1.2 * lw["payload_bytes_per_frame"]
    assert lw["psnr_db"] > 20 and zstd["lossless"]
    assert any("latentwire edge-q2 at 1 Mbit/s" in t["target"] and t["pass"] in (True, False)
               for t in report["targets"])
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the benchmark as an unprivileged user")
def test_link_benchmark_says_why_it_skips_and_exits_0(tmp_path: Path) -> None:
    """Run as nobody, namespaces cannot be made: one line says why, exit 0, no result written."""
    out = tmp_path / "link.json"
    tmp_path.chmod(0o777)
    r = _run(["--rates", "1000", "--out", str(out)], "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SKIPPED - network namespaces cannot be made here: making network namespaces needs root" in r.stdout
    assert not out.exists()
