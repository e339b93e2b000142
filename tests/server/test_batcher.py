"""The dynamic batcher (server/batcher.py): RAW frames from several publishers become packets of
at most max_frames, coded with the channel's real Codec; producer offsets drop resent frames;
edge packets keep their place; a full queue and a stopped batcher say so."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from _tmpfs import fill, small_tmpfs
from _transport import digits
from latentwire.codec.codec import Codec
from latentwire.server.batcher import Batcher, PacketItem, QueueFull, RawItem, Stopped, StreamState
from latentwire.server.main import _encoder
from latentwire.server.sqlite_store import SqliteStore
from latentwire.server.store import StoreFull


@pytest.fixture()
def codec() -> Codec:
    return Codec.load("default", provider="cpu", threads=1)


def _batcher(tmp_path: Path, codec: Codec, **kw) -> tuple[Batcher, SqliteStore]:
    store = SqliteStore(tmp_path / "c.sqlite3")
    b = Batcher("c", store, _encoder(codec, score=False), codec.model_id, codec.default_quality, **kw)
    return b, store


def _raw(n: int, producer: str = "", offset: int = 0, stream: StreamState | None = None) -> RawItem:
    return RawItem(frames=digits(n), index=np.arange(n), n_total=n, quality=None, producer_id=producer,
                   producer_offset=offset, stream=stream)


def test_frames_from_several_publishers_share_packets_of_at_most_max_frames(tmp_path: Path, codec: Codec) -> None:
    b, store = _batcher(tmp_path, codec, max_frames=100, max_delay_ms=200)
    futures = [b.submit(_raw(60, "a")), b.submit(_raw(60, "b")), b.submit(_raw(30, "c"))]
    commits = [f.result(10) for f in futures]
    b.stop()
    assert [(c.accepted, c.first_seq) for c in commits] == [(60, 0), (60, 60), (30, 120)]
    packets = store.read_from(0, 100)
    assert all(p.count <= 100 for p in packets) and sum(p.count for p in packets) == 150
    decoded = np.concatenate([codec.decode(p.payload) for p in packets])
    assert decoded.shape == (150, 1, 28, 28)


def test_resent_frames_of_a_producer_are_duplicates(tmp_path: Path, codec: Codec) -> None:
    b, store = _batcher(tmp_path, codec, max_delay_ms=1)
    first = b.submit(_raw(10, "cam", 0)).result(10)
    again = b.submit(_raw(15, "cam", 5)).result(10)  # frames 5..9 were committed already
    b.stop()
    assert (first.accepted, again.accepted, again.duplicates) == (10, 10, 5)
    assert store.next_seq == 20 and store.producer_next_offset("cam") == 20


def test_edge_packets_keep_their_place_between_raw_frames(tmp_path: Path, codec: Codec) -> None:
    b, store = _batcher(tmp_path, codec, max_delay_ms=50)
    packet = codec.encode(digits(3), quality=0)
    f1 = b.submit(_raw(4))
    f2 = b.submit(PacketItem(packets=[(packet, 3, 0, 0)], n_total=3))
    f3 = b.submit(_raw(2))
    seqs = [f.result(10).first_seq for f in (f1, f2, f3)]
    b.stop()
    assert seqs == [0, 4, 7]
    assert [p.payload for p in store.read_from(4, 1)] == [packet]


def test_a_full_queue_and_a_stopped_batcher_refuse_with_reasons(tmp_path: Path, codec: Codec) -> None:
    b, _ = _batcher(tmp_path, codec, max_delay_ms=5000, queue_frames=50, max_frames=1000)
    b.submit(_raw(40))
    with pytest.raises(QueueFull, match="queue is full \\(40 of 50 frames waiting\\)"):
        b.submit(_raw(20))
    t0 = time.monotonic()
    b.stop()  # flushes what is queued, without waiting for the 5 s deadline
    assert time.monotonic() - t0 < 4
    with pytest.raises(Stopped, match="shutting down"):
        b.submit(_raw(1))


def test_a_refused_streams_later_messages_wait_for_its_resend(tmp_path: Path, codec: Codec) -> None:
    """A commit refused for a full disk ends its Publish stream at that message, but the stream's next
    message may be queued already. If space returns before the batcher reaches it, committing it
    would move the producer's offset past the refused frames and their resend would be dropped as
    duplicates: it is refused too, and the resend (a new stream) commits both, in order."""
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        store = SqliteStore(disk / "c.sqlite3")
        b = Batcher("c", store, _encoder(codec, score=False), codec.model_id, codec.default_quality, max_delay_ms=1)
        try:
            filler = fill(disk, leave=0)
            old = StreamState()
            with pytest.raises(StoreFull, match="is full"):
                b.submit(_raw(50, "cam", 0, old)).result(10)
            filler.unlink()  # space is back before the stream's next message is taken
            with pytest.raises(StoreFull, match="is full"):
                b.submit(_raw(50, "cam", 50, old)).result(10)
            assert store.next_seq == 0 and store.producer_next_offset("cam") == 0
            new = StreamState()
            resent = [b.submit(_raw(50, "cam", 0, new)), b.submit(_raw(50, "cam", 50, new))]
            assert [(c.accepted, c.duplicates, c.first_seq) for c in (f.result(10) for f in resent)] == [
                (50, 0, 0), (50, 0, 50)]
            assert b.health.outage is None, "the successful commit ended the full spell"
        finally:
            b.stop()
            store.close()
