"""Bundles on the receiving side: download over gRPC, verify, cache by model id.

A bundle is verified (every file matches its sha256 and the bundle hashes to its model id)
BEFORE onnxruntime sees it, so a tampered or mixed-up bundle is refused instead of decoding
garbage; a download lands in a private temporary folder and is renamed into the cache only once
verified, so a crash or a race never leaves a half bundle behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from latentwire.codec.bundle import Bundle
from latentwire.codec.codec import Codec
from latentwire.codec.errors import BundleError
from latentwire.v1 import latentwire_pb2 as pb


def default_cache_dir() -> Path:
    env = os.environ.get("LATENTWIRE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "latentwire" / "bundles"


@dataclass
class _Download:
    handle: BinaryIO
    digest: hashlib._Hash
    written: int
    sha256: str
    size: int


class BundleCache:
    """Verified bundles by model id under ``root``, and the Codecs loaded from them (once each).

    download(model_id, into) streams a bundle's files into a folder (Client wires it to the
    DownloadBundle RPC)."""

    def __init__(self, root: Path, download: Callable[[str], Iterator[pb.BundleChunk]], log: logging.Logger) -> None:
        self.root = root
        self._chunks = download
        self._log = log
        self._codecs: dict[str, Codec] = {}
        self._lock = threading.Lock()

    def fetch(self, model_id: str, cache_dir: str | Path | None = None) -> Path:
        """The verified folder of model_id (full 64-digit id), downloading it if needed; raises
        BundleError otherwise, leaving nothing in the cache."""
        cache = Path(cache_dir) if cache_dir else self.root
        cache.mkdir(parents=True, exist_ok=True)
        final = cache / model_id
        if final.is_dir():
            try:
                if Bundle.load(final, verify=True).model_id == model_id:
                    return final
            except BundleError as e:
                self._log.warning("cached bundle %s failed verification (%s); downloading it again", final, e)
            shutil.rmtree(final, ignore_errors=True)
        tmp = cache / f".partial-{model_id[:16]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            self._download(model_id, tmp)
            bundle = Bundle.load(tmp, verify=True)
            if bundle.model_id != model_id:
                raise BundleError(
                    f"the server sent a bundle with model id {bundle.model_id[:12]}... for {model_id[:12]}...: "
                    "refusing it (wrong or tampered bundle on the server)"
                )
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():  # another process raced us to it
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def codec(self, model_id: str, cache_dir: str | Path | None = None) -> Codec:
        """A Codec for model_id (fetched, verified, loaded once per cache object)."""
        with self._lock:
            c = self._codecs.get(model_id)
        if c is None:
            c = Codec.load(self.fetch(model_id, cache_dir))
            with self._lock:
                self._codecs[model_id] = c
        return c

    def _download(self, model_id: str, into: Path) -> None:
        files: dict[str, _Download] = {}
        try:
            for chunk in self._chunks(model_id):
                name = chunk.file_name
                if not name or "/" in name or "\\" in name or name.startswith("."):
                    raise BundleError(f"the server sent a bundle file named {name!r}: refusing it")
                if name not in files:
                    files[name] = _Download(open(into / name, "wb"), hashlib.sha256(), 0, chunk.sha256, chunk.file_size)
                f = files[name]
                if chunk.offset != f.written:
                    raise BundleError(
                        f"{name}: chunk at offset {chunk.offset}, expected {f.written}; retry the download"
                    )
                f.handle.write(chunk.data)
                f.digest.update(chunk.data)
                f.written += len(chunk.data)
        finally:
            for f in files.values():
                f.handle.close()
        if "manifest.json" not in files:
            raise BundleError(f"the server sent no manifest.json for {model_id[:12]}...; is it a latentwire bundle?")
        for name, f in files.items():
            if f.written != f.size or f.digest.hexdigest() != f.sha256:
                raise BundleError(
                    f"downloaded {name} is {f.written} bytes with sha256 {f.digest.hexdigest()[:12]}..., the server "
                    f"announced {f.size} bytes / {f.sha256[:12]}...: the transfer was corrupted; retry"
                )
