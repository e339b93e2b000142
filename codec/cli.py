"""The `latentwire` command: one entry point, one module per subcommand.

Subcommands are imported only when invoked, so `latentwire receive` on a machine without torch
never touches the training code, and `latentwire --help` stays fast.
Each subcommand module exposes `add_parser(subparsers) -> argparse.ArgumentParser` and
`run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line summary). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("latentwire.codec.train", "train an autoencoder on your data (needs the [train] extra)"),
    "export": ("latentwire.codec.export", "export a checkpoint as a codec bundle: two ONNX graphs + manifest"),
    "calibrate": ("latentwire.codec.calibrate", "build a bundle's integer entropy tables and quality levels"),
    "encode": ("latentwire.codec.files", "encode arrays, images or records into a .lw file"),
    "decode": ("latentwire.codec.files", "decode a .lw file into arrays or PNG images"),
    "eval": ("latentwire.codec.evaluate", "measure bytes per sample and PSNR of a bundle (JSON)"),
    "embed": ("latentwire.codec.embed", "write a bundle's latent codes for a data set (features, .npy)"),
    "serve": ("latentwire.server.main", "run the gRPC streaming server"),
    "send": ("latentwire.client.send", "publish frames from files, arrays or a dataset to a channel"),
    "receive": ("latentwire.client.receive", "subscribe to a channel and write decoded frames"),
    "demo": ("latentwire.client.demo", "the main job: server + sender + receiver on loopback, with savings"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: latentwire COMMAND [options]   (latentwire COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"latentwire: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("torch", "onnx", "onnxscript"):
            print(
                f"latentwire {name} needs the training extra: pip install torch==2.13.0 && pip install 'latentwire[train]'",
                file=sys.stderr,
            )
            return 2
        raise
    parser = argparse.ArgumentParser(prog="latentwire")
    subparsers = parser.add_subparsers(dest="command", required=True)
    module.add_parser(subparsers, name) if _takes_name(module) else module.add_parser(subparsers)
    args = parser.parse_args(argv)
    return int(module.run(args) or 0)


def _takes_name(module: object) -> bool:
    """Modules that host several subcommands (encode/decode) get the name they are invoked as."""
    import inspect

    return len(inspect.signature(module.add_parser).parameters) >= 2  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
