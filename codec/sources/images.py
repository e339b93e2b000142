"""A folder of photos (PNG/JPEG/...) as training crops or whole evaluation images.

Photos come in different sizes, so training takes fixed-size random crops (a batchable
SampleSet) while evaluation takes each image whole (a list, one (C,H,W) array per file).
The file list is recursive and sorted by relative path, so a seed gives the same crops on
every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..normalization import Normalization
from .sampleset import SampleSet

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
PIXEL_NORMALIZATION = Normalization(offset=0.0, scale=255.0, raw_dtype="uint8", raw_min=0.0, raw_max=255.0)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under folder, recursively, sorted by relative POSIX path (hidden files skipped)."""
    folder = Path(folder)
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """One image as uint8 (C,H,W): C=3 for RGB, 1 for L. EXIF rotation is applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: cannot read the image ({e})") from e
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageFolder:
    """The images under one folder. mode: "RGB" (3 channels) or "L" (grey, 1 channel).

    subdirs: only these sub-folders of path (e.g. ["train", "val"] of a data set whose test/
    folder must stay unseen); paths stay relative to path, so crops and file lists do not change
    meaning when a folder is added.
    """

    def __init__(self, path: str | Path, mode: str = "RGB", subdirs: Sequence[str] | str | None = None) -> None:
        if mode not in ("RGB", "L"):
            raise InputError(f"image mode must be 'RGB' or 'L', got {mode!r}")
        self.root = Path(path)
        if not self.root.is_dir():
            raise InputError(f"image folder not found: {self.root}")
        self.mode = mode
        self.subdirs = [subdirs] if isinstance(subdirs, str) else (list(subdirs) if subdirs is not None else None)
        if self.subdirs is None:
            self.paths: list[Path] = list_images(self.root)
        else:
            missing = [d for d in self.subdirs if not (self.root / d).is_dir()]
            if missing:
                raise InputError(f"{self.root}: sub-folders {missing} not found (subdirs={self.subdirs})")
            found = {p for d in self.subdirs for p in list_images(self.root / d)}
            self.paths = sorted(found, key=lambda p: p.relative_to(self.root).as_posix())
        if not self.paths:
            raise InputError(
                f"{self.root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found, searched recursively"
            )

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    @property
    def normalization(self) -> Normalization:
        return PIXEL_NORMALIZATION

    def __len__(self) -> int:
        return len(self.paths)

    def images(self, limit: int | None = None) -> list[np.ndarray]:
        """Whole images, uint8 (C,H,W) each, in path order (sizes may differ)."""
        return [read_image(p, self.mode) for p in self.paths[:limit]]

    def crops(
        self, size: tuple[int, int] = (64, 64), per_image: int = 8, seed: int = 0, limit: int | None = None,
        scale: tuple[float, float] = (1.0, 1.0),
    ) -> SampleSet:
        """per_image random (h,w) crops from each image, uint8 (N,C,h,w); groups = image index,
        so a split never puts crops of one photo on both sides.

        scale=(lo, hi): each crop comes from the image resized by a factor drawn from [lo, hi]
        (Lanczos). Downscaling averages away the source's own JPEG artifacts and sensor noise,
        so a photo codec learns content rather than one camera's noise (common practice when
        training learned image codecs on JPEG-compressed photos)."""
        h, w = int(size[0]), int(size[1])
        if h <= 0 or w <= 0 or per_image <= 0:
            raise InputError(f"crop size and per_image must be positive, got size={size}, per_image={per_image}")
        lo, hi = (float(scale[0]), float(scale[1])) if len(scale) == 2 else (float("nan"),) * 2
        if not 0 < lo <= hi <= 1:
            raise InputError(f"scale must be two factors 0 < lo <= hi <= 1, got {scale}")
        rng = np.random.default_rng(seed)
        paths = self.paths[:limit]
        out = np.empty((len(paths) * per_image, self.channels, h, w), dtype=np.uint8)
        groups = np.repeat(np.arange(len(paths), dtype=np.int64), per_image)
        for i, p in enumerate(paths):
            img = read_image(p, self.mode)
            H, W = img.shape[1:]
            if H < h or W < w:
                raise InputError(f"{p}: image is {H}x{W}, smaller than the requested {h}x{w} crop; pick a smaller size")
            if (lo, hi) == (1.0, 1.0):
                tops = rng.integers(0, H - h + 1, size=per_image)
                lefts = rng.integers(0, W - w + 1, size=per_image)
                for k in range(per_image):
                    out[i * per_image + k] = img[:, tops[k] : tops[k] + h, lefts[k] : lefts[k] + w]
                continue
            for k in range(per_image):
                out[i * per_image + k] = _scaled_crop(img, rng.uniform(lo, hi), h, w, rng)
        return SampleSet(
            samples=out,
            normalization=PIXEL_NORMALIZATION,
            groups=groups,
            name=f"{self.root.name}-crops{h}x{w}",
            meta={"source": "images", "folder": str(self.root), "subdirs": self.subdirs, "mode": self.mode,
                  "size": [h, w], "per_image": per_image, "seed": seed, "scale": [lo, hi],
                  "files": [p.relative_to(self.root).as_posix() for p in paths]},
        )


def _scaled_crop(img: np.ndarray, factor: float, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One (h, w) crop of img resized by factor (never below the crop size)."""
    from PIL import Image

    H, W = img.shape[1:]
    factor = max(factor, h / H, w / W)
    size = (max(w, round(W * factor)), max(h, round(H * factor)))
    hwc = img.transpose(1, 2, 0)
    pil = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
    small = np.asarray(pil.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    small = small[:, :, None] if small.ndim == 2 else small
    top = int(rng.integers(0, small.shape[0] - h + 1))
    left = int(rng.integers(0, small.shape[1] - w + 1))
    return small[top : top + h, left : left + w].transpose(2, 0, 1)
