"""Bytes on the wire per frame against frames per message (issue 15), on a live server.

A sender that publishes each frame as it comes pays per message what a batch spreads over its
frames: the packet header and CRC, the coder's flush, protobuf's fields. For each edge mode and
each messages size k, the same digits are published with ``Client.publish(encode_at_edge=True,
frames_per_message=k)``, with compact stream frames (codec/FORMAT.md) and without, and the
client's ``PublishResult.sent_bytes`` (protobuf bytes of the data messages) is divided by the
frames the server accepted. Used by benchmarks.streaming (``--wire-sizes``).
"""

from __future__ import annotations

from typing import Any, Sequence

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
                rows.append(row)
    for mode in {r["mode"] for r in rows}:
        mine = {r["frames_per_message"]: r for r in rows if r["mode"] == mode}
        if 256 in mine:
            for r in mine.values():
                r["over_256_bytes"] = r["bytes_per_frame"] - mine[256]["bytes_per_frame"]
    return rows


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{'mode':<10} {'frames/msg':>10} {'B/frame':>9} {'no compact':>11} {'over 256':>9}")
    for r in rows:
        nc = r.get("bytes_per_frame_without_compact")
        over = r.get("over_256_bytes")
        print(f"{r['mode']:<10} {r['frames_per_message']:>10} {r['bytes_per_frame']:>9.2f} "
              f"{'' if nc is None else f'{nc:11.2f}'} {'' if over is None else f'{over:+9.2f}'}")
