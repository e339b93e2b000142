"""The `latentwire` command: one entry point over every room, which names none of them.

Each room registers its subcommands as a tuple of `Command`s under the package entry-point group
"latentwire.commands" (pyproject.toml); this dispatcher discovers them, builds the parser of the
one that was asked for, and only then imports the module that runs it. So the codec room knows
nothing of the server or the client, `latentwire --help` stays fast, and `latentwire train
--help` answers on a machine without the [train] extra (parsers live in torch-free modules).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

ENTRY_POINT_GROUP = "latentwire.commands"
ROOM_ORDER = ("codec", "server", "client")  # the order rooms' commands are listed in --help


@dataclass(frozen=True)
class Command:
    """One subcommand: its parser (module:function(subparsers, name) -> parser, torch-free) and what
    runs it (module:function(args) -> exit code, imported only when it runs)."""

    name: str
    summary: str
    parser: str
    run: str
    extra: str = ""  # the pip extra run needs, named in the error when its import fails


def _load(ref: str) -> Callable:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def commands() -> dict[str, Command]:
    """Every registered subcommand, by name, rooms in ROOM_ORDER."""
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                 key=lambda ep: ROOM_ORDER.index(ep.name) if ep.name in ROOM_ORDER else len(ROOM_ORDER))
    found: dict[str, Command] = {}
    for ep in eps:
        for cmd in ep.load():
            found.setdefault(cmd.name, cmd)
    return found


def _usage(found: dict[str, Command]) -> str:
    width = max((len(n) for n in found), default=8)
    lines = ["usage: latentwire COMMAND [options]   (latentwire COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {c.name.ljust(width)}  {c.summary}" for c in found.values()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = commands()
    if not found:
        print("latentwire: no commands are registered: install the package (pip install -e .) so its entry points "
              f"({ENTRY_POINT_GROUP}) exist", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(found))
        return 0
    cmd = found.get(argv[0])
    if cmd is None:
        print(f"latentwire: unknown command {argv[0]!r}\n\n{_usage(found)}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="latentwire")
    _load(cmd.parser)(parser.add_subparsers(dest="command", required=True), cmd.name)
    args = parser.parse_args(argv)
    # what a stage records as its command in a manifest: this call's own arguments, which sys.argv
    # is not when main() runs in-process (tests, scripts)
    args.invocation = shlex.join(["latentwire", *argv])
    try:
        run = _load(cmd.run)
    except ModuleNotFoundError as exc:
        if cmd.extra and exc.name and exc.name.split(".")[0] in ("torch", "onnx", "onnxscript", "redis"):
            print(f"latentwire {cmd.name} needs the {cmd.extra} extra: "
                  + ("pip install torch==2.13.0 && " if cmd.extra == "train" else "")
                  + f"pip install 'latentwire[{cmd.extra}]'", file=sys.stderr)
            return 2
        raise
    return int(run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
