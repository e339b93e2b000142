"""`latentwire embed`: a bundle's latent codes for a data set, as features for other models.

An autoencoder's code is a learned, compact description of a sample (feature extraction in the
autoencoder literature); this writes the encoder's continuous output (before quantization; a
VAE's posterior mean) for every sample of a source, in order, as one .npy (N, *latent_shape)
float32, plus the source's labels next to it when it has them (CODES.labels.npy).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .codec import DEFAULT_BUNDLE, Codec
from .sources import source_option


def embed_samples(codec: Codec, raw: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Codes for raw samples, in batches (memory stays flat for large sources)."""
    return codec.embed(raw, batch_size) if raw.shape[0] else np.zeros((0,), dtype=np.float32)


def add_parser(subparsers: Any, name: str = "embed") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="write a bundle's latent codes for a data set (.npy)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (default: the shipped MNIST bundle)")
    p.add_argument("--data", required=True, help="data source (MNIST folder, .npy/.npz, image folder, WFDB folder)")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE",
                   help="option for the data loader, e.g. split=test, limit=1000 (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="output .npy file of codes (N, *latent_shape)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None)
    return p


def run(args: argparse.Namespace) -> int:
    from .sources import load_source

    options = dict(args.source_option)
    source = load_source(args.data, **options)
    codec = Codec.load(args.bundle, provider="cpu", threads=args.threads)
    codes = embed_samples(codec, source.samples, args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, codes)
    written = [str(out)]
    if source.labels is not None:
        labels = out.with_name(out.name.removesuffix(".npy") + ".labels.npy")
        np.save(labels, source.labels)
        written.append(str(labels))
    print(f"embedded {codes.shape[0]} samples -> codes {tuple(codes.shape[1:])} float32: {', '.join(written)}")
    return 0
