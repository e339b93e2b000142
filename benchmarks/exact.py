"""The exact prediction's cost: bytes, PSNR and speed of residual levels, float vs exact bundle.

Runs the same held-out samples (MNIST test digits, or MIT-BIH windows of the held-out records
117-124 with --dataset ecg) through two bundles that differ only in what residuals are taken
against (a float bundle, e.g. the one shipped before `latentwire quantize-exact`, and the exact
one) and reports, per max error, bytes per digit in packets of `--packet` digits, the max error
reached, and encode/decode digits per second; plus the latent-only PSNR of the float graph and of
the integer prediction. Usage:

    python -m benchmarks.exact --float-bundle /tmp/mnist-float --exact-bundle codec/assets/mnist-dense \
        --data ../shared/data/mnist --sweep --out benchmarks/results/exact-mnist.json
    python -m benchmarks.exact --dataset ecg --float-bundle /tmp/ecg-float --exact-bundle codec/assets/ecg-conv1d \
        --data ../shared/data/mitdb --packet 64 --out benchmarks/results/exact-ecg.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, write_result
from latentwire.codec.codec import Codec
from latentwire.codec.normalization import psnr_db
from latentwire.codec.sources import load_source

MAX_ERRORS = (0, 1, 2, 4)
ECG_HELDOUT = [117, 118, 119, 121, 122, 123, 124]  # benchmarks.train_bundles: never trained or calibrated on
SWEEP = ((8, 10), (8, 12), (10, 12), (12, 12), (12, 14), (16, 14), (16, 16), (16, 18))


def _sweep(bundle: Path, data: str) -> list[dict]:
    """Agreement with the float graph per (weight bits, activation bits): ranges on the first 55,000
    training digits, measured on the last 5,000 (what quantize-exact does); refused widths say why."""
    from latentwire.codec.errors import BundleError
    from latentwire.codec.training.quantize_exact import quantize_exact

    train = load_source(data, split="train").samples
    rows = []
    for wb, ab in SWEEP:
        try:
            net, agreement = quantize_exact(bundle, train, wb, ab, threads=1, write=False)
            rows.append({"weight_bits": wb, "act_bits": ab, **agreement.to_dict(),
                         "max_partial_sum_log2": round(float(np.log2(net.max_partial_sum)), 1)})  # type: ignore[attr-defined]
        except BundleError as exc:
            rows.append({"weight_bits": wb, "act_bits": ab, "refused": str(exc)})
        print(rows[-1], flush=True)
    return rows


def _levels(codec: Codec, raw: np.ndarray, packet: int, repeats: int) -> list[dict]:
    out = []
    for e in MAX_ERRORS:
        packets = [codec.encode(raw[i : i + packet], max_error=e) for i in range(0, len(raw), packet)]
        decoded = np.concatenate([codec.decode(p) for p in packets])
        enc_s = dec_s = float("inf")
        for _ in range(repeats):  # best of: the machine is shared
            t = time.perf_counter()
            for i in range(0, len(raw), packet):
                codec.encode(raw[i : i + packet], max_error=e)
            enc_s = min(enc_s, time.perf_counter() - t)
            t = time.perf_counter()
            for p in packets:
                codec.decode(p)
            dec_s = min(dec_s, time.perf_counter() - t)
        out.append({"max_error": e, "bytes_per_sample": round(sum(map(len, packets)) / len(raw), 3),
                    "max_abs_error": int(np.abs(decoded.astype(np.int64) - raw).max()),
                    "encode_samples_per_s": round(len(raw) / enc_s), "decode_samples_per_s": round(len(raw) / dec_s)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float-bundle", type=Path, required=True)
    ap.add_argument("--exact-bundle", type=Path, required=True)
    ap.add_argument("--dataset", choices=["mnist", "ecg"], default="mnist")
    ap.add_argument("--data", default="../shared/data/mnist")
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--packet", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="also measure bit widths against the float graph (onnx)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/exact-mnist.json"))
    args = ap.parse_args()
    if args.dataset == "ecg":
        from latentwire.codec.sources import load_ecg_windows

        raw = load_ecg_windows(args.data, records=ECG_HELDOUT).samples[: args.limit]
        what = f"{args.data} held-out records {ECG_HELDOUT}, {len(raw)} windows of {raw.shape[1:]}"
    else:
        raw = load_source(args.data, split="test").samples[: args.limit]
        what = f"{args.data} test split, {len(raw)} digits"
    report: dict = {"data": what, "packet": args.packet,
                    "machine": machine_info(), "bundles": {}}
    for name, path in (("float", args.float_bundle), ("exact", args.exact_bundle)):
        codec = Codec.load(path, provider="cpu", threads=1)
        entry: dict[str, Any] = {"path": str(path), "model_id": codec.model_id[:12],
                                 "levels": _levels(codec, raw, args.packet, args.repeats)}
        if codec.exact is not None:
            y = np.rint(codec.encoder.encode(codec.normalization.to_model(raw))).astype(np.float32)
            flt = np.rint(codec._decode_symbols(y, raw.shape[1:])).astype(np.int64)
            ex = codec.exact.predict_frames(y, raw.shape[1:]).astype(np.int64)
            peak = codec.normalization.peak
            entry["prediction"] = {"psnr_float_db": round(psnr_db(raw, flt, peak), 4),
                                   "psnr_exact_db": round(psnr_db(raw, ex, peak), 4),
                                   "psnr_exact_vs_float_db": round(psnr_db(flt, ex, peak), 3),
                                   "values_differing": round(float(np.mean(ex != flt)), 5),
                                   "max_abs_difference": int(np.abs(ex - flt).max())}
            t = time.perf_counter()
            for i in range(0, len(raw), args.packet):
                codec.exact.predict_frames(y[i : i + args.packet], raw.shape[1:])
            entry["prediction"]["exact_samples_per_s"] = round(len(raw) / (time.perf_counter() - t))
        report["bundles"][name] = entry
        print(name, entry, flush=True)
    if args.sweep and args.dataset == "mnist":
        report["bit_widths"] = _sweep(args.exact_bundle, args.data)
    write_result(args.out, report)


if __name__ == "__main__":
    main()
