"""The client room's subcommands, registered with the `latentwire` command (codec/cli.py)."""

from latentwire.codec.cli import Command

COMMANDS = (
    Command("send", "publish frames from files, arrays or a dataset to a channel", "latentwire.client.send:add_parser",
            "latentwire.client.send:run"),
    Command("receive", "subscribe to a channel and write decoded frames", "latentwire.client.receive:add_parser",
            "latentwire.client.receive:run"),
    Command("demo", "the main job: server + sender + receiver on loopback, with savings",
            "latentwire.client.demo:add_parser", "latentwire.client.demo:run"),
)
