"""Smoke tests of the streaming and memory benchmarks: a few thousand frames through a real server
process and real subscriber processes, so the scripts cannot rot. The long runs stay out of the suite
(BENCHMARKS.md has the commands)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import memory, streaming
from benchmarks.streamkit import zstd_stored


def test_stored_zstd_frame_is_raw_bytes_plus_a_small_header() -> None:
    import zstandard

    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()  # > 2 blocks
    frame = zstd_stored(data)
    assert zstandard.ZstdDecompressor().decompress(frame) == data
    assert len(frame) - len(data) == 9 + 3 * 3  # magic+descriptor+size, one 3-byte header per block


def test_streaming_smoke(tmp_path: Path) -> None:
    out = tmp_path / "streaming.json"
    code = streaming.main(["--subscribers", "1,2", "--frames", "2048", "--batch", "256", "--rate", "500",
                           "--rate-frames", "200", "--rate-batch", "4", "--modes", "edge-q0,server-q0,raw",
                           "--repeat", "1", "--timeout", "30", "--wire-sizes", "1,256", "--wire-frames", "256",
                           "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    # wire bytes per frame: only edge modes; one frame per message costs more than 256, and compact
    # stream frames save the 20 header bytes (plus the implicit index and offset fields)
    wire = {r["frames_per_message"]: r for r in report["wire_bytes"]}
    assert {r["mode"] for r in report["wire_bytes"]} == {"edge-q0"} and set(wire) == {1, 256}
    assert wire[256]["bytes_per_frame"] < wire[1]["bytes_per_frame"] < wire[1]["bytes_per_frame_without_compact"] - 20
    assert wire[1]["over_256_bytes"] == wire[1]["bytes_per_frame"] - wire[256]["bytes_per_frame"]
    # subscribers of one-frame packets: compact records save the header and the record's fields
    sub = wire[1]["subscriber_bytes_per_frame"]
    assert wire[256]["subscriber_bytes_per_frame"] < sub < wire[1]["subscriber_bytes_per_frame_without_compact"] - 20
    runs = report["runs"]
    assert {r["store"] for r in runs} == {"sqlite"}
    assert {(r["subscribers"], r["mode"], r["phase"]) for r in runs} == {
        (n, m, ph) for n in (1, 2) for m in ("edge-q0", "server-q0", "raw") for ph in ("saturation", "rate")}
    for r in runs:
        assert r["errors"] == [] and r["lost"] == 0 and r["duplicated"] == 0 and r["bad_shape"] == 0, r
        assert r["delivered"] == r["frames"] * r["subscribers"]
        assert r["frames_per_s_per_subscriber"]["median"] > 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["server_rss_mb"]["max"] > 10
        b = r["bytes_per_frame"]
        assert b["proto"] >= b["packet"] > 0
        if b["socket"] is not None:  # `ss` present: the kernel's TCP counters
            assert b["socket"] >= b["packet"]
    sat = {(r["subscribers"], r["mode"]): r for r in runs if r["phase"] == "saturation"}
    # the raw baseline really is raw: 784 B per digit plus the packet header spread over 256 frames
    assert 784 <= sat[(1, "raw")]["bytes_per_frame"]["packet"] < 785
    assert sat[(1, "edge-q0")]["bytes_per_frame"]["packet"] < 20
    assert {"summary", "machine", "versions", "server_commands", "settings"} <= set(report)
    assert any(row["mode"] == "edge-q0" and row.get("fps_vs_raw") for row in report["summary"])


def test_memory_smoke(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    code = memory.main(["--frames", "3000", "--batch", "64", "--interval", "0.1", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["delivered"] == 3000 and report["lost"] == 0 and report["duplicated"] == 0
    for name in ("server", "sender", "receiver"):
        g = report["rss"][name]
        assert g["end_mb"] > 10 and g["max_mb"] >= g["end_mb"] and "growth_mb" in g and "met" in g
    s = report["series"]
    assert len(s["t"]) == len(s["rss_server"]) >= 2 and s["delivered"][-1] == 3000
    assert out.with_suffix(".png").stat().st_size > 1000


def test_streaming_compares_stores_in_one_run(tmp_path: Path, redis_server) -> None:
    """The store setups run interleaved in one run, so the Redis ratio is against SQLite measured
    alongside it; two replicas share the Redis and split the subscribers."""
    out = tmp_path / "stores.json"
    code = streaming.main(["--subscribers", "2", "--frames", "1024", "--batch", "256", "--rate", "0",
                           "--modes", "edge-q0", "--repeat", "1", "--timeout", "30", "--stores", "sqlite,redis-x2",
                           "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert {r["store"] for r in report["runs"]} == {"sqlite", "redis-x2"}
    row = next(r for r in report["summary"] if r["store"] == "redis-x2")
    assert row["fps_vs_sqlite"] > 0 and row["lost"] == 0 and row["duplicated"] == 0
    assert "--store" in report["server_commands"]["redis-x2"]
