"""What a Redis store keeps across a restart, and how its URL is shown.

Why read at start: a Redis without persistence loses every channel when it restarts, and the
default redis-server configuration of many setups is exactly that; the operator should learn it
from the server's first lines, not from a reset (server/README.md, "Redis persistence").
"""

from __future__ import annotations

from dataclasses import dataclass

from .store import StoreUnavailable


@dataclass(frozen=True)
class Durability:
    """Redis's persistence settings as CONFIG GET reports them (None: CONFIG GET was refused)."""

    appendonly: str | None
    appendfsync: str | None
    save: str | None
    refused: str = ""  # why CONFIG GET failed

    @property
    def volatile(self) -> bool:
        """No append-only file and no RDB save point: a Redis restart loses every channel. Unknown
        (CONFIG GET refused, as managed Redis services do) counts as volatile."""
        return self.refused != "" or (self.appendonly != "yes" and not (self.save or "").strip())

    def describe(self) -> str:
        if self.refused:
            return f"its persistence settings are unknown (CONFIG GET refused: {self.refused})"
        aof = f"appendonly {self.appendonly}" + (f" (appendfsync {self.appendfsync})" if self.appendonly == "yes"
                                                 else "")
        return f"{aof}, save {self.save!r}"


def durability(url: str, socket_timeout: float = 5.0) -> Durability:
    """Read appendonly, appendfsync and save (StoreUnavailable when Redis cannot be reached)."""
    try:
        import redis
    except ImportError as e:  # the optional extra
        raise StoreUnavailable("--store redis:// needs redis-py: pip install 'latentwire[redis]'") from e

    r = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
    try:
        got: dict[str, str] = {}
        for key in ("appendonly", "appendfsync", "save"):
            for k, v in r.config_get(key).items():
                got[k.decode() if isinstance(k, bytes) else str(k)] = v.decode() if isinstance(v, bytes) else str(v)
        return Durability(got.get("appendonly"), got.get("appendfsync"), got.get("save"))
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise StoreUnavailable(f"Redis store unreachable while reading its persistence settings: {e}") from e
    except redis.ResponseError as e:  # NOPERM, or CONFIG renamed away by a managed service
        return Durability(None, None, None, refused=str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        r.close()


def display_url(url: str) -> str:
    """The store URL for messages, logs and epoch records: its password (redis://user:PASSWORD@...) hidden."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
