"""`latentwire send`: publish frames from files (or a watched folder) to a channel, exactly once.

Sources: .npy/.npz arrays, IDX files (.gz or plain), MNIST folders, anything
latentwire.codec.sources.load_source reads; `--watch DIR` keeps polling DIR for new files (taken
in name order: give them sortable names such as timestamps). `--rate` paces the replay
(frames/s). Arrays whose samples have the channel's size but another layout ((N,28,28) for a
(1,28,28) channel) are reshaped; a file holding one sample is one frame.

Exactly once across restarts: the state file holds a producer id, the producer offset of the
next unsent frame and, per file, how many frames from its start the server accepted (plus any
accepted beyond a refused one). It is rewritten atomically after every acknowledged message; on
restart the daemon resumes after the last accepted frame with the same producer id and offsets,
and the server drops any frame it had committed but not yet acknowledged when the daemon died.
So nothing is lost or repeated.

The daemon tells the truth: a missing or unreadable input, an unreachable server, or frames the
server refused end it with a one-line error and a non-zero exit. Its position never moves past
a refused frame: it stops there, so the same command sends the frame again once it is fixed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentwire.codec.errors import InputError

from .client import Client
from .daemon import EXIT_FAILED, EXIT_USAGE, add_connection_args, install_stop, make_client, one_line, setup_logging
from .state import load_state, save_state
from .types import PublishAck

log = logging.getLogger("latentwire.send")

_SUFFIXES = (".npy", ".npz", ".gz", ".idx", "-ubyte")


def _is_source_file(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and not n.startswith(".") and (n.endswith(_SUFFIXES) or "-idx" in n) and "labels" not in n


def load_frames(path: Path, sample_shape: tuple[int | None, ...]) -> np.ndarray:
    """Raw frames (N, *sample_shape) of one file; InputError naming the file when it cannot be read."""
    from latentwire.codec.sources import load_source

    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = load_source(path).samples
    except InputError as e:
        raise InputError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from e
    except (OSError, ValueError, EOFError) as e:  # truncated .gz, pickled or non-array .npy, ...
        raise InputError(f"{path}: cannot read frames from it ({type(e).__name__}: {e})") from e
    arr = np.asarray(arr)
    if arr.dtype == object or arr.ndim == 0:
        raise InputError(f"{path}: holds {arr.dtype} data of shape {arr.shape}, not an array of frames")
    dims = [d for d in sample_shape if d is not None]
    fixed = len(dims) == len(sample_shape)
    if fixed and tuple(arr.shape) == tuple(dims):
        return arr[None]
    if fixed and arr.ndim >= 1 and tuple(arr.shape[1:]) != tuple(dims):
        per = int(np.prod(dims))
        if arr.size % per == 0 and int(np.prod(arr.shape[1:])) == per:
            return arr.reshape((arr.shape[0], *dims))
    return arr


@dataclass
class _Segment:
    key: str
    start_in_call: int  # index of its first frame in the current publish call
    file_indices: np.ndarray  # frame index in the file of each of its frames

    @property
    def n(self) -> int:
        return int(self.file_indices.size)


@dataclass(frozen=True)
class Refusal:
    """A frame the server refused: the file, the frame's index in it, and why."""

    key: str
    frame: int
    message: str


