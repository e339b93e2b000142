"""`latentwire receive`: subscribe to a channel, decode locally, write every frame exactly once.

Sinks: a folder of PNG images or .npy files (one file per frame, named by its zero-padded seq,
written atomically), or a stream of .npy records on stdout (`--stdout`, `np.load` them one after
another). The state file holds the next seq to write and is rewritten atomically after each
packet's frames are written, with the channel's epoch; on restart the daemon resubscribes from
there, and a channel whose store was reset since (another epoch) ends it with one line and exit 1
instead of frames of another incarnation under the saved seqs. Folder sinks are
exactly-once: a frame written just before a kill is rewritten under the same name. The stdout
sink is at-least-once across a kill -9 (a pipe cannot take back bytes).

The log says which path frames took: every packet that arrived through the lossless fallback
(frames the server found anomalous) gets a line with its seqs and anomaly scores, and the
progress lines count frames per path (latent / residual / lossless).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .client import Client
from .daemon import add_connection_args, install_stop, make_client, one_line, setup_logging
from .errors import ChannelReset
from .state import atomic_write_bytes, load_state, save_state

log = logging.getLogger("latentwire.receive")


def frame_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"frames of shape {frame.shape} and dtype {frame.dtype} are not images: use --format npy")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def frame_npy(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(frame), allow_pickle=False)
    return buf.getvalue()


class Receiver:
    def __init__(self, client: Client, channel: str, state_path: Path, *, out_dir: Path | None = None,
                 fmt: str = "npy", stdout: bool = False, until_seq: int | None = None,
                 idle_timeout: float | None = None):
        self.client, self.channel, self.state_path = client, channel, state_path
        self.out_dir, self.fmt, self.stdout = out_dir, fmt, stdout
        self.until_seq, self.idle_timeout = until_seq, idle_timeout
        self.state = load_state(state_path)
        self.stop = threading.Event()
        self.written = 0
        self.paths: dict[str, int] = {}  # frames written this run, per path
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)

    def start_seq(self, from_seq: int | str | None) -> int | str | None:
        return self.state["next_seq"] if "next_seq" in self.state else from_seq

    def run(self, from_seq: int | str | None = None) -> int:
        start = self.start_seq(from_seq)
        log.info("receiving %s from %s", self.channel, f"seq {start}" if start is not None else "the oldest frame")
        t0, last_log = time.monotonic(), time.monotonic()
        want = start if isinstance(start, int) else None
        if start == "latest":
            want = start = self.client.channel(self.channel).next_seq
        # the epoch the saved position belongs to: a reset channel ends this with ChannelReset (one line,
        # exit 1) instead of writing another incarnation's frames under these seqs
        epoch = str(self.state.get("epoch", "")) if isinstance(start, int) else ""
        packets = self.client.subscribe_packets(self.channel, start, idle_timeout=self.idle_timeout, stop=self.stop,
                                                epoch=epoch)
        try:
            for p in packets:
                frames = self.client.codec(p.model_id).decode(p.payload)
                for i in range(p.count):
                    seq = p.first_seq + i
                    if want is not None and seq < want:
                        continue
                    self._write(seq, frames[i])
                    self.written += 1
                    self.paths[p.path] = self.paths.get(p.path, 0) + 1
                if p.path == "lossless":
                    scores = ", ".join(f"{s:.4g}" for s in p.anomaly_scores[:8]) or "not scored"
                    more = ", ..." if len(p.anomaly_scores) > 8 else ""
                    log.info("seq %d-%d: lossless fallback (anomaly scores %s%s)", p.first_seq,
                             p.first_seq + p.count - 1, scores, more)
                want = p.first_seq + p.count
                self.state["next_seq"] = want
                if p.epoch:
                    self.state["epoch"] = p.epoch
                save_state(self.state_path, self.state)
                now = time.monotonic()
                if now - last_log > 2.0:
                    last_log = now
                    log.info("%d frames written (next seq %d, %.0f frames/s; %s)", self.written, want,
                             self.written / (now - t0), self._path_counts())
                if self.stop.is_set() or (self.until_seq is not None and want >= self.until_seq):
                    break
        finally:
            packets.close()
            if self.stdout:
                sys.stdout.buffer.flush()
        log.info("stopped: %d frames written this run (%s), next seq %s", self.written, self._path_counts(),
                 self.state.get("next_seq"))
        return 0

    def _path_counts(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.paths.items())) or "no frames"

    def _write(self, seq: int, frame: np.ndarray) -> None:
        if self.stdout:
            sys.stdout.buffer.write(frame_npy(frame))
            return
        assert self.out_dir is not None
        data = frame_png(frame) if self.fmt == "png" else frame_npy(frame)
        atomic_write_bytes(self.out_dir / f"{seq:012d}.{self.fmt}", data)


def add_parser(subparsers: Any, name: str = "receive") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="subscribe to a channel and write decoded frames",
                              description=__doc__.split("\n\n")[0])
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="server host:port")
    p.add_argument("--channel", required=True)
    p.add_argument("--state", required=True, help="position file (created if missing)")
    sink = p.add_mutually_exclusive_group(required=True)
    sink.add_argument("--out", help="folder to write one file per frame into")
    sink.add_argument("--stdout", action="store_true", help="write a stream of .npy records to stdout")
    p.add_argument("--format", choices=["png", "npy"], default="npy", help="file format for --out")
    p.add_argument("--from-seq", help="first seq when there is no state yet: an int or 'latest' "
                                      "(default: the oldest retained)")
    p.add_argument("--until-seq", type=int, help="exit once every frame below this seq was written")
    p.add_argument("--idle-timeout", type=float, help="exit after this many seconds without frames")
    add_connection_args(p)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    return one_line("receive", lambda: _receive(args))


def _receive(args: argparse.Namespace) -> int:
    from_seq: int | str | None = None
    if args.from_seq is not None:
        if args.from_seq != "latest" and not args.from_seq.lstrip("-").isdigit():
            raise ValueError(f"--from-seq takes an int or 'latest', got {args.from_seq!r}")
        from_seq = "latest" if args.from_seq == "latest" else int(args.from_seq)
    state = load_state(args.state)  # an unreadable state file is an error before anything connects
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    client = make_client(args, log)
    try:
        r = Receiver(client, args.channel, Path(args.state), out_dir=Path(args.out) if args.out else None,
                     fmt=args.format, stdout=args.stdout, until_seq=args.until_seq, idle_timeout=args.idle_timeout)
        r.state = state
        install_stop(r.stop, log)
        if r.until_seq is not None and r.state.get("next_seq", -1) >= r.until_seq:
            return 0
        client.channel(args.channel)  # an unknown channel is a one-line error, not a silent wait
        try:
            return r.run(from_seq)
        except ChannelReset as e:  # the line says how to go on once the operator started a new epoch
            raise ChannelReset(e.channel, f"{e.details}; once the channel goes on (--new-epoch), move the state "
                                          f"file {args.state} aside to receive its new frames", e.last_seq) from None
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentwire receive", description=__doc__.split("\n\n")[0])
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
