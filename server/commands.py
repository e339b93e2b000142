"""The server room's subcommands, registered with the `latentwire` command (codec/cli.py)."""

from latentwire.codec.cli import Command

COMMANDS = (
    Command("serve", "run the gRPC streaming server", "latentwire.server.main:add_parser",
            "latentwire.server.main:run"),
)
