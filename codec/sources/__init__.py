"""Data sources: everything the codec can learn from, turned into one `SampleSet` shape.

`load_source(path)` guesses the kind from what is on disk, so the CLI can take a bare path;
the per-kind loaders are public for callers that want their options spelled out.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from .arrays import infer_normalization, load_array, save_array
from .idx import MNIST_NORMALIZATION, load_idx, load_mnist, mnist_files, read_idx, write_idx
from .images import PIXEL_NORMALIZATION, ImageFolder, list_images, read_image
from .sampleset import SampleSet
from .wfdb import (
    SignalSpec,
    WfdbHeader,
    checksum16,
    decode_212,
    ecg_normalization,
    encode_212,
    load_ecg_windows,
    load_record,
    parse_header,
    verify_record,
    write_record,
)

__all__ = [
    "SampleSet", "load_source", "shipped_digits", "detect_kind", "KINDS", "default_data_root", "sample_data_root",
    "load_idx", "load_mnist", "read_idx", "write_idx", "mnist_files", "MNIST_NORMALIZATION",
    "load_array", "save_array", "infer_normalization",
    "ImageFolder", "list_images", "read_image", "PIXEL_NORMALIZATION",
    "load_record", "load_ecg_windows", "parse_header", "verify_record", "write_record", "ecg_normalization",
    "decode_212", "encode_212", "checksum16", "WfdbHeader", "SignalSpec",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def shipped_digits() -> SampleSet:
    """The first 1000 MNIST test digits (uint8 (N,1,28,28), with labels), shipped inside the
    package: real data for a first try on any install, no download and no checkout needed."""
    from importlib import resources

    import numpy as np

    with resources.files("latentwire.codec.assets").joinpath("mnist_test_sample.npz").open("rb") as f:
        data = np.load(f)
        samples, labels = data["samples"], data["labels"]
    return SampleSet(samples=samples, normalization=MNIST_NORMALIZATION, labels=labels, name="mnist-test-sample",
                     meta={"source": "mnist", "dataset": "mnist", "split": "test", "shipped": True})


def default_data_root() -> Path | None:
    """Where the full data sets live: $LATENTWIRE_DATA, else ../shared/data next to the checkout
    (if it exists), else None (then use the small samples in sample_data_root())."""
    env = os.environ.get("LATENTWIRE_DATA")
    if env:
        return Path(env).expanduser()
    shared = _REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def sample_data_root() -> Path:
    """The small samples shipped with the repository (tests/data; present in a checkout only)."""
    return _REPO_ROOT / "tests" / "data"


def _mnist(path: Path, split: str = "train", limit: int | None = None) -> SampleSet:
    return load_mnist(path, split=split, limit=limit)


def _idx(path: Path, labels_path: str | Path | None = None, limit: int | None = None) -> SampleSet:
    return load_idx(path, labels_path, limit=limit)


def _images(path: Path, size: tuple[int, int] = (64, 64), per_image: int = 8, seed: int = 0,
            mode: str = "RGB", limit: int | None = None, subdirs: Any = None, scale: Any = (1.0, 1.0)) -> SampleSet:
    scale = (float(scale), float(scale)) if isinstance(scale, (int, float)) else tuple(float(v) for v in scale)
    h, w = size
    return ImageFolder(path, mode=mode, subdirs=subdirs).crops(size=(h, w), per_image=per_image, seed=seed,
                                                               limit=limit, scale=scale)


def _ecg(path: Path, records: Any = None, window: int = 1024, stride: int | None = None,
         limit_per_record: int | None = None) -> SampleSet:
    # CLIs hand options over as text: "records=100,101" must mean two records, not seven characters
    if isinstance(records, str):
        records = [r.strip() for r in records.split(",") if r.strip()]
    elif isinstance(records, int):
        records = [records]
    return load_ecg_windows(path, records=records, window=window, stride=stride, limit_per_record=limit_per_record)


KINDS: dict[str, Callable[..., SampleSet]] = {
    "mnist": _mnist,  # folder with train-/t10k-images-idx3-ubyte[.gz]; options: split, limit
    "idx": _idx,  # one IDX file; options: labels_path, limit
    "arrays": load_array,  # .npy/.npz; options: key, labels_key, groups_key, normalization, add_channel_axis, limit
    "images": _images,  # folder of photos -> random crops; options: size, per_image, seed, mode, limit, subdirs, scale
    "ecg": _ecg,  # folder (or .hea) of WFDB records; options: records, window, stride, limit_per_record
}


def detect_kind(path: str | Path) -> str:
    """The KINDS entry for what is at path; InputError when nothing fits."""
    p = Path(path)
    if p.is_file():
        name = p.name.lower()
        if p.suffix in (".npy", ".npz"):
            return "arrays"
        if p.suffix == ".hea":
            return "ecg"
        if p.suffix in (".gz", ".idx") or "-idx" in name or ".idx" in name:
            return "idx"
    elif p.is_dir():
        try:
            mnist_files(p, "train")
            return "mnist"
        except InputError:
            pass
        try:
            mnist_files(p, "test")
            return "mnist"
        except InputError:
            pass
        if any(p.glob("*.hea")):
            return "ecg"
        if list_images(p):
            return "images"
    else:
        raise InputError(f"data source not found: {p}")
    raise InputError(
        f"cannot tell what kind of data {p} holds; known kinds: {', '.join(KINDS)} "
        "(MNIST folder, .gz/.idx file, .npy/.npz, folder of images, folder of WFDB .hea/.dat); pass kind="
    )



def source_option(text: str) -> tuple[str, Any]:
    """argparse type for `--source-option KEY=VALUE`: the value as int, else float, a comma list as a
    list (ints where they parse: size=48,48, subdirs=train,val), else text."""
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--source-option takes KEY=VALUE, got {text!r}")
    for conv in (int, float):
        try:
            return key, conv(value)
        except ValueError:
            pass
    if "," in value:
        return key, [int(v) if v.strip().lstrip("-").isdigit() else v for v in value.split(",")]
    return key, value

def load_source(path: str | Path, *, kind: str | None = None, **options: Any) -> SampleSet:
    """Load any supported source as a SampleSet; kind is detected when not given."""
    p = Path(path)
    if kind is None:
        kind = detect_kind(p)
    if kind not in KINDS:
        raise InputError(f"unknown source kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if kind == "mnist" and "split" not in options:
        try:
            mnist_files(p, "train")
        except InputError:
            options["split"] = "test"
    loader = KINDS[kind]
    allowed = [n for n in inspect.signature(loader).parameters if n != "path"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"options {unknown} do not apply to {kind!r} sources; allowed: {allowed}")
    return loader(p, **options)
