"""Helpers shared by the transport tests: digits, in-process servers and server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from latentwire.codec.sources import default_data_root, load_source, sample_data_root
from latentwire.server.config import ChannelSpec, ServerConfig
from latentwire.server.main import LatentwireServer

REPO = Path(__file__).resolve().parents[1]


def digits(n: int) -> np.ndarray:
    """n raw MNIST digits (n, 1, 28, 28) uint8: the full test set when ../shared is there, else the
    shipped samples tiled (the transport does not care that they repeat)."""
    root = default_data_root()
    if root is not None and (root / "mnist").is_dir():
        x = load_source(root / "mnist", split="test").samples
    else:
        x = load_source(sample_data_root() / "mnist").samples
    reps = -(-n // x.shape[0])
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def wait_until(pred: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll pred until it holds; TimeoutError naming what was awaited, so a stuck test says why."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (not within {timeout:g} s)")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(bundle: Path, data_dir: Path, **kw) -> Iterator[LatentwireServer]:
    channels = kw.pop("channels", None) or (ChannelSpec("digits", str(bundle)),)
    cfg = ServerConfig(listen=kw.pop("listen", "127.0.0.1:0"), data_dir=str(data_dir), channels=channels,
                       health_drain_s=0.0, shutdown_grace_s=1.0, threads=1, **kw)
    server = LatentwireServer(cfg)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ServerProcess:
    """`python -m latentwire.server.main` as a child process (for kill -9 and SIGTERM tests)."""

    def __init__(self, bundle: Path, data_dir: Path, port: int | None = None, extra: list[str] | None = None):
        self.bundle, self.data_dir, self.extra = bundle, data_dir, extra or []
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.data_dir / "port"
        if port_file.exists():
            port_file.unlink()
        cmd = [sys.executable, "-m", "latentwire.server.main", "--channel", f"digits={self.bundle}",
               "--listen", self.target, "--data-dir", str(self.data_dir), "--port-file", str(port_file),
               "--threads", "1", *self.extra]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
