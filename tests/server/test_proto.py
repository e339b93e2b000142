"""The committed stubs in proto/latentwire/v1/ must be what the .proto generates today.

A stale stub is silent until a field goes missing on the wire, so regenerate into a temp dir and
compare byte for byte.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
STUB_DIR = PROTO_DIR / "latentwire" / "v1"
GENERATED = ["latentwire_pb2.py", "latentwire_pb2_grpc.py", "latentwire_pb2.pyi", "latentwire_pb2_grpc.pyi"]
# The generator's own version stamps: grpcio-tools writes the grpcio (and protoc) release it is, so a
# newer grpcio-tools from the registry changes them without changing a message or a method. Compared
# apart: the generated code refuses older runtimes, so pyproject's minimums must cover the stamps.
GRPC_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", re.M)
PROTOBUF_STAMP = re.compile(r"^# Protobuf Python Version: ([0-9.]+)$"
                            r"|ValidateProtobufRuntimeVersion\(\n(?:.*\n){5}", re.M)


def _unstamped(text: str) -> str:
    return PROTOBUF_STAMP.sub("<protobuf stamp>", GRPC_STAMP.sub("<grpc stamp>", text))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("."))


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    grpc_tools = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "gen"
    out.mkdir()
    src = tmp_path / "src" / "latentwire" / "v1"
    src.mkdir(parents=True)
    shutil.copy(STUB_DIR / "latentwire.proto", src / "latentwire.proto")
    plugins = {}
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        plugin = Path(sys.executable).parent / name
        if not plugin.exists():
            found = shutil.which(name)
            if found is None:
                pytest.skip(f"mypy-protobuf ({name}) is not installed; pip install -e .[dev]")
            plugin = Path(found)
        plugins[name] = plugin
    args = [
        "grpc_tools.protoc",
        f"-I{tmp_path / 'src'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(f"--plugin={name}={path}" for name, path in plugins.items()),
        "latentwire/v1/latentwire.proto",
    ]
    assert grpc_tools.main(args) == 0, "protoc failed on proto/latentwire/v1/latentwire.proto"
    for name in GENERATED:
        fresh = _unstamped((out / "latentwire" / "v1" / name).read_text())
        committed = _unstamped((STUB_DIR / name).read_text())
        assert fresh == committed, (
            f"proto/latentwire/v1/{name} is stale: regenerate with .venv/bin/python -m grpc_tools.protoc "
            "-I proto --python_out=proto --grpc_python_out=proto --mypy_out=proto --mypy_grpc_out=proto "
            "proto/latentwire/v1/latentwire.proto"
        )


def test_declared_minimums_cover_the_generated_code() -> None:
    """The committed stubs refuse a grpcio or protobuf older than the one that generated them: a
    minimum in pyproject.toml below that would install, then fail at import."""
    pyproject = (REPO / "pyproject.toml").read_text()
    minimum = {name: _version(v) for name, v in re.findall(r'^    "(grpcio|protobuf)>=([0-9.]+)",', pyproject, re.M)}
    grpc_stub = (STUB_DIR / "latentwire_pb2_grpc.py").read_text()
    pb_stub = (STUB_DIR / "latentwire_pb2.py").read_text()
    stamp_grpc = GRPC_STAMP.search(grpc_stub)
    stamp_pb = re.search(r"^# Protobuf Python Version: ([0-9.]+)$", pb_stub, re.M)
    assert stamp_grpc and stamp_pb, "the generated files lost their version stamps: update this test's patterns"
    assert minimum["grpcio"] >= _version(stamp_grpc[1]), f"pyproject.toml: grpcio>={stamp_grpc[1]} at least"
    assert minimum["protobuf"] >= _version(stamp_pb[1]), f"pyproject.toml: protobuf>={stamp_pb[1]} at least"


def test_stubs_import_under_package_name() -> None:
    from latentwire.v1 import latentwire_pb2, latentwire_pb2_grpc

    service = latentwire_pb2.DESCRIPTOR.services_by_name["Latentwire"]
    assert service.full_name == "latentwire.v1.Latentwire"
    assert {m.name for m in service.methods} == {
        "ListModels",
        "GetModel",
        "DownloadBundle",
        "ListChannels",
        "Publish",
        "Subscribe",
    }
    publish = service.methods_by_name["Publish"]
    assert publish.client_streaming and publish.server_streaming, "Publish must be bidi for in-band errors"
    assert hasattr(latentwire_pb2_grpc, "LatentwireStub")
    req = latentwire_pb2.SubscribeRequest(channel="x")
    assert not req.HasField("from_seq"), "from_seq must carry presence so 0 differs from unset"
