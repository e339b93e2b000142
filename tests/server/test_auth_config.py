"""Token files and server configuration: parsed strictly, with errors that name the fix."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from latentwire.server.auth import AuthError, TokenStore
from latentwire.server.config import ChannelSpec, ConfigError, ServerConfig


def test_token_store(tmp_path: Path) -> None:
    f = tmp_path / "tokens.json"
    f.write_text(json.dumps({"tokens": {
        "s3cret-publisher": {"name": "cam", "publish": ["digits"], "subscribe": []},
        "s3cret-viewer": {"name": "viewer", "subscribe": ["*"]},
    }}))
    store = TokenStore.load(f)
    with pytest.raises(AuthError) as e:
        store.check((), "subscribe", "digits")
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in e.value.message
    with pytest.raises(AuthError) as e:
        store.check((("authorization", "Bearer nope-nope"),), "subscribe", "digits")
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and "nope" not in e.value.message
    with pytest.raises(AuthError) as e:
        store.check((("authorization", "Bearer s3cret-publisher"),), "subscribe", "digits")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "s3cret" not in e.value.message, "tokens must never appear in messages"
    assert store.check((("authorization", "Bearer s3cret-viewer"),), "subscribe", "any").name == "viewer"
    assert store.check((("authorization", "Bearer s3cret-publisher"),), "publish", "digits").name == "cam"
    assert TokenStore.open().check((), "publish", "x") is None


def test_config_parsing(tmp_path: Path) -> None:
    assert ChannelSpec.parse("digits=runs/b:2") == ChannelSpec("digits", "runs/b", 2)
    assert ChannelSpec.parse("d=C:/x/bundle") == ChannelSpec("d", "C:/x/bundle", None)
    with pytest.raises(ConfigError, match="NAME=BUNDLE_DIR"):
        ChannelSpec.parse("nobundle")
    with pytest.raises(ConfigError, match="invalid"):
        ChannelSpec.parse("bad name=x")
    cfg_file = tmp_path / "server.json"
    cfg_file.write_text(json.dumps({"channels": [{"name": "a", "bundle": "b1", "quality": 1}, "c=b2"],
                                    "retention": {"max_bytes": 1000}, "limits": {"max_subscribers": 3}}))
    cfg = ServerConfig.from_json(cfg_file).check()
    assert cfg.channels[0].bundle == str(tmp_path / "b1") and cfg.channels[1].name == "c"
    assert cfg.retention.max_bytes == 1000 and cfg.limits.max_subscribers == 3
    cfg_file.write_text(json.dumps({"channels": ["a=b"], "retension": {}}))
    with pytest.raises(ConfigError, match="retension"):
        ServerConfig.from_json(cfg_file)
    with pytest.raises(ConfigError, match="no channels"):
        ServerConfig().check()
