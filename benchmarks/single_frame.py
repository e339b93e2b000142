"""One frame at a time: what a camera or sensor that sends each frame as it comes gets.

Each op codes the same K distinct frames one by one (``Codec.encode(x[i:i+1])``, one packet per
frame) and is timed per frame, interleaved with the baselines a user would pick instead on the
same frames, in the same run: WebP and JPEG (Pillow) for 8-bit images, zstd for anything. Ratios
are baseline seconds / latentwire seconds per frame, taken per repeat (median, [min, max]): above
1 latentwire is faster. Used by benchmarks.throughput (``--single-frames``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import zstandard
from PIL import Image

from latentwire.codec.codec import Codec

WEBP = {"format": "WEBP", "quality": 80, "method": 6}  # method 6: WebP's best compression (slowest)
JPEG = {"format": "JPEG", "quality": 80, "optimize": True}
ZSTD_LEVEL = 3  # zstd's default level: what a streaming user would run per frame


@dataclass
class SingleFrameResult:
    frames: int  # distinct frames coded per op
    sample_shapes: list[list[int]]
    quality: int
    residual_quality: int | None
    settings: dict[str, str]
    bytes_per_frame: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per frame, per repeat
    frames_per_s: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # baseline s / latentwire s (median of repeats)
    ratio_spread: dict[str, list[float]] = field(default_factory=dict)


def _image(sample: np.ndarray) -> Image.Image:
    return Image.fromarray(sample[0] if sample.shape[0] == 1 else np.moveaxis(sample, 0, -1))


def _pil_ops(
    frames: Sequence[np.ndarray], opts: dict[str, object]
) -> tuple[Callable[[], object], Callable[[], object], float]:
    images = [_image(f[0]) for f in frames]
    fmt = str(opts["format"])
    kw = {k: v for k, v in opts.items() if k != "format"}

    def enc() -> list[bytes]:
        out = []
        for img in images:
            buf = io.BytesIO()
            img.save(buf, format=fmt, **kw)
            out.append(buf.getvalue())
        return out

    coded = enc()

    def dec() -> None:
        for b in coded:
            np.asarray(Image.open(io.BytesIO(b)))

    return enc, dec, float(np.mean([len(b) for b in coded]))


def _zstd_ops(frames: Sequence[np.ndarray]) -> tuple[Callable[[], object], Callable[[], object], float]:
    cctx, dctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor()
    coded = [cctx.compress(f.tobytes()) for f in frames]

    def enc() -> None:
        for f in frames:
            cctx.compress(f.tobytes())

    def dec() -> None:
        for b, f in zip(coded, frames, strict=True):
            np.frombuffer(dctx.decompress(b), dtype=f.dtype).reshape(f.shape)

    return enc, dec, float(np.mean([len(b) for b in coded]))


def _timed(fn: Callable[[], object], n: int, min_time: float) -> float:
    """Seconds per frame: repeat fn (which codes n frames) until min_time has passed."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / (calls * n)


def bench_single(codec: Codec, frames: Sequence[np.ndarray], quality: int, residual_quality: int | None,
                 repeat: int, min_time: float, tick: Callable[[], object] = lambda: None) -> SingleFrameResult:
    """frames: K arrays of shape (1, *sample_shape) (sizes may differ for any-size bundles)."""
    shapes = [list(s) for s in sorted({tuple(f.shape[1:]) for f in frames})]
    res = SingleFrameResult(frames=len(frames), sample_shapes=shapes,
                            quality=quality, residual_quality=residual_quality,
                            settings={"latentwire": f"q{quality}" + (f", residual q{residual_quality}"
                                                                     if residual_quality is not None else ""),
                                      "zstd": f"level {ZSTD_LEVEL}"})
    ops: dict[str, Callable[[], object]] = {}
    for name, q in (("lw", quality), ("lw_res", residual_quality)):
        if q is None:
            continue
        packets = [codec.encode(f, quality=q) for f in frames]
        res.bytes_per_frame[name] = float(np.mean([len(p) for p in packets]))
        ops[f"{name}_enc"] = partial(lambda q: [codec.encode(f, quality=q) for f in frames], q)
        ops[f"{name}_dec"] = partial(lambda packets: [codec.decode(p) for p in packets], packets)
    images = all(f.dtype == np.uint8 and f.ndim == 4 and f.shape[1] in (1, 3) for f in frames)
    baselines = [("webp", WEBP), ("jpeg", JPEG)] if images else []
    for name, opts in baselines:
        enc, dec, size = _pil_ops(frames, opts)
        ops[f"{name}_enc"], ops[f"{name}_dec"], res.bytes_per_frame[name] = enc, dec, size
        res.settings[name] = ", ".join(f"{k}={v}" for k, v in opts.items() if k != "format")
    enc, dec, size = _zstd_ops(frames)
    ops["zstd_enc"], ops["zstd_dec"], res.bytes_per_frame["zstd"] = enc, dec, size
    res.seconds = {k: [] for k in ops}
    for fn in ops.values():
        fn()  # warm-up: sessions, bindings, caches
    names = list(ops)
    for r in range(repeat):
        for name in names[r % len(names):] + names[: r % len(names)]:
            res.seconds[name].append(_timed(ops[name], len(frames), min_time))
        tick()
    for name, ts in res.seconds.items():
        res.frames_per_s[name] = 1.0 / float(np.median(ts))
    for lw in ("lw", "lw_res"):
        for base in [b for b, _ in baselines] + ["zstd"]:
            for op in ("enc", "dec"):
                a, b = f"{lw}_{op}", f"{base}_{op}"
                if a in res.seconds:
                    per = [tb / ta for ta, tb in zip(res.seconds[a], res.seconds[b], strict=True)]
                    res.ratios[f"{b}/{a}"] = float(np.median(per))
                    res.ratio_spread[f"{b}/{a}"] = [float(min(per)), float(max(per))]
    return res


def print_single(res: SingleFrameResult) -> None:
    print(f"\nsingle frames ({res.frames} distinct, shapes {res.sample_shapes}; {res.settings}):")
    print(f"{'op':<14} {'frames/s':>10} {'bytes/frame':>12}")
    for name in res.frames_per_s:
        size = res.bytes_per_frame.get(name.rsplit("_", 1)[0])
        print(f"{name:<14} {res.frames_per_s[name]:>10.0f} {'' if size is None else f'{size:12.1f}'}")
    print("speed vs baselines (baseline s / latentwire s per frame; > 1: latentwire faster):")
    for name, v in res.ratios.items():
        lo, hi = res.ratio_spread[name]
        print(f"  {name:<22} {v:6.2f}x  [{lo:.2f}, {hi:.2f}]")
