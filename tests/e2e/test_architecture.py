"""The house rules, checked on the source tree: which folder may import what, where torch lives,
and how long a module may grow. A rule broken here is a reach-back a reader would trip over."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOMS = {"codec": REPO / "codec", "server": REPO / "server", "client": REPO / "client"}
MAX_LINES = 500


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    rel = path.relative_to(REPO).with_suffix("").parts
    package = ["latentwire", *rel[:-1]]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return found


def _files(room: str) -> list[Path]:
    return sorted(p for p in ROOMS[room].rglob("*.py") if "assets" not in p.parts)


def test_torch_is_imported_in_the_training_folder_only() -> None:
    offenders = [str(p.relative_to(REPO)) for room in ROOMS for p in _files(room)
                 if any(m == "torch" or m.startswith(("torch.", "onnx")) and not m.startswith("onnxruntime")
                        for m in _imports(p))
                 and "training" not in p.relative_to(REPO).parts]
    assert offenders == []
    options = _imports(REPO / "codec" / "training" / "options.py")
    assert not any(m.split(".")[0] == "torch" for m in options)  # --help without the [train] extra


def test_no_room_reaches_into_another() -> None:
    rules = {"codec": ("latentwire.server", "latentwire.client"), "server": ("latentwire.client",),
             "client": ("latentwire.server",)}
    offenders = [f"{p.relative_to(REPO)} imports {m}" for room, banned in rules.items() for p in _files(room)
                 for m in _imports(p) if m.startswith(banned)]
    assert offenders == []
    # and no runtime module reaches up into training/
    runtime = [p for p in _files("codec") if "training" not in p.parts] + _files("server") + _files("client")
    assert [
        str(p)
        for p in runtime
        if any(
            m.startswith("latentwire.codec.training") and m != "latentwire.codec.training.options" for m in _imports(p)
        )
    ] == []


def test_the_coding_stages_never_import_the_runtime_above_them() -> None:
    above = ("latentwire.codec.codec", "latentwire.codec.runtime", "latentwire.codec.bundle", "onnxruntime")
    assert [f"{p.name}: {m}" for p in (REPO / "codec" / "coding").glob("*.py") for m in _imports(p)
            if m.startswith(above)] == []


def test_modules_stay_small_and_every_folder_says_what_it_holds() -> None:
    long = [f"{p.relative_to(REPO)}: {n}" for room in ROOMS for p in _files(room)
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert long == []
    for folder in [ROOMS["codec"], ROOMS["server"], ROOMS["client"], REPO / "codec" / "coding",
                   REPO / "codec" / "training", REPO / "codec" / "sources"]:
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{folder.relative_to(REPO)}/__init__.py needs a docstring saying what it holds"
