"""The embedded channel store (SQLite): seqs, producer offsets, retention, kill -9 durability.
The behaviour both stores share is in test_store_contract.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from latentwire.server.sqlite_store import SqliteStore
from latentwire.server.store import PendingPacket, RetentionPolicy

MID = "ab" * 32


def _pkt(n: int, size: int = 100, tag: int = 0) -> PendingPacket:
    return PendingPacket(count=n, model_id=MID, quality=1, payload=bytes([tag % 256]) * size)


def test_log_assigns_consecutive_seqs_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    log = SqliteStore(path)
    stored = log.append([_pkt(3, tag=1), _pkt(5, tag=2)], {"prod": 8})
    assert [(s.first_seq, s.count) for s in stored] == [(0, 3), (3, 5)]
    assert log.next_seq == 8 and log.first_seq == 0
    log.append([_pkt(2, tag=3)])
    log.close()

    again = SqliteStore(path)
    assert again.next_seq == 10, "a restarted server must continue the sequence"
    assert again.producer_next_offset("prod") == 8, "producer high-water marks persist with the packets"
    # from the middle of a packet: the packet holding seq 4 comes first
    got = again.read_from(4)
    assert [(p.first_seq, p.count, p.payload[:1]) for p in got] == [(3, 5, b"\x02"), (8, 2, b"\x03")]
    assert again.read_from(10) == []


def test_trim_by_size_and_age_reports_and_keeps_seq(tmp_path: Path) -> None:
    log = SqliteStore(tmp_path / "c.sqlite3", RetentionPolicy(max_bytes=250, max_age_s=60))
    now = time.time()
    log.append([_pkt(1)], ts=now - 120)  # too old
    log.append([_pkt(1), _pkt(1), _pkt(1)], ts=now)
    reports = log.trim(now=now)
    reasons = [r.reason.split()[0] for r in reports]
    assert reasons == ["age", "size"], reports
    assert sum(r.frames for r in reports) == 2
    assert log.size_bytes <= 250 and log.first_seq == 2 and log.next_seq == 4
    assert [p.first_seq for p in log.read_from(0)] == [2, 3]
    log.append([_pkt(1)])
    assert log.next_seq == 5


def test_trimmed_to_empty_log_still_continues_seq(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    log = SqliteStore(path, RetentionPolicy(max_bytes=0, max_age_s=1))
    log.append([_pkt(7)], ts=time.time() - 10)
    assert log.trim()[0].frames == 7
    log.close()
    again = SqliteStore(path)
    assert again.next_seq == 7 and again.first_seq == 7


def test_committed_packets_survive_kill_9(tmp_path: Path) -> None:
    """synchronous=NORMAL: a killed process loses nothing it committed."""
    path = tmp_path / "c.sqlite3"
    script = textwrap.dedent(f"""
        import sys, time
        from latentwire.server.sqlite_store import SqliteStore
        from latentwire.server.store import PendingPacket
        log = SqliteStore({str(path)!r})
        for i in range(200):
            log.append([PendingPacket(3, {MID!r}, 0, b"x" * 64)], {{"p": 3 * (i + 1)}})
        print("committed", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "committed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = SqliteStore(path)
    assert log.next_seq == 600
    assert log.producer_next_offset("p") == 600
    assert sum(p.count for p in log.read_from(0, limit=1000)) == 600
