"""The daemons' position files: small JSON written atomically (temp file, fsync, rename).

Why atomic: a daemon killed mid-write must find either the old or the new position on restart,
never a torn file, or it would lose or repeat frames.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_state(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"state file {p} is not valid JSON ({e}): delete it to start over") from e


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a sink file so a reader never sees half of it (no fsync: the state file orders it)."""
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
