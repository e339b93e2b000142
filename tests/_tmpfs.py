"""A small tmpfs mounted by the test itself: a real full disk (ENOSPC) for the embedded store."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's syntax: "1m") on `where`; skips, saying why, where mounting
    is not permitted (not root, no CAP_SYS_ADMIN in a container); always unmounted on the way out."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here: a full disk needs a small tmpfs the test mounts itself")
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {got.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def resize(where: Path, size: str) -> None:
    """Give the mounted tmpfs another size (space returns without touching its files)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def fill(where: Path, leave: int) -> Path:
    """A filler file taking all but `leave` bytes of the filesystem's free space."""
    filler = where / "filler"
    free = shutil.disk_usage(where).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler
