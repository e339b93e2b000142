"""What the send and receive daemons share: connection options, logging, signal handling, and
the rule that a daemon ends with one line on stderr and a non-zero exit, never a traceback, when
its input, its server or its data is the problem."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from latentwire.codec.errors import LatentwireError

from .client import DEFAULT_CONNECT_TIMEOUT, Client
from .errors import ClientError, PublishAborted

EXIT_FAILED = 1  # the input, the server or the data: the line on stderr says which
EXIT_USAGE = 2


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", help="file holding the bearer token (never put tokens on a command line)")
    p.add_argument("--tls-ca", help="root certificate (PEM) to verify the server; implies TLS")
    p.add_argument("--tls", action="store_true", help="TLS with the system's roots")
    p.add_argument("--cache-dir", help="bundle cache (default ~/.cache/latentwire/bundles or $LATENTWIRE_CACHE)")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help=f"seconds to wait for the server at start before giving up (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    p.add_argument("--log-level", default="INFO")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def make_client(args: argparse.Namespace, log: logging.Logger) -> Client:
    """A connected Client (ConnectError if no server answers within --connect-timeout)."""
    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else None
    except OSError as e:
        raise ClientError(f"cannot read the token file {args.token_file}: {e.strerror or e}") from e
    tls: Any = args.tls_ca or (True if args.tls else None)
    client = Client(args.target, token=token, tls=tls, cache_dir=args.cache_dir,
                    connect_timeout=args.connect_timeout, logger=log)
    try:
        client.connect()
    except BaseException:
        client.close()
        raise
    return client


def install_stop(stop: threading.Event, log: logging.Logger) -> None:
    def handler(signum: int, frame: Any) -> None:
        log.info("received %s: finishing the message in flight and exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def one_line(name: str, body: Callable[[], int]) -> int:
    """Run a daemon's body; the failures users cause or meet become one line and exit 1."""
    try:
        return body()
    except PublishAborted as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        print(f"latentwire {name}: {cause} ({e.result.accepted} frame(s) committed before it)", file=sys.stderr)
    except (ClientError, LatentwireError) as e:
        print(f"latentwire {name}: {e}", file=sys.stderr)
    except grpc.RpcError as e:
        print(f"latentwire {name}: the server answered {e.code().name}: {e.details()}", file=sys.stderr)
    except KeyError as e:  # Client.channel: no such channel
        print(f"latentwire {name}: {e.args[0] if e.args else e}", file=sys.stderr)
    except (OSError, ValueError) as e:  # unwritable sink, unreadable state file
        print(f"latentwire {name}: {e}", file=sys.stderr)
    return EXIT_FAILED
