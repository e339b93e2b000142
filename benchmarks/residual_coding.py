"""Context-coded residuals (codec/coding/residual_coding.py) against the tables they replace, on
validation data, for issue 24 part 2.

Both sides are fit on the same training samples and measured on held-back ones, with the shipped
bundle's own prediction (its reference level):

- bsds: tables fit on one 320 x 320 crop per bsds500/train photo (calibration's recipe, seed 1,
  without val), measured on the 100 whole bsds500/val photos. Before: residual.py's bucket tables
  with residual_context.py's previous-sample tables (what the photo bundle shipped for its ladder);
  after: the colour wavefront.
- mnist: fit on the first 55,000 training digits, measured on the last 5,000 in packets of 256.
  Before: prediction-value (residual_value.py, what the digit bundle shipped until the
  checkerboard); after: value-checkerboard (residual_checker.py).

Reported per max error: the residual part's bits per pixel (photos) or bytes per digit, the
latent part for scale, and seconds per photo / digits per second of the residual stage alone,
each way (best of --repeats; the machine is shared). Usage:

    python -m benchmarks.residual_coding --dataset bsds --out benchmarks/results/residual-coding-bsds.json
    python -m benchmarks.residual_coding --dataset mnist --out benchmarks/results/residual-coding-mnist.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import git_commit, machine_info, write_result
from latentwire.codec.codec import Codec
from latentwire.codec.coding.coder import StreamDecoder, StreamEncoder
from latentwire.codec.coding.payload import encode_payload
from latentwire.codec.coding.residual import ContextSpec, ResidualModel
from latentwire.codec.coding.residual_checker import ResidualCheckerContext
from latentwire.codec.coding.residual_colour import ResidualColourContext
from latentwire.codec.coding.residual_context import ResidualContext
from latentwire.codec.coding.residual_value import ResidualValueContext
from latentwire.codec.sources import ImageFolder, load_mnist

REPO = Path(__file__).resolve().parents[1]
MAX_ERRORS = {"bsds": (0, 1, 2, 4), "mnist": (0, 1, 2, 3, 4, 8, 16)}
Writer = Callable[[StreamEncoder, np.ndarray, np.ndarray, int], object]
Reader = Callable[[StreamDecoder, np.ndarray, int], np.ndarray]


def _predict(codec: Codec, raw: np.ndarray) -> tuple[np.ndarray, int]:
    """(what residuals are taken against: the max-error levels' latent grid, latent payload bytes)."""
    grid = codec.residual_grid
    symbols = codec.quantize_latents(codec._encode_model(codec.normalization.to_model(raw)), grid)
    latent, _ = encode_payload(codec.tables, symbols, codec.manifest.channel_axis, latent_step=grid.step,
                               latent_level=grid.level, hyper=codec.hyper)
    return codec._residual_prediction(symbols, grid, raw.shape[1:]), len(latent)


def _measure(batches: Sequence[tuple[np.ndarray, np.ndarray]], d: int, write: Writer, read: Reader,
             repeats: int) -> tuple[int, float, float]:
    """(payload bytes, encode seconds, decode seconds) over every batch, best of repeats."""
    total, enc_s, dec_s = 0, float("inf"), float("inf")
    for _ in range(repeats):
        total, te, td = 0, 0.0, 0.0
        for x, f in batches:
            t0 = time.perf_counter()
            enc = StreamEncoder()
            write(enc, x, f, d)
            data = enc.finish()
            t1 = time.perf_counter()
            out = read(StreamDecoder(data), f, d)
            td += time.perf_counter() - t1
            te += t1 - t0
            total += len(data)
            if int(np.abs(out.astype(np.int64) - x.astype(np.int64)).max()) > d:
                raise AssertionError(f"max error {d} broken")
        enc_s, dec_s = min(enc_s, te), min(dec_s, td)
    return total, enc_s, dec_s


def run_bsds(bundle: Path, data: Path, repeats: int, limit: int | None) -> dict[str, Any]:
    codec = Codec.load(bundle, provider="cpu", threads=2)
    assert codec.tables.residual is not None
    spec = codec.tables.residual.spec
    crops = ImageFolder(data / "bsds500", subdirs=["train"]).crops(size=(320, 320), per_image=1, seed=1).samples
    fit_f = np.concatenate([_predict(codec, crops[i : i + 4])[0] for i in range(0, len(crops), 4)])
    val = ImageFolder(data / "bsds500", subdirs=["val"]).images(limit)
    pairs, latent = [], 0
    for img in val:
        f, nbytes = _predict(codec, img[None])
        pairs.append((img[None], f))
        latent += nbytes
    pixels = sum(x.shape[2] * x.shape[3] for x, _ in pairs)
    ds = MAX_ERRORS["bsds"]
    model = ResidualModel.fit(ContextSpec(spec.raw_min, spec.raw_max, spec.n_contexts, spec.n_shifts, spec.guard),
                              crops, fit_f)
    t0 = time.perf_counter()
    old_ctx = ResidualContext.fit(model, crops, fit_f, [d for d in ds if d != 1], batch_size=16)
    old_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = ResidualColourContext.fit(model, crops, fit_f, ds)
    new_fit = time.perf_counter() - t0

    def old_write(enc: StreamEncoder, x: np.ndarray, f: np.ndarray, d: int) -> object:
        return old_ctx.write(enc, model, x, f, d) if old_ctx.covers(d) else model.write(enc, x, f, d)

    def old_read(dec: StreamDecoder, f: np.ndarray, d: int) -> np.ndarray:
        return old_ctx.read(dec, model, f, d) if old_ctx.covers(d) else model.read(dec, f, d)

    rows = []
    for d in ds:
        ob, oe, od = _measure(pairs, d, old_write, old_read, repeats)
        nb, ne, nd = _measure(pairs, d, lambda e, x, f, dd: new.write(e, model, x, f, dd),
                              lambda r, f, dd: new.read(r, model, f, dd), repeats)
        lv = new._level(d)
        rows.append({"max_error": d, "before_bpp": round(8 * ob / pixels, 3), "after_bpp": round(8 * nb / pixels, 3),
                     "change_percent": round(100 * (nb / ob - 1), 1),
                     "before": "residual_context previous-sample" if old_ctx.covers(d) else "residual.py buckets",
                     "after_predictor": lv.predictor, "after_model_weight": lv.model_weight,
                     "seconds_per_photo_before": [round(oe / len(pairs), 3), round(od / len(pairs), 3)],
                     "seconds_per_photo_after": [round(ne / len(pairs), 3), round(nd / len(pairs), 3)]})
        print(rows[-1], flush=True)
    return {"fit": {"crops": len(crops), "size": [320, 320], "seconds_before": round(old_fit, 1),
                    "seconds_after": round(new_fit, 1)},
            "measured": {"photos": len(pairs), "pixels": pixels, "latent_bpp": round(8 * latent / pixels, 3)},
            "levels": rows}


def run_mnist(bundle: Path, data: Path, repeats: int, packet: int) -> dict[str, Any]:
    codec = Codec.load(bundle, provider="cpu", threads=1)
    assert codec.tables.residual is not None
    spec = codec.tables.residual.spec
    raw = load_mnist(data / "mnist", split="train").samples
    f = np.concatenate([_predict(codec, raw[i : i + 4096])[0] for i in range(0, len(raw), 4096)])
    fit_x, fit_f, x, fv = raw[:55000], f[:55000], raw[55000:], f[55000:]
    latent = sum(_predict(codec, x[i : i + packet])[1] for i in range(0, len(x), packet))
    model = ResidualModel.fit(ContextSpec(spec.raw_min, spec.raw_max, spec.n_contexts, spec.n_shifts, spec.guard),
                              fit_x, fit_f)
    ds = MAX_ERRORS["mnist"]
    t0 = time.perf_counter()
    old = ResidualValueContext.fit(model, fit_x, fit_f, ds)
    old_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = ResidualCheckerContext.fit(model, fit_x, fit_f, ds)
    new_fit = time.perf_counter() - t0
    batches = [(x[i : i + packet], fv[i : i + packet]) for i in range(0, len(x), packet)]
    rows = []
    for d in ds:
        ob, oe, od = _measure(batches, d, lambda e, xx, ff, dd: old.write(e, model, xx, ff, dd),
                              lambda r, ff, dd: old.read(r, model, ff, dd), repeats)
        nb, ne, nd = _measure(batches, d, lambda e, xx, ff, dd: new.write(e, model, xx, ff, dd),
                              lambda r, ff, dd: new.read(r, model, ff, dd), repeats)
        rows.append({"max_error": d, "before_bytes_per_digit": round(ob / len(x), 2),
                     "after_bytes_per_digit": round(nb / len(x), 2), "change_percent": round(100 * (nb / ob - 1), 1),
                     "after_weight": new._level(d).weight, "after_tables": len(new._level(d).tables),
                     "digits_per_second_before": [round(len(x) / oe), round(len(x) / od)],
                     "digits_per_second_after": [round(len(x) / ne), round(len(x) / nd)]})
        print(rows[-1], flush=True)
    return {"fit": {"digits": len(fit_x), "seconds_before": round(old_fit, 1), "seconds_after": round(new_fit, 1)},
            "measured": {"digits": len(x), "packet": packet, "latent_bytes_per_digit": round(latent / len(x), 2)},
            "levels": rows}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(MAX_ERRORS), required=True)
    p.add_argument("--bundle", type=Path, default=None, help="default: codec/assets/bsds-gdn2d or mnist-dense")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="bsds: first N validation photos only")
    p.add_argument("--packet", type=int, default=256, help="mnist: digits per packet")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    bundle = args.bundle or REPO / "codec" / "assets" / ("bsds-gdn2d" if args.dataset == "bsds" else "mnist-dense")
    t0 = time.perf_counter()
    result = (run_bsds(bundle, args.data_root, args.repeats, args.limit) if args.dataset == "bsds"
              else run_mnist(bundle, args.data_root, args.repeats, args.packet))
    codec = Codec.load(bundle, provider="cpu")
    write_result(args.out, {
        "meta": {"dataset": args.dataset, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": "python -m benchmarks.residual_coding " + " ".join(argv or __import__("sys").argv[1:]),
                 "git_commit": git_commit(), "machine": machine_info(), "seconds": round(time.perf_counter() - t0, 1),
                 "bundle": {"path": str(bundle), "model_id": codec.model_id}},
        **result,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
