"""A benchmark worker started inside a network namespace:

    ip netns exec NS python -m benchmarks.nsworker ROLE SOCKET ARGS...

multiprocessing cannot spawn a worker into another network namespace, so the link benchmark starts
each one with `ip netns exec` and the worker connects back to the parent over a Unix socket (a
filesystem path, which every network namespace sees; the socket sits in a folder only the parent's
user can open). Over that Connection it runs the same loops as the spawned workers of the streaming
benchmark, so both benchmarks measure with one piece of code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Client
from typing import Any


def _roles() -> dict[str, Callable[..., None]]:
    from benchmarks import streamkit, tcpframes

    def lw_sender(conn: Any, target: str, bundle: str, cache: str, digits_file: str) -> None:
        streamkit.sender_main(conn, target, bundle, cache, None, digits_file)

    return {"lw-receiver": streamkit.receiver_main, "lw-sender": lw_sender,
            "tcp-receiver": tcpframes.receiver_main, "tcp-sender": tcpframes.sender_main}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    roles = _roles()
    if len(args) < 2 or args[0] not in roles:
        print(f"usage: python -m benchmarks.nsworker {{{','.join(roles)}}} SOCKET ARGS...", file=sys.stderr)
        return 2
    role, address, rest = args[0], args[1], args[2:]
    conn = Client(address, family="AF_UNIX")
    try:
        roles[role](conn, *rest)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
