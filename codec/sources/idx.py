"""IDX files (the MNIST container), gzip or plain, parsed with numpy alone.

Parsed by hand rather than through a dataset package so the runtime path stays torch-free and
every malformed file fails with a message that says which byte count or field is wrong.
Layout: 2 zero bytes, a dtype code, the number of dims, dims as big-endian uint32, then the
big-endian data in C order.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError
from ..normalization import Normalization
from .sampleset import SampleSet

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

MNIST_NORMALIZATION = Normalization(offset=0.0, scale=255.0, raw_dtype="uint8", raw_min=0.0, raw_max=255.0)


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        head = f.read(2)
    if head == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    try:
        data = f.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise InputError(f"{path}: cannot read the {what}: the gzip stream is damaged or truncated ({e})") from e
    if len(data) != n:
        raise InputError(
            f"{path}: truncated IDX file: expected {n} bytes of {what}, found only {len(data)} "
            "(re-download or re-copy the file)"
        )
    return data


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The array stored in one IDX file (native byte order). limit: read only the first `limit`
    entries along axis 0 (the rest of the file is not decompressed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"IDX file not found: {path}")
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    with _open(path) as f:
        header = _read_exact(f, 4, path, "header")
        if header[0] != 0 or header[1] != 0:
            raise InputError(
                f"{path}: not an IDX file: bad magic {header.hex()} (an IDX file starts with two zero bytes, "
                "a dtype code and the number of dimensions)"
            )
        code, ndim = header[2], header[3]
        if code not in _DTYPES:
            known = ", ".join(f"0x{c:02X}" for c in _DTYPES)
            raise InputError(f"{path}: unknown IDX dtype code 0x{code:02X} (known: {known})")
        if ndim == 0:
            raise InputError(f"{path}: IDX header declares 0 dimensions")
        dims = [int(d) for d in np.frombuffer(_read_exact(f, 4 * ndim, path, "dimension sizes"), dtype=">u4")]
        dtype = _DTYPES[code]
        n = dims[0] if limit is None else min(dims[0], limit)
        item = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
        data = _read_exact(f, n * item, path, f"data ({n} x {dims[1:]} {dtype.name})")
        if limit is None or limit >= dims[0]:
            try:
                trailing = f.read(1)
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
                raise InputError(f"{path}: the gzip stream is damaged after the data ({e})") from e
            if trailing:
                raise InputError(
                    f"{path}: IDX file has bytes after the {dims} {dtype.name} data the header declares "
                    "(wrong header or concatenated files)"
                )
    arr = np.frombuffer(data, dtype=dtype).reshape([n, *dims[1:]])
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_idx(
    images_path: str | Path, labels_path: str | Path | None = None, limit: int | None = None
) -> SampleSet:
    """Images (N,1,H,W) uint8 with MNIST normalization (offset 0, scale 255); labels optional."""
    images = read_idx(images_path, limit=limit)
    if images.dtype != np.uint8:
        raise InputError(f"{images_path}: expected uint8 pixels, the IDX file holds {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim != 4:
        raise InputError(f"{images_path}: expected (N,H,W) or (N,C,H,W) images, got shape {images.shape}")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path, limit=limit)
        if labels.ndim != 1:
            raise InputError(f"{labels_path}: labels must be 1-D, got shape {labels.shape}")
        if labels.shape[0] != images.shape[0]:
            raise InputError(
                f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
            )
    return SampleSet(
        samples=images,
        normalization=MNIST_NORMALIZATION,
        labels=labels,
        name=Path(images_path).name,
        meta={"source": "idx", "path": str(images_path)},
    )


_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _find(folder: Path, stem: str) -> Path | None:
    """The canonical name, its gzip, or the dotted variant some mirrors use (train-images.idx3-ubyte)."""
    dotted = stem.replace("-idx", ".idx", 1)
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def mnist_files(folder: str | Path, split: str = "train") -> tuple[Path, Path | None]:
    """(images, labels or None) for one MNIST split in a folder laid out like the official download."""
    folder = Path(folder)
    if split not in _MNIST_PREFIX:
        raise InputError(f"MNIST split must be one of {sorted(_MNIST_PREFIX)}, got {split!r}")
    prefix = _MNIST_PREFIX[split]
    images = _find(folder, f"{prefix}-images-idx3-ubyte")
    if images is None:
        raise InputError(f"{folder}: no {prefix}-images-idx3-ubyte[.gz] for MNIST split {split!r}")
    return images, _find(folder, f"{prefix}-labels-idx1-ubyte")


def load_mnist(folder: str | Path, split: str = "train", limit: int | None = None) -> SampleSet:
    """One MNIST split as (N,1,28,28) uint8 with labels when the labels file is present."""
    images, labels = mnist_files(folder, split)
    ss = load_idx(images, labels, limit=limit)
    # named after its folder, so Fashion-MNIST in the same layout is recorded as what it is
    dataset = Path(folder).resolve().name or "mnist"
    ss.name = f"{dataset}-{split}"
    ss.meta.update({"source": "mnist", "dataset": dataset, "split": split, "folder": str(folder)})
    return ss


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write an IDX file (gzip when the name ends in .gz, deterministic: mtime 0)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {v.newbyteorder("=").str[1:]: k for k, v in _DTYPES.items()}
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in codes or array.ndim == 0 or array.ndim > 255:
        raise InputError(f"cannot store dtype {array.dtype} / {array.ndim} dims in IDX")
    code = codes[key]
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    )
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(payload)
        payload = buf.getvalue()
    path.write_bytes(payload)
