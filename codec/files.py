"""`latentwire encode` / `latentwire decode`: arrays, images or records <-> a .lw file.

A .lw file is packets stored back to back. Each packet is self-delimiting and checksummed
(FORMAT.md), so a file needs no framing of its own, can be appended to, and a damaged packet is
reported at its offset instead of silently corrupting what follows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .codec import Codec
from .coding.bitstream import iter_packets
from .errors import LatentwireError
from .residual_levels import RESIDUAL_CHOICES
from .sources import ImageFolder, load_source, read_image, source_option
from .sources.images import IMAGE_SUFFIXES

DEFAULT_BATCH = 256


def _batches(samples: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, samples.shape[0], batch):
        yield samples[i : i + batch]


def input_batches(codec: Codec, path: Path, batch: int, options: dict[str, Any]) -> tuple[int, Iterator[np.ndarray]]:
    """(frame count, batches of equal-shape raw samples) from any supported input.

    Whole images go one per packet when the model takes any size (conv2d): their sizes differ.
    """
    channels = codec.sample_shape[0]
    mode = "RGB" if channels == 3 else "L"
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        img = read_image(path, mode)
        return 1, iter([img[None]])
    if path.is_dir() and codec.manifest.spatial_dims == 2 and None in codec.sample_shape:
        try:
            images = ImageFolder(path, mode=mode).images()
        except LatentwireError:
            images = None
        if images is not None:
            return len(images), (img[None] for img in images)
    samples = load_source(path, **options).samples
    return samples.shape[0], _batches(samples, batch)


def encode_file(
    codec: Codec, source: Path, out: Path, quality: int | None, max_error: int | None, batch: int,
    options: dict[str, Any], progress: bool = True, residual_mode: str = "auto",
) -> dict[str, Any]:
    count, batches = input_batches(codec, source, batch, options)
    written = raw_bytes = packets = 0
    with open(out, "wb") as f, tqdm(total=count, unit="frame", desc="encode", disable=not progress) as bar:
        for raw in batches:
            packet = codec.encode(raw, quality=quality, max_error=max_error, residual_mode=residual_mode)
            f.write(packet)
            written += len(packet)
            raw_bytes += raw.nbytes
            packets += 1
            bar.update(raw.shape[0])
    return {
        "input": str(source), "output": str(out), "model_id": codec.model_id, "frames": count, "packets": packets,
        "bytes": written, "raw_bytes": raw_bytes, "bytes_per_frame": written / max(count, 1),
        "ratio": raw_bytes / max(written, 1),
    }


def decode_file(codec: Codec, source: Path, out: Path, progress: bool = True) -> dict[str, Any]:
    data = source.read_bytes()
    arrays: list[np.ndarray] = []
    with tqdm(unit="frame", desc="decode", disable=not progress) as bar:
        for header, packet in iter_packets(data, expected_model_id=codec.model_id):
            arrays.append(codec.decode(packet))
            bar.update(header.count)
    frames = sum(a.shape[0] for a in arrays)
    if out.suffix == ".npy":
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) != 1:
            raise LatentwireError(f"{source} holds frames of {len(shapes)} shapes; write a folder of PNGs or .npz")
        np.save(out, np.concatenate(arrays))
    elif out.suffix == ".npz":
        # the keys are array names; mypy matches ** against the stub's allow_pickle: bool as well
        np.savez_compressed(out, **{f"packet_{i:06d}": a for i, a in enumerate(arrays)})  # type: ignore[arg-type]
    else:
        _write_pngs(arrays, out)
    return {
        "input": str(source),
        "output": str(out),
        "model_id": codec.model_id,
        "frames": frames,
        "packets": len(arrays),
    }


def _write_pngs(arrays: Sequence[np.ndarray], folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for batch in arrays:
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1] not in (1, 3):
            raise LatentwireError(
                f"PNG output needs uint8 images (N,1|3,H,W), got {batch.dtype} {batch.shape}; use .npy"
            )
        for img in batch:
            Image.fromarray(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)).save(folder / f"{n:06d}.png")
            n += 1


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    if name == "encode":
        p = subparsers.add_parser("encode", help="encode arrays, images or records into a .lw file")
        p.add_argument("input", type=Path, help=".npy/.npz, IDX file or MNIST folder, image file/folder, WFDB folder")
        p.add_argument("--out", type=Path, required=True, help="the .lw file to write")
        p.add_argument("--quality", type=int, default=None, help="quality level index (default: the bundle's)")
        p.add_argument(
            "--max-error", type=int, default=None, help="near-lossless: max absolute error per sample, raw units"
        )
        p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="frames per packet (coded jointly)")
        p.add_argument("--residual-mode", choices=RESIDUAL_CHOICES, default="auto",
                       help="max-error levels of a bundle with classical tables: each frame with its latent or "
                            "classical, whichever costs less (auto), or every frame one way")
        p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE")
    else:
        p = subparsers.add_parser("decode", help="decode a .lw file into arrays or PNG images")
        p.add_argument("input", type=Path, help="the .lw file")
        p.add_argument("--out", type=Path, required=True, help="out.npy, out.npz, or a folder for PNGs")
    p.add_argument("--bundle", default="default", help="codec bundle directory (default: the packaged MNIST codec)")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        codec = Codec.load(args.bundle, provider=args.provider)
        if args.command == "encode":
            result = encode_file(codec, args.input, args.out, args.quality, args.max_error, args.batch,
                                 dict(args.source_option), progress=not args.no_progress,
                                 residual_mode=args.residual_mode)
        else:
            result = decode_file(codec, args.input, args.out, progress=not args.no_progress)
    except LatentwireError as exc:
        print(f"latentwire {args.command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
