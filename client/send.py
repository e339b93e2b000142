"""`latentwire send`: publish frames from files (or a watched folder) to a channel, exactly once.

Sources: .npy/.npz arrays, IDX files (.gz or plain), MNIST folders, anything
latentwire.codec.sources.load_source reads; `--watch DIR` keeps polling DIR for new files (taken
in name order: give them sortable names such as timestamps). `--rate` paces the replay
(frames/s). Arrays whose samples have the channel's size but another layout ((N,28,28) for a
(1,28,28) channel) are reshaped; a file holding one sample is one frame.

Exactly once across restarts: the state file holds a producer id, the producer offset of the
next unacknowledged frame and how many frames of each file were acknowledged. It is rewritten
atomically after every acknowledged message; on restart the daemon resumes after the last
acknowledged frame with the same producer id and offsets, and the server drops any frame it had
committed but not yet acknowledged when the daemon died. So nothing is lost or repeated.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .client import Client, PublishAck
from .state import load_state, save_state

log = logging.getLogger("latentwire.send")

_SUFFIXES = (".npy", ".npz", ".gz", ".idx", "-ubyte")


def _is_source_file(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and not n.startswith(".") and (n.endswith(_SUFFIXES) or "-idx" in n) and "labels" not in n


def load_frames(path: Path, sample_shape: tuple[int | None, ...]) -> np.ndarray:
    """Raw frames (N, *sample_shape) of one file."""
    from latentwire.codec.sources import load_source

    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        arr = load_source(path).samples
    arr = np.asarray(arr)
    fixed = all(d is not None for d in sample_shape)
    if fixed and tuple(arr.shape) == tuple(sample_shape):
        return arr[None]
    if fixed and arr.ndim >= 1 and tuple(arr.shape[1:]) != tuple(sample_shape):
        per = int(np.prod(sample_shape))  # type: ignore[arg-type]
        if arr.size % per == 0 and int(np.prod(arr.shape[1:])) == per:
            return arr.reshape((arr.shape[0], *sample_shape))  # type: ignore[arg-type]
    return arr


@dataclass
class _Segment:
    key: str
    start_in_call: int  # index of its first frame in the current publish call
    file_start: int  # frame index in the file where it starts
    n: int


class Sender:
    def __init__(self, client: Client, channel: str, state_path: Path, *, quality: int | None = None,
                 encode_at_edge: bool = False, rate: float | None = None, frames_per_message: int = 256,
                 limit: int | None = None):
        self.client, self.channel, self.state_path = client, channel, state_path
        self.quality, self.edge, self.rate, self.fpm, self.limit = quality, encode_at_edge, rate, frames_per_message, limit
        self.state = load_state(state_path) or {}
        self.state.setdefault("producer_id", uuid.uuid4().hex)
        self.state.setdefault("next_offset", 0)
        self.state.setdefault("files", {})
        self.state.setdefault("sent", 0)
        self.stop = threading.Event()
        self.info = client.channel(channel)
        self._sizes: dict[str, int] = {}

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
        """Publish every not-yet-acknowledged frame of `files`; returns frames acknowledged."""
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
                for s in range(start, arr.shape[0], self.fpm):
                    if self.stop.is_set() or (budget is not None and given >= budget):
                        return
                    chunk = arr[s : s + self.fpm]
                    if budget is not None:
                        chunk = chunk[: budget - given]
                    if self.rate:
                        wait = t0 + (given + chunk.shape[0]) / self.rate - time.monotonic()
                        if wait > 0 and self.stop.wait(wait):
                            return
                    segments.append(_Segment(key, given, s, int(chunk.shape[0])))
                    given += int(chunk.shape[0])
                    yield chunk

        acked = 0

        def on_ack(a: PublishAck) -> None:
            nonlocal acked
            end = a.first_frame + a.frames
            for seg in segments:
                if seg.start_in_call < end and seg.start_in_call + seg.n > a.first_frame:
                    done = min(end, seg.start_in_call + seg.n) - seg.start_in_call
                    self.state["files"][seg.key] = max(self.state["files"].get(seg.key, 0), seg.file_start + done)
            while segments and segments[0].start_in_call + segments[0].n <= end:
                segments.pop(0)
            self.state["next_offset"] += a.frames
            self.state["sent"] += a.frames
            acked += a.frames
            for_errors = a.rejected
            if for_errors:
                log.warning("message %d: %d frame(s) rejected by the server", a.message_index, a.rejected)
            save_state(self.state_path, self.state)

        result = self.client.publish(
            self.channel, frames(), quality=self.quality, encode_at_edge=self.edge, frames_per_message=self.fpm,
            producer_id=self.state["producer_id"], start_offset=self.state["next_offset"], on_ack=on_ack,
        )
        for e in result.errors[:20]:
            log.warning("rejected frame %d (%s): %s", e.frame_index, e.code.name, e.message)
        if result.messages:
            log.info("sent %d frames (%d accepted, %d rejected, %d already committed) in %.2fs; %d raw bytes -> "
                     "%d on the wire", acked, result.accepted, result.rejected, result.duplicates,
                     time.monotonic() - t0, result.raw_bytes, result.sent_bytes)
        return acked


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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("send", help="publish frames from files, arrays or a dataset to a channel",
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


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", help="file holding the bearer token (never put tokens on a command line)")
    p.add_argument("--tls-ca", help="root certificate (PEM) to verify the server; implies TLS")
    p.add_argument("--tls", action="store_true", help="TLS with the system's roots")
    p.add_argument("--cache-dir", help="bundle cache (default ~/.cache/latentwire/bundles or $LATENTWIRE_CACHE)")
    p.add_argument("--log-level", default="INFO")


def make_client(args: argparse.Namespace) -> Client:
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    tls: Any = args.tls_ca or (True if args.tls else None)
    return Client(args.target, token=token, tls=tls, cache_dir=args.cache_dir)


def install_stop(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        log.info("received %s: finishing the message in flight and exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.sources and not args.watch:
        print("latentwire send: give source files/folders or --watch DIR", file=sys.stderr)
        return 2
    import grpc

    client = make_client(args)
    try:
        sender = Sender(client, args.channel, Path(args.state), quality=args.quality, encode_at_edge=args.edge,
                        rate=args.rate, frames_per_message=args.frames_per_message, limit=args.limit)
        install_stop(sender.stop)
        files = _expand(args.sources)
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
    except grpc.RpcError as e:
        print(f"latentwire send: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    log.info("stopped after %d frames in total; position saved to %s", sender.state["sent"], args.state)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentwire send", description=__doc__.split("\n\n")[0])
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
