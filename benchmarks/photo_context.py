"""Would a richer 2-D context, or other calibration samples, code photo latents in fewer bytes? (issue 11)

    python -m benchmarks.photo_context [--bundle codec/assets/bsds-gdn2d] [--data-root ../shared/data]
                                       [--levels 0,2,4,7] [--out benchmarks/results/photo-context.json]

Measured before building: the ideal code length (-log2 p under tables counted on one set of photos
plus 64 observations of each channel's marginal, as calibration does) of the latents of the 100
bsds500/val photos, with tables counted on the 200 bsds500/train photos; test photos are never
read. Context variants (each symbol's table = channel x context):

- shipped: signs of the left and upper neighbour (clipped to +-1) x activity bucket (sum over all
  channels of |left| + |above|, 8 quantile buckets), what codec/coding/context2d.py codes;
- wide: the same with the activity over five causal neighbours (left and above twice, above-left,
  left-left, above-above), all decodable on the previous diagonals;
- groups4: the channels coded in 4 groups per diagonal, each group's activity adding the magnitude
  of the earlier groups at the same position (channel-conditional coding, 4x the coder calls).

And the samples calibration counts on (shipped context): the whole photos, four 128 x 128 crops
per photo (what calibration used before), one 320 x 320 crop per photo.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.common import git_commit, machine_info, write_result
from latentwire.codec.bundle import Bundle
from latentwire.codec.coding.context2d import ACTIVITY_BUCKETS, quantile_edges
from latentwire.codec.coding.quantize import quantize_scaled
from latentwire.codec.runtime import Encoder
from latentwire.codec.sources import ImageFolder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "photo-context.json"
PRIOR_OBSERVATIONS = 64  # as codec/coding/context.py
SPAN = 48  # symbols beyond +-SPAN cost an escape: 32 bits here
ESCAPE_BITS = 32
GROUPS = 4

Maps = list[np.ndarray]  # (C, H, W) symbol maps of one level


def _shift(s: np.ndarray, di: int, dj: int) -> np.ndarray:
    """The neighbour di rows up and dj columns left of every position (zeros beyond the border)."""
    out = np.zeros_like(s)
    out[:, di:, dj:] = s[:, : s.shape[1] - di, : s.shape[2] - dj]
    return out


def _signs(s: np.ndarray) -> np.ndarray:
    return (np.clip(_shift(s, 0, 1), -1, 1) + 1) * 3 + np.clip(_shift(s, 1, 0), -1, 1) + 1


def _activity(s: np.ndarray, wide: bool) -> np.ndarray:
    a = np.abs(_shift(s, 0, 1)) + np.abs(_shift(s, 1, 0))
    if wide:
        a = 2 * a + np.abs(_shift(s, 1, 1)) + np.abs(_shift(s, 0, 2)) + np.abs(_shift(s, 2, 0))
    return a.astype(np.int64).sum(axis=0)


def _bits(fit: list[tuple[np.ndarray, np.ndarray]], measure: list[tuple[np.ndarray, np.ndarray]], n_ctx: int,
          channels: int) -> float:
    """Total ideal bits of ``measure`` (table ids, symbols) under tables counted on ``fit``."""
    width = 2 * SPAN + 1
    fi = np.concatenate([i.ravel() for i, _ in fit]).astype(np.int64)
    fv = np.clip(np.concatenate([v.ravel() for _, v in fit]), -SPAN, SPAN) + SPAN
    counts = np.bincount(fi * width + fv, minlength=channels * n_ctx * width).reshape(channels, n_ctx, width)
    marginal = counts.sum(axis=1, keepdims=True) + 0.01
    p = counts + PRIOR_OBSERVATIONS * marginal / marginal.sum(axis=2, keepdims=True)
    p = (p / p.sum(axis=2, keepdims=True)).reshape(channels * n_ctx, width)
    mi = np.concatenate([i.ravel() for i, _ in measure]).astype(np.int64)
    mv = np.concatenate([v.ravel() for _, v in measure])
    escape = np.abs(mv) > SPAN
    return float(-np.log2(p[mi, np.clip(mv, -SPAN, SPAN) + SPAN]).sum() + ESCAPE_BITS * escape.sum())


def single(fit: Maps, measure: Maps, wide: bool) -> float:
    """Bits of one context over all channels (shipped, wide)."""
    edges = np.asarray(quantile_edges(np.concatenate([_activity(s, wide).ravel() for s in fit]), ACTIVITY_BUCKETS))
    n_ctx = 9 * (len(edges) + 1)

    def ids(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ctx = _signs(s) * (len(edges) + 1) + np.searchsorted(edges, _activity(s, wide), side="right")[None]
        return np.arange(s.shape[0]).reshape(-1, 1, 1) * n_ctx + ctx, s

    return _bits([ids(s) for s in fit], [ids(s) for s in measure], n_ctx, fit[0].shape[0])


def grouped(fit: Maps, measure: Maps) -> float:
    """Bits with channel groups: each group's activity adds the earlier groups at the same position."""
    channels = fit[0].shape[0]
    bounds = np.linspace(0, channels, GROUPS + 1).astype(int)
    return sum(_group_bits(fit, measure, int(bounds[k]), int(bounds[k + 1]), channels) for k in range(GROUPS))


