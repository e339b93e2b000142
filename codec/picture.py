"""Pictures of what a codec delivers: originals beside their reconstructions at each level.

People judge a photo or a heartbeat codec by looking, so `latentwire eval --picture` writes one
PNG: a row per sample, the original first, then every level's reconstruction with its size and
fidelity underneath. Images are drawn as images (grey or RGB), series (ECG leads) as line plots.
Pillow only, so the runtime side (no matplotlib, no torch) can draw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CAPTION_HEIGHT = 26
PAD = 6
SERIES_SIZE = (360, 120)  # width, height of one series tile
MIN_TILE = 96  # small images (digits) are enlarged to at least this many pixels (nearest neighbour)


@dataclass(frozen=True)
class Tile:
    """One cell: a sample (C, H, W) image or (C, L) series, and the caption under it."""

    sample: np.ndarray
    caption: str


def _image_tile(sample: np.ndarray, raw_min: float, raw_max: float):  # -> PIL.Image.Image
    from PIL import Image

    x = (sample.astype(np.float64) - raw_min) / max(raw_max - raw_min, 1e-12)
    arr = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr[:3].transpose(1, 2, 0))
    scale = max(1, -(-MIN_TILE // max(1, min(img.size))))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def _series_tile(sample: np.ndarray, reference: np.ndarray):  # -> PIL.Image.Image
    """Each channel (lead) a polyline; the y scale comes from the reference (the original), so
    every reconstruction in a row is drawn on the same axes."""
    from PIL import Image, ImageDraw

    w, h = SERIES_SIZE
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    leads = sample.shape[0]
    band = h / leads
    colours = ["#1f4e9e", "#b03a2e", "#1e8449", "#7d3c98"]
    for c in range(leads):
        ref = reference[c].astype(np.float64)
        lo, hi = float(ref.min()), float(ref.max())
        span = max(hi - lo, 1e-9)
        v = sample[c].astype(np.float64)
        xs = np.linspace(0, w - 1, v.size)
        ys = band * c + band - 2 - (np.clip(v, lo - span, hi + span) - lo) / span * (band - 4)
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colours[c % len(colours)], width=1)
    return img


def grid(rows: Sequence[Sequence[Tile]], path: str | Path, *, raw_min: float, raw_max: float,
         title: str = "") -> Path:
    """Write rows of tiles (the first tile of a row is its original) as one PNG at ``path``."""
    from PIL import Image, ImageDraw

    if not rows or not rows[0]:
        raise ValueError("a picture needs at least one row with one tile")
    drawn = []
    for row in rows:
        ref = row[0].sample
        series = ref.ndim == 2
        drawn.append([(_series_tile(t.sample, ref) if series else _image_tile(t.sample, raw_min, raw_max), t.caption)
                      for t in row])
    cols = max(len(r) for r in drawn)
    cell_w = max(img.width for r in drawn for img, _ in r)
    heights = [max(img.height for img, _ in r) + CAPTION_HEIGHT for r in drawn]
    top = 18 if title else 0
    width = cols * (cell_w + PAD) + PAD
    if title:
        width = max(width, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title)) + 2 * PAD)
    canvas = Image.new("RGB", (width, top + sum(heights) + PAD * (len(drawn) + 1)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, 3), title, fill="black")
    y = top + PAD
    for tiles, h in zip(drawn, heights, strict=True):
        for k, (img, caption) in enumerate(tiles):
            x = PAD + k * (cell_w + PAD)
            canvas.paste(img, (x, y))
            for i, line in enumerate(caption.split("\n")[:2]):
                draw.text((x, y + img.height + 1 + 12 * i), line, fill="black")
        y += h + PAD
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
