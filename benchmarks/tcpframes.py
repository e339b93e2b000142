"""The baselines' best case on a link: length-prefixed frames on one plain TCP socket.

What a user without latentwire would do to push digits through a thin link: code each frame (or
each batch) with a general-purpose or image codec and write ``[u32 big-endian length][payload]``
messages on a TCP connection - no server, no store, no protocol beyond the length. Nothing of
latentwire's transport is in the way, so this is the most the baselines can get through the link.

The two loops mirror benchmarks/streamkit.py's workers (same commands over a Connection, same
monotonic time stamps, so latency is sender clock -> receiver clock on one machine): the sender
listens on the server side of the link and writes, the receiver connects from the other side,
reads, decodes every frame and time-stamps it.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard
from PIL import Image

from benchmarks.streamkit import _quiet_threads, chunks, mnist_digits, rss_bytes

HEADER = struct.Struct(">I")
SAMPLE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class TcpCodec:
    """kind: zstd (level = zstd level; batched: one message per batch, else per frame), webp
    (level = quality, one image per frame), raw (the frame's bytes)."""

    kind: str
    level: int = 0
    batched: bool = False

    def encoder(self) -> Callable[[np.ndarray], bytes]:
        """(k, 1, 28, 28) uint8 -> one message payload (k == 1 unless batched)."""
        if self.kind == "zstd":
            cctx = zstandard.ZstdCompressor(level=self.level)
            return lambda frames: cctx.compress(np.ascontiguousarray(frames).tobytes())
        if self.kind == "webp":
            quality = self.level

            def webp(frames: np.ndarray) -> bytes:
                buf = io.BytesIO()
                Image.fromarray(frames[0, 0], mode="L").save(buf, format="WEBP", quality=quality, method=6)
                return buf.getvalue()

            return webp
        if self.kind == "raw":
            return lambda frames: np.ascontiguousarray(frames).tobytes()
        raise ValueError(f"unknown baseline codec {self.kind!r}")

    def decoder(self) -> Callable[[bytes], np.ndarray]:
        if self.kind == "zstd":
            dctx = zstandard.ZstdDecompressor()
            return lambda b: np.frombuffer(dctx.decompress(b), dtype=np.uint8).reshape(-1, *SAMPLE_SHAPE)
        if self.kind == "webp":
            return lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("L"))[None, None]
        return lambda b: np.frombuffer(b, dtype=np.uint8).reshape(-1, *SAMPLE_SHAPE)

    def frames_per_message(self, batch: int) -> int:
        return batch if self.batched else 1


def message_sizes(codec: TcpCodec, digits: np.ndarray, batch: int) -> float:
    """Bytes per frame this codec puts on the socket (length prefix included) at `batch`."""
    enc, k = codec.encoder(), codec.frames_per_message(batch)
    sizes = [len(enc(c)) + HEADER.size for c in chunks(digits, k, (len(digits) // k) * k or k)]
    return float(np.sum(sizes)) / max((len(digits) // k) * k or k, 1)


def sender_main(conn: Any, host: str, digits_file: str) -> None:
    """Commands: ("sat" | "rate", codec, n, batch, rate): listen on host, reply ("port", port),
    accept one receiver, write n frames (saturation: messages pre-coded before the clock starts;
    rate: paced at `rate` frames/s and coded as they come), close, and reply ("result", {...}) with
    per-frame offered times; None: exit."""
    _quiet_threads()
    digits = mnist_digits(digits_file)
    pools: dict[tuple[TcpCodec, int], list[bytes]] = {}
    conn.send(("up", os.getpid()))
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        kind, codec, n, batch, rate = cmd
        k = codec.frames_per_message(batch)
        enc = codec.encoder()
        if kind == "sat" and (codec, k) not in pools:
            whole = (digits.shape[0] // k) * k or k
            pools[(codec, k)] = [HEADER.pack(len(p)) + p for p in (enc(c) for c in chunks(digits, k, whole))]
        offered = np.empty(n)
        lsock = socket.create_server((host, 0))
        lsock.settimeout(60)
        conn.send(("port", lsock.getsockname()[1]))
        try:
            sock, _ = lsock.accept()
        except OSError as e:
            conn.send(("result", {"error": f"accept: {e}"}))
            continue
        finally:
            lsock.close()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = messages = sent_bytes = 0
        cpu0, t0 = time.process_time(), time.monotonic()
        try:
            pool = pools.get((codec, k))
            for j, c in enumerate(chunks(digits, k, n)):
                m = c.shape[0]
                if rate:
                    due = t0 + (sent + m - 1) / rate  # the message leaves when its last frame has arrived
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    offered[sent : sent + m] = t0 + np.arange(sent, sent + m) / rate
                    p = enc(c)
                    msg = HEADER.pack(len(p)) + p
                else:
                    offered[sent : sent + m] = time.monotonic()
                    if pool is not None and m == k:
                        msg = pool[j % len(pool)]
                    else:
                        p = enc(c)
                        msg = HEADER.pack(len(p)) + p
                sock.sendall(msg)
                sent += m
                messages += 1
                sent_bytes += len(msg)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(120)
            while sock.recv(4096):  # the receiver closes once it has read everything
                pass
        except OSError as e:
            conn.send(("result", {"error": f"{type(e).__name__}: {e}"}))
            continue
        finally:
            sock.close()
        conn.send(("result", {"accepted": sent, "messages": messages, "sent_bytes": sent_bytes,
                              "seconds": time.monotonic() - t0, "cpu_s": time.process_time() - cpu0,
                              "rss": rss_bytes(), "offered": offered}))


def _read_exact(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ConnectionError(f"stream ended after {len(data)} of {n} bytes")
    return data


def _messages(f: Any) -> Iterator[bytes]:
    while True:
        head = f.read(HEADER.size)
        if not head:
            return
        if len(head) != HEADER.size:
            raise ConnectionError("stream ended inside a length prefix")
        yield _read_exact(f, HEADER.unpack(head)[0])


def receiver_main(conn: Any) -> None:
    """Commands: ("recv", host, port, codec, n): connect, read and decode n frames, time-stamp each
    after its message is decoded, close, reply ("result", {...}); None: exit."""
    _quiet_threads()
    conn.send(("up", os.getpid()))
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        _, host, port, codec, n = cmd
        dec = codec.decoder()
        times = np.full(n, np.nan)
        got = bad_shape = nbytes = 0
        cpu0 = time.process_time()
        try:
            # the file must close too: the socket's fd stays open (and the sender waiting) while it lives
            with socket.create_connection((host, port), timeout=120) as sock, sock.makefile("rb", 1 << 16) as f:
                for payload in _messages(f):
                    frames = dec(payload)
                    t = time.monotonic()
                    k = frames.shape[0]
                    if frames.shape[1:] != SAMPLE_SHAPE:
                        bad_shape += k
                    times[got : got + k] = t
                    got += k
                    nbytes += len(payload) + HEADER.size
                    if got >= n:
                        break
        except (OSError, ValueError, zstandard.ZstdError) as e:
            conn.send(("result", {"error": f"{type(e).__name__}: {e}", "delivered": got}))
            continue
        done = times[np.isfinite(times)]
        conn.send(("result", {"delivered": got, "lost": max(0, n - got), "duplicated": 0, "bad_shape": bad_shape,
                              "t_first": float(done.min()) if done.size else None,
                              "t_last": float(done.max()) if done.size else None, "payload_bytes": nbytes,
                              "cpu_s": time.process_time() - cpu0, "rss": rss_bytes(), "times": times}))
