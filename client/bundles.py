"""Bundles on the receiving side: download over gRPC, verify, cache by model id.

A bundle is verified (every file matches its sha256 and the bundle hashes to its model id)
BEFORE onnxruntime sees it, so a tampered or mixed-up bundle is refused instead of decoding
garbage; a download lands in a private temporary folder and is renamed into the cache only once
verified, so a crash or a race never leaves a half bundle behind.

A receiver fetches every file but encoder.onnx (a third of a bundle's bytes): the model id covers
only what decoding needs, so the rest verifies without it. The encoder is fetched into the same
folder, hash-checked against the manifest, only when asked for (embed, denoise, encoding at the
edge).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from latentwire.codec.bundle import ENCODER, MANIFEST, Bundle
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

    download(model_id, files) streams those files of a bundle (empty: all; Client wires it to the
    DownloadBundle RPC); files_of(model_id) names a bundle's files (GetModel)."""

    def __init__(self, root: Path, download: Callable[[str, Sequence[str]], Iterator[pb.BundleChunk]],
                 files_of: Callable[[str], Sequence[str]], log: logging.Logger) -> None:
        self.root = root
        self._chunks = download
        self._files_of = files_of
        self._log = log
        self._codecs: dict[str, Codec] = {}
        self._lock = threading.Lock()

    def fetch(self, model_id: str, cache_dir: str | Path | None = None, encoder: bool = False) -> Path:
        """The verified folder of model_id (full 64-digit id), downloading what it lacks: every file
        but the encoder, and the encoder too when ``encoder``; raises BundleError otherwise, leaving
        nothing unverified in the cache."""
        return self._fetch(model_id, cache_dir, encoder).path

    def codec(self, model_id: str, cache_dir: str | Path | None = None, encoder: bool = False) -> Codec:
        """A Codec for model_id (fetched, verified, loaded once per cache object); ``encoder``: one
        that can encode too (its encoder.onnx fetched if the cached copy lacks it)."""
        with self._lock:
            c = self._codecs.get(model_id)
        if c is None:
            c = Codec.load(self._fetch(model_id, cache_dir, encoder))
            with self._lock:
                self._codecs[model_id] = c
        elif encoder and not c.bundle.has_encoder:
            self._add_encoder(c.bundle)
        return c

    def _fetch(self, model_id: str, cache_dir: str | Path | None, encoder: bool) -> Bundle:
        """fetch's verified Bundle, so that loading a Codec from it does not hash every file again."""
        cache = Path(cache_dir) if cache_dir else self.root
        cache.mkdir(parents=True, exist_ok=True)
        final = cache / model_id
        if final.is_dir():
            cached: Bundle | None = None
            try:
                cached = Bundle.load(final, verify=True, require_encoder=False)
            except BundleError as e:
                self._log.warning("cached bundle %s failed verification (%s); downloading it again", final, e)
            if cached is not None and cached.model_id == model_id:
                if encoder and not cached.has_encoder:
                    self._add_encoder(cached)  # a refused encoder leaves the verified copy as it is
                return cached
            shutil.rmtree(final, ignore_errors=True)
        names = [] if encoder else [n for n in self._files_of(model_id) if n != ENCODER]
        with self._partial(cache, model_id) as tmp:
            self._download(model_id, Path(tmp), names)
            bundle = Bundle.load(tmp, verify=True, require_encoder=encoder)
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
                if encoder:
                    return self._fetch(model_id, cache_dir, encoder)  # the racer's copy may lack the encoder
        return Bundle(final, bundle.manifest)

    @staticmethod
    def _partial(cache: Path, model_id: str) -> tempfile.TemporaryDirectory[str]:
        """A private download folder, removed on the way out unless a verified download was renamed
        away by then."""
        return tempfile.TemporaryDirectory(prefix=f".partial-{model_id[:16]}-", dir=cache, ignore_cleanup_errors=True)

    def _add_encoder(self, bundle: Bundle) -> None:
        """encoder.onnx into a verified receiver's copy: checked against the manifest's hash, then
        renamed in, so the folder never holds an unverified encoder."""
        expected = bundle.manifest.raw["files"][ENCODER]
        with self._partial(bundle.path.parent, bundle.model_id) as tmp:
            actual = self._download(bundle.model_id, Path(tmp), [ENCODER])[ENCODER]
            if actual != expected:
                raise BundleError(f"the server sent an encoder.onnx with sha256 {actual[:12]}... for "
                                  f"{bundle.model_id[:12]}..., whose manifest says {expected[:12]}...: refusing it")
            os.replace(Path(tmp) / ENCODER, bundle.path / ENCODER)
        self._log.info("fetched encoder.onnx for bundle %s", bundle.model_id[:12])

    def _download(self, model_id: str, into: Path, names: Sequence[str]) -> dict[str, str]:
        """Each file's sha256 (hex), once every one has matched what the server announced."""
        files: dict[str, _Download] = {}
        try:
            for chunk in self._chunks(model_id, names):
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
        missing = [n for n in (names or [MANIFEST]) if n not in files]
        if missing:
            raise BundleError(f"the server sent no {', '.join(missing)} for {model_id[:12]}...; is it a latentwire "
                              "bundle?")
        for name, f in files.items():
            if f.written != f.size or f.digest.hexdigest() != f.sha256:
                raise BundleError(
                    f"downloaded {name} is {f.written} bytes with sha256 {f.digest.hexdigest()[:12]}..., the server "
                    f"announced {f.size} bytes / {f.sha256[:12]}...: the transfer was corrupted; retry"
                )
        return {name: f.sha256 for name, f in files.items()}

