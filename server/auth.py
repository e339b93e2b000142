"""Bearer-token authorization: which token may publish to / subscribe from which channel.

Token file (JSON):
    {"tokens": {"<token>": {"name": "camera-1", "publish": ["digits"], "subscribe": ["*"]}}}
"*" means every channel. Tokens are kept only as SHA-256 digests in memory and are never
logged: logs and errors name the token's "name" label instead.
Without a token file the server is open (every call allowed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

import grpc

from .config import ConfigError

TOKEN_KEYS = frozenset({"name", "publish", "subscribe"})


@dataclass(frozen=True)
class Grant:
    name: str
    publish: frozenset[str]
    subscribe: frozenset[str]

    def allows(self, action: str, channel: str) -> bool:
        chans = self.publish if action == "publish" else self.subscribe
        return "*" in chans or channel in chans


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenStore:
    def __init__(self, grants: dict[bytes, Grant]):
        self._grants = grants

    @classmethod
    def open(cls) -> TokenStore:
        return cls({})

    @property
    def enabled(self) -> bool:
        return bool(self._grants)

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"token file {path}: cannot read JSON ({e})") from e
        if isinstance(raw, dict) and set(raw) - {"tokens"}:
            raise ConfigError(f"token file {path}: unknown top-level keys {sorted(set(raw) - {'tokens'})}; "
                              'the file holds only {"tokens": {...}} (see server/README.md, Tokens)')
        table = raw.get("tokens") if isinstance(raw, dict) else None
        if not isinstance(table, dict) or not table:
            raise ConfigError(
                f'token file {path}: expected {{"tokens": {{"<token>": {{"publish": [...], "subscribe": [...]}}}}}} '
                "with at least one token"
            )
        grants: dict[bytes, Grant] = {}
        for i, (token, spec) in enumerate(table.items()):
            if not isinstance(spec, dict) or len(token) < 8:
                raise ConfigError(
                    f"token file {path}: entry #{i} must map a token of >= 8 characters to "
                    '{"publish": [...], "subscribe": [...]}'
                )
            unknown = sorted(set(spec) - TOKEN_KEYS)
            if unknown:  # a typo ("subscibe") would otherwise silently grant nothing
                raise ConfigError(f"token file {path}: entry #{i} ({spec.get('name', 'unnamed')}) has unknown keys "
                                  f"{unknown}; known: {sorted(TOKEN_KEYS)}")
            for key in ("publish", "subscribe"):
                value = spec.get(key, [])
                if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                    raise ConfigError(f"token file {path}: entry #{i} {key} must be a list of channel names "
                                      f'(or ["*"]), got {value!r}')
            grants[_digest(token)] = Grant(
                name=str(spec.get("name", f"token#{i}")),
                publish=frozenset(spec.get("publish", [])),
                subscribe=frozenset(spec.get("subscribe", [])),
            )
        return cls(grants)

    def identify(self, metadata: tuple | list | None) -> Grant | None:
        """The grant of the call's bearer token; raises AuthError(UNAUTHENTICATED) when tokens are
        configured and the call has none or an unknown one. None when auth is disabled."""
        if not self.enabled:
            return None
        header = None
        for key, value in metadata or ():
            if key.lower() == "authorization":
                header = value if isinstance(value, str) else value.decode("utf-8", "replace")
                break
        if header is None:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server requires a token: send metadata 'authorization: Bearer <token>' "
                "(Client(token=...) or --token-file)",
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "malformed authorization metadata: expected 'Bearer <token>'"
            )
        d = _digest(token.strip())
        for known, grant in self._grants.items():
            if hmac.compare_digest(known, d):
                return grant
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown token: check the token or ask for a new one")

    def check(self, metadata: tuple | list | None, action: str, channel: str | None) -> Grant | None:
        """identify() plus, for publish/subscribe, the channel permission (PERMISSION_DENIED)."""
        grant = self.identify(metadata)
        if grant is None or channel is None:
            return grant
        if not grant.allows(action, channel):
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {grant.name!r} may not {action} on channel {channel!r}: add the channel to its "
                f"'{action}' list in the token file",
            )
        return grant
