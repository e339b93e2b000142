"""Bytes on the wire per frame against frames per message (issue 15), on a live server.

A sender that publishes each frame as it comes pays per message what a batch spreads over its
frames: the packet header and CRC, the coder's flush, protobuf's fields. For each edge mode and
each messages size k, the same digits are published with ``Client.publish(encode_at_edge=True,
frames_per_message=k)``, with compact stream frames (codec/FORMAT.md) and without, and the
client's ``PublishResult.sent_bytes`` (protobuf bytes of the data messages) is divided by the
frames the server accepted. The subscriber side of the same packets: a subscription from the
publish's first seq, with compact frames asked for and without, its Subscribe responses'
protobuf bytes (``FrameBatch.wire_bytes``) per frame delivered. Used by benchmarks.streaming
(``--wire-sizes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from latentwire.client import Client


def measure(target: str, modes: Sequence[Any], sizes: Sequence[int], frames: np.ndarray) -> list[dict[str, Any]]:
    """modes: benchmarks.streamkit.Mode of kind "edge" (others are skipped)."""
    rows = []
    with Client(target) as client:
        for mode in modes:
            if mode.kind != "edge":
                continue
            for k in sizes:
                row: dict[str, Any] = {"mode": mode.name, "quality": mode.quality, "frames_per_message": k}
                for compact in (True, False) if k == 1 else (True,):
                    r = client.publish(mode.channel, frames, mode.quality, True, frames_per_message=k, compact=compact)
                    if r.accepted != len(frames) or r.errors:
                        raise RuntimeError(f"wire bytes, {mode.name} k={k}: {r.accepted}/{len(frames)} accepted, "
                                           f"errors {r.errors[:3]}")
                    row["bytes_per_frame" if compact else "bytes_per_frame_without_compact"] = r.sent_bytes / r.accepted
                    if compact:
                        for sub_compact in (True, False):
                            row["subscriber_bytes_per_frame" if sub_compact else
                                "subscriber_bytes_per_frame_without_compact"] = _subscriber_bytes(
                                    client, mode.channel, r.first_seq, r.accepted, sub_compact)
                rows.append(row)
    for name in {row["mode"] for row in rows}:
        mine = {row["frames_per_message"]: row for row in rows if row["mode"] == name}
        if 256 in mine:
            for row in mine.values():
                row["over_256_bytes"] = row["bytes_per_frame"] - mine[256]["bytes_per_frame"]
    return rows


def _subscriber_bytes(client: Client, channel: str, first_seq: int | None, frames: int, compact: bool) -> float:
    """Subscribe response bytes per frame for the ``frames`` frames from ``first_seq``."""
    wire, got = 0.0, 0
    for batch in client.subscribe_batches(channel, first_seq, idle_timeout=1.0, compact=compact):
        take = min(len(batch.frames), frames - got)
        wire += batch.wire_bytes if take == len(batch.frames) else batch.wire_bytes * take / len(batch.frames)
        got += take
        if got >= frames:
            break
    if got != frames:
        raise RuntimeError(f"wire bytes: subscribed {got} of {frames} frames from seq {first_seq} on {channel}")
    return wire / frames


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{'mode':<10} {'frames/msg':>10} {'B/frame':>9} {'no compact':>11} {'over 256':>9} "
          f"{'sub B/frame':>12} {'sub no compact':>15}")
    for r in rows:
        nc = r.get("bytes_per_frame_without_compact")
        over = r.get("over_256_bytes")
        print(f"{r['mode']:<10} {r['frames_per_message']:>10} {r['bytes_per_frame']:>9.2f} "
              f"{'' if nc is None else f'{nc:11.2f}':>11} {'' if over is None else f'{over:+9.2f}':>9} "
              f"{r['subscriber_bytes_per_frame']:>12.2f} {r['subscriber_bytes_per_frame_without_compact']:>15.2f}")
