"""The README's examples run as written on a fresh clone: every block marked `<!-- doctest: NAME -->`
is extracted and run here (CLI lines one by one in a scratch folder beside the repository's
tests/data, Python blocks in a fresh interpreter). The one liberty taken: the example port
50051 becomes a free port, so a busy machine cannot fail the test."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _transport import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PORT = "50051"


def blocks() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    found = re.findall(r"<!-- doctest: (\w+) -->\s*```\w*\n(.*?)```", text, flags=re.S)
    return {name: body for name, body in found}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["LATENTWIRE_CACHE"] = env.get("LATENTWIRE_CACHE", "")
    return env


def _scratch(tmp_path: Path) -> Path:
    """A folder that looks like a fresh clone to relative paths: tests/ points at the real one."""
    (tmp_path / "tests").symlink_to(REPO / "tests")
    return tmp_path


def _commands(body: str) -> list[str]:
    lines, current = [], ""
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return lines


def test_readme_marks_its_examples() -> None:
    assert set(blocks()) == {"cli", "python", "stream", "client"}


def test_cli_examples_run_as_written(tmp_path: Path) -> None:
    work = _scratch(tmp_path)
    env = _env()
    env["LATENTWIRE_CACHE"] = str(tmp_path / "cache")
    for command in _commands(blocks()["cli"]):
        done = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
    assert (work / "bundles" / "try" / "entropy.json").is_file()
    assert np.load(work / "decoded.npy").shape == (500, 1, 28, 28)
    assert (work / "levels.png").stat().st_size > 1000


def test_python_example_runs_as_written() -> None:
    done = subprocess.run([sys.executable, "-c", blocks()["python"]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bytes per digit instead of 784" in done.stdout


def test_stream_and_client_examples_run_as_written(tmp_path: Path) -> None:
    work = _scratch(tmp_path)
    env = _env()
    env["LATENTWIRE_CACHE"] = str(tmp_path / "cache")
    port = str(free_port())
    serve, send, receive = [c.replace(EXAMPLE_PORT, port) for c in _commands(blocks()["stream"])]
    server = subprocess.Popen(shlex.split(serve), cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (work / "latentwire-data").is_dir() or subprocess.run(
                [sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"],
                capture_output=True).returncode:
            assert server.poll() is None and time.monotonic() < deadline, "the README's serve line did not come up"
            time.sleep(0.2)
        sent = subprocess.run(send, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        got = subprocess.run(receive, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr
        assert len(list((work / "received").glob("*.png"))) == 500  # the shipped test sample, each digit once
        code = blocks()["client"].replace(EXAMPLE_PORT, port)
        done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert "committed 100 frames as seqs 500..599" in done.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