def _group_bits(fit: Maps, measure: Maps, lo: int, hi: int, channels: int) -> float:
    """Bits of channels lo..hi-1, whose activity adds the magnitude of the channels before lo."""
    own, earlier = slice(lo, hi), slice(0, lo)

    def act(s: np.ndarray) -> np.ndarray:
        a = _activity(s, False)
        if lo:  # the earlier groups' magnitude, scaled to about the neighbours' weight
            a = a + 2 * np.abs(s[earlier]).astype(np.int64).sum(axis=0) * channels // lo // 4
        return a

    edges = np.asarray(quantile_edges(np.concatenate([act(s).ravel() for s in fit]), ACTIVITY_BUCKETS))
    n_ctx = 9 * (len(edges) + 1)

    def ids(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = s[own]
        ctx = _signs(part) * (len(edges) + 1) + np.searchsorted(edges, act(s), side="right")[None]
        return np.arange(part.shape[0]).reshape(-1, 1, 1) * n_ctx + ctx, part

    return _bits([ids(s) for s in fit], [ids(s) for s in measure], n_ctx, hi - lo)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.photo_context", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=REPO / "codec" / "assets" / "bsds-gdn2d")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--levels", default="0,2,4,7", help="learned latent levels to measure")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    bundle = Bundle.load(args.bundle)
    enc, norm = Encoder(bundle, threads=args.threads), bundle.manifest.normalization
    folder = args.data_root / "bsds500"

    def latents(samples: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
        return [enc.encode(norm.to_model(x[None]))[0] for x in tqdm(samples, desc=f"encoding {what}", unit="sample")]

    train_photos = ImageFolder(folder, subdirs=["train"])
    y = {
        "whole": latents(train_photos.images(), "train photos"),
        "crops128x4": latents(
            list(train_photos.crops(size=(128, 128), per_image=4, seed=1).samples), "128 x 128 crops"
        ),
        "crops320x1": latents(
            list(train_photos.crops(size=(320, 320), per_image=1, seed=1).samples), "320 x 320 crops"
        ),
    }
    y_val = latents(ImageFolder(folder, subdirs=["val"]).images(), "val photos")
    levels = bundle.manifest.latent_levels
    rows = []
    for lv in (int(v) for v in args.levels.split(",")):
        gain = levels[lv].gain.reshape(-1, 1, 1)
        sym = {k: [quantize_scaled(v, 1.0, gain) for v in vs] for k, vs in y.items()}
        val = [quantize_scaled(v, 1.0, gain) for v in y_val]
        bits = {
            "shipped": single(sym["whole"], val, False),
            "wide": single(sym["whole"], val, True),
            "groups4": grouped(sym["whole"], val),
            "shipped, tables on 128x128 crops x4": single(sym["crops128x4"], val, False),
            "shipped, tables on 320x320 crops x1": single(sym["crops320x1"], val, False),
        }
        per_photo = {k: b / 8 / len(val) for k, b in bits.items()}
        row = {"level": lv, "bytes_per_val_photo": per_photo}
        base = per_photo["shipped"]
        print(f"l{lv}: " + " | ".join(f"{k} {b:.0f} B ({100 * (b / base - 1):+.1f} %)"
                                      for k, b in per_photo.items()), flush=True)
        rows.append(row)
    report = {"benchmark": "photo_context", "command": "python -m benchmarks.photo_context",
              "started": started.isoformat(), "git_commit": git_commit(), "machine": machine_info(),
              "bundle": str(args.bundle),
              "model_id": bundle.model_id, "fit": "bsds500/train (200 photos)", "measured": "bsds500/val (100 photos)",
              "rows": rows}
    print(f"wrote {write_result(args.out, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