class Sender:
    def __init__(self, client: Client, channel: str, state_path: Path, *, quality: int | None = None,
                 encode_at_edge: bool = False, rate: float | None = None, frames_per_message: int = 256,
                 limit: int | None = None):
        self.client, self.channel, self.state_path = client, channel, state_path
        self.quality, self.edge, self.rate = quality, encode_at_edge, rate
        self.fpm, self.limit = frames_per_message, limit
        self.state = load_state(state_path) or {}
        self.state.setdefault("producer_id", uuid.uuid4().hex)
        self.state.setdefault("next_offset", 0)
        self.state.setdefault("files", {})
        self.state.setdefault("ahead", {})  # per file: frames accepted beyond its first refused one
        self.state.setdefault("sent", 0)
        self.stop = threading.Event()
        self.info = client.channel(channel)
        self._sizes: dict[str, int] = {}
        self.refused: list[Refusal] = []

    def pending_files(self, paths: Sequence[Path]) -> list[Path]:
        out = []
        for p in paths:
            key = str(p.resolve())
            done = self.state["files"].get(key, 0)
            if key in self._sizes and done >= self._sizes[key]:
                continue
            out.append(p)
        return out

    def send_round(self, files: Sequence[Path]) -> int:
        """Publish every frame of `files` the server has not accepted yet; returns frames accepted
        (or found already committed). Stops at the first refused frame (see self.refused)."""
        segments: list[_Segment] = []
        t0 = time.monotonic()
        budget = None if self.limit is None else max(0, self.limit - self.state["sent"])

        def frames() -> Iterator[np.ndarray]:
            given = 0
            for p in files:
                key = str(p.resolve())
                arr = load_frames(p, self.info.sample_shape)
                self._sizes[key] = int(arr.shape[0])
                start = self.state["files"].get(key, 0)
                todo = np.arange(start, arr.shape[0])
                ahead = self.state["ahead"].get(key)
                if ahead:
                    todo = np.setdiff1d(todo, np.asarray(ahead, dtype=np.int64))
                for s in range(0, todo.size, self.fpm):
                    if self.stop.is_set() or (budget is not None and given >= budget):
                        return
                    idx = todo[s : s + self.fpm]
                    if budget is not None:
                        idx = idx[: budget - given]
                    if self.rate:
                        wait = t0 + (given + idx.size) / self.rate - time.monotonic()
                        if wait > 0 and self.stop.wait(wait):
                            return
                    segments.append(_Segment(key, given, idx))
                    given += int(idx.size)
                    yield arr[idx] if ahead else arr[int(idx[0]) : int(idx[-1]) + 1]

        acked = 0

        def on_ack(a: PublishAck) -> None:
            nonlocal acked
            end = a.first_frame + a.frames
            refused = set(a.rejected_frames)
            messages = {e.frame_index: e.message for e in a.errors}
            whole = a.errors[0].message if a.errors else "refused"
            for seg in segments:
                lo, hi = max(seg.start_in_call, a.first_frame), min(seg.start_in_call + seg.n, end)
                for call_index in range(lo, hi):
                    frame = int(seg.file_indices[call_index - seg.start_in_call])
                    if call_index in refused:
                        self.refused.append(Refusal(seg.key, frame, messages.get(call_index, whole)))
                    else:
                        self._accepted(seg.key, frame)
            while segments and segments[0].start_in_call + segments[0].n <= end:
                segments.pop(0)
            self.state["next_offset"] += a.frames
            done = a.frames - len(refused)
            self.state["sent"] += done
            acked += done
            if refused:
                log.warning("message %d: %d frame(s) refused by the server; stopping there", a.message_index,
                            len(refused))
                self.stop.set()  # the position must not move past them: send nothing more
            save_state(self.state_path, self.state)

        result = self.client.publish(
            self.channel, frames(), quality=self.quality, encode_at_edge=self.edge, frames_per_message=self.fpm,
            producer_id=self.state["producer_id"], start_offset=self.state["next_offset"], on_ack=on_ack,
        )
        if result.messages:
            log.info("sent %d frames (%d accepted, %d refused, %d already committed) in %.2fs; %d raw bytes -> "
                     "%d on the wire", acked, result.accepted, result.rejected, result.duplicates,
                     time.monotonic() - t0, result.raw_bytes, result.sent_bytes)
        return acked

    def _accepted(self, key: str, frame: int) -> None:
        """Record one accepted frame: the file's position moves only over a gap-free prefix."""
        pos = self.state["files"].get(key, 0)
        ahead = set(self.state["ahead"].get(key, []))
        if frame == pos:
            pos += 1
            while pos in ahead:
                ahead.discard(pos)
                pos += 1
        elif frame > pos:
            ahead.add(frame)
        self.state["files"][key] = pos
        if ahead:
            self.state["ahead"][key] = sorted(ahead)
        else:
            self.state["ahead"].pop(key, None)


def _expand(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_dir():
            try:
                from latentwire.codec.sources import detect_kind

                if detect_kind(p) == "mnist":
                    out.append(p)
                    continue
            except Exception:  # noqa: BLE001 - not a recognizable folder: list its files
                pass
            out.extend(sorted(q for q in p.iterdir() if _is_source_file(q)))
        else:
            out.append(p)
    return out


def add_parser(subparsers: Any, name: str = "send") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="publish frames from files, arrays or a dataset to a channel",
                              description=__doc__.split("\n\n")[0])
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="*", help=".npy/.npz/IDX files or folders, sent in the order given")
    p.add_argument("--target", required=True, help="server host:port")
    p.add_argument("--channel", required=True)
    p.add_argument("--state", required=True, help="position file (created if missing)")
    p.add_argument("--watch", help="poll this folder for new files until stopped (SIGTERM)")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between folder polls (--watch)")
    p.add_argument("--rate", type=float, help="frames per second (default: as fast as the server takes them)")
    p.add_argument("--limit", type=int, help="send at most this many frames in total")
    p.add_argument("--quality", type=int, help="quality index (default: the channel's)")
    p.add_argument("--edge", action="store_true", help="encode here and send packets (needs the bundle locally)")
    p.add_argument("--frames-per-message", type=int, default=256)
    add_connection_args(p)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    if not args.sources and not args.watch:
        print("latentwire send: give source files/folders or --watch DIR", file=sys.stderr)
        return EXIT_USAGE
    return one_line("send", lambda: _send(args))


def _send(args: argparse.Namespace) -> int:
    files = _expand(args.sources)
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise InputError(
            f"{missing[0]}: no such file or folder" + (f" (and {len(missing) - 1} more)" if missing[1:] else "")
        )
    if args.watch and not Path(args.watch).is_dir():
        raise InputError(f"--watch {args.watch}: not a folder")
    client = make_client(args, log)
    try:
        sender = Sender(client, args.channel, Path(args.state), quality=args.quality, encode_at_edge=args.edge,
                        rate=args.rate, frames_per_message=args.frames_per_message, limit=args.limit)
        install_stop(sender.stop, log)
        if files:
            sender.send_round(sender.pending_files(files))
        if args.watch:
            watch = Path(args.watch)
            while not sender.stop.is_set() and (args.limit is None or sender.state["sent"] < args.limit):
                new = sender.pending_files(_expand([str(watch)]))
                if new:
                    sender.send_round(new)
                else:
                    sender.stop.wait(args.poll)
    finally:
        client.close()
    log.info("stopped after %d frames in total; position saved to %s", sender.state["sent"], args.state)
    if sender.refused:
        first = sender.refused[0]
        print(f"latentwire send: the server refused {len(sender.refused)} frame(s); first: frame {first.frame} of "
              f"{first.key}: {first.message} (the position stops there: fix the input and run again)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentwire send", description=__doc__.split("\n\n")[0])
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
