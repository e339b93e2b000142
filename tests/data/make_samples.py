"""Rebuild the small data samples shipped with the repository from the full data sets.

Tests and the packaged demo must run on a fresh clone without ../shared/data, so a few
kilobytes of each source live in the repository. Outputs are deterministic (gzip mtime 0, fixed
zip timestamps, PNG without metadata): re-running this script reproduces the committed bytes.

    .venv/bin/python tests/data/make_samples.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from latentwire.codec.sources import load_mnist, load_record, read_idx, write_idx, write_record
from latentwire.codec.sources.idx import mnist_files

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

MNIST_COUNTS = {"train": 1000, "test": 500}
ECG_CUTS = {"100": 120, "101": 120, "102": 30, "103": 30}  # record -> seconds kept from the start
BSDS_SIZE_LANDSCAPE = (96, 64)  # (w, h) for PIL
BSDS_PICK = {"landscape": 2, "portrait": 1}
ASSET_TEST_DIGITS = 1000


def make_mnist(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in MNIST_COUNTS.items():
        images, labels = mnist_files(src, split)
        assert labels is not None
        for path in (images, labels):
            name = path.name if path.name.endswith(".gz") else path.name + ".gz"
            write_idx(dst / name.replace(".idx", "-idx"), read_idx(path, limit=n))


def make_mitdb(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for record, seconds in ECG_CUTS.items():
        signals, header = load_record(src / record)
        n = int(round(seconds * header.fs))
        header.comments = header.comments + [
            f"# latentwire sample: first {seconds} s ({n} samples) of MIT-BIH record {record}, re-encoded as format 212"
        ]
        write_record(dst, header, signals[:, :n])
        check, _ = load_record(dst / record)  # verifies initial values and checksums
        assert np.array_equal(check, signals[:, :n])


def make_bsds(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    wanted = dict(BSDS_PICK)
    for path in sorted((src / "test").glob("*.jpg")):
        with Image.open(path) as im:
            orientation = "landscape" if im.width >= im.height else "portrait"
            if wanted[orientation] == 0:
                continue
            wanted[orientation] -= 1
            size = BSDS_SIZE_LANDSCAPE if orientation == "landscape" else BSDS_SIZE_LANDSCAPE[::-1]
            im.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(dst / f"{path.stem}.png", optimize=True)
        if not any(wanted.values()):
            break


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but with fixed zip timestamps so the file's bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def make_asset(src: Path, dst: Path) -> None:
    ss = load_mnist(src, "test", limit=ASSET_TEST_DIGITS)
    save_npz_deterministic(dst, samples=ss.samples, labels=ss.labels.astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    make_mnist(args.data / "mnist", HERE / "mnist")
    make_mitdb(args.data / "mitdb", HERE / "mitdb")
    make_bsds(args.data / "bsds500", HERE / "bsds")
    make_asset(args.data / "mnist", REPO / "codec" / "assets" / "mnist_test_sample.npz")


if __name__ == "__main__":
    main()
