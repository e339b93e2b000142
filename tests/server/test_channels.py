"""Channels (server/channels.py): the shared in-memory tail is bounded and contiguous, reads come
from it or from the store, and waiters wake on every commit the store reports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from latentwire.codec.codec import Codec
from latentwire.server.channels import Channel, ModelEntry
from latentwire.server.sqlite_store import SqliteStore
from latentwire.server.store import PendingPacket, StoredPacket


def _channel(tmp_path: Path, **kw) -> tuple[Channel, SqliteStore]:
    store = SqliteStore(tmp_path / "c.sqlite3")
    model = ModelEntry.from_codec(Codec.load("default", provider="cpu", threads=1))
    return Channel("c", model, store, None, **kw), store


def test_model_entry_reports_the_bundle_files(tmp_path: Path) -> None:
    ch, _ = _channel(tmp_path)
    names = [f.name for f in ch.model.files]
    assert names[0] == "manifest.json" and {"encoder.onnx", "decoder.onnx", "entropy.json"} <= set(names)
    assert ch.model.size == sum(f.size for f in ch.model.files) and ch.model.manifest.family == "dense"


def test_tail_is_bounded_by_packets_and_bytes_and_reads_fall_back_to_the_store(tmp_path: Path) -> None:
    ch, store = _channel(tmp_path, tail_packets=3, tail_bytes=250)
    for i in range(6):
        store.append([PendingPacket(2, "m", 0, bytes([i]) * 100)])
    assert ch.next_seq == 12 and ch.tail_bytes <= 250
    assert [p.first_seq for p in ch.read_from(10, 10)] == [10]  # from the tail
    assert [p.first_seq for p in ch.read_from(0, 2)] == [0, 2]  # older than the tail: from the store
    assert [p.first_seq for p in ch.read_from(5, 10)] == [4, 6, 8, 10]  # the packet holding 5 first


def test_a_gap_empties_the_tail_instead_of_serving_around_it(tmp_path: Path) -> None:
    ch, _ = _channel(tmp_path)
    ch.on_commit([StoredPacket(0, 2, 0.0, "m", 0, b"a")])
    ch.on_commit([StoredPacket(5, 1, 0.0, "m", 0, b"b")])  # 2..4 never reached this replica's tail
    assert ch.next_seq == 6 and ch.tail_bytes == 1
    ch.on_commit([StoredPacket(5, 1, 0.0, "m", 0, b"b")])  # seen already: ignored
    assert ch.tail_bytes == 1


def test_waiters_wake_on_a_commit_and_on_close(tmp_path: Path) -> None:
    ch, store = _channel(tmp_path)
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(ch.wait_for(0, 5.0)))
    t.start()
    time.sleep(0.1)
    store.append([PendingPacket(1, "m", 0, b"x")])
    t.join(5)
    assert woke == [True]
    t = threading.Thread(target=lambda: woke.append(ch.wait_for(1, 5.0)))
    t.start()
    time.sleep(0.1)
    ch.close()
    t.join(5)
    assert woke == [True, False] and ch.closed
