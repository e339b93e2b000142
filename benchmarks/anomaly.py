"""Anomaly detection with the codec's own score, and what the lossless fallback costs and saves.

    python -m benchmarks.anomaly [--bundle DIR] [--write-md]

Score = per-frame MSE (raw units) of the latent-only reconstruction (Codec.scores), the number a
sender gets for free because it runs the decoder anyway. Threshold = the 0.999 quantile of the
score on training digits (what `latentwire calibrate` stores as manifest "anomaly"; recomputed
here so a bundle calibrated before that existed can be measured too).

1. ROC-AUC (sklearn) of the score: MNIST test digits (negatives) against inputs the model never
   saw: inverted digits, uniform noise, MIT-BIH ECG windows of 784 samples reshaped to 28x28 and
   min-max scaled to 0..255 per window, BSDS500 test photos as grayscale 28x28 crops.
2. A mixed stream (test digits with 20% of those anomalies shuffled in) coded at a latent-only
   level and at the bundle's default level, with and without the fallback: bytes and PSNR,
   overall and on the anomalous frames.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from latentwire.codec.codec import Codec
from latentwire.codec.coding.fallback import AnomalyCalibration
from latentwire.codec.normalization import psnr_db
from latentwire.codec.sources import ImageFolder, default_data_root, load_ecg_windows, load_mnist, sample_data_root

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _data_root(name: str) -> Path:
    shared = default_data_root()
    if shared is not None and (shared / name).is_dir():
        return shared / name
    return sample_data_root() / {"bsds500": "bsds"}.get(name, name)


def outliers(n: int, digits: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """n uint8 (1, 28, 28) frames of each kind the MNIST model never saw."""
    rng = np.random.default_rng(seed)
    ecg = load_ecg_windows(_data_root("mitdb"), window=784).samples[:, 0, :].astype(np.float64)
    ecg = ecg[rng.permutation(len(ecg))[:n]]
    lo, hi = ecg.min(axis=1, keepdims=True), ecg.max(axis=1, keepdims=True)
    ecg = np.rint(255 * (ecg - lo) / np.maximum(hi - lo, 1)).astype(np.uint8).reshape(-1, 1, 28, 28)
    bsds = _data_root("bsds500")
    photos = ImageFolder(bsds, mode="L", subdirs=["test"] if (bsds / "test").is_dir() else None)
    crops = photos.crops(size=(28, 28), per_image=max(1, n // 100 + 1), seed=seed).samples
    crops = crops[rng.permutation(len(crops))[:n]]
    return {
        "inverted digits": (255 - digits[rng.permutation(len(digits))[:n]]).astype(np.uint8),
        "uniform noise": rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8),
        "MIT-BIH windows as 28x28": ecg,
        "BSDS500 grayscale crops": crops.astype(np.uint8),
    }


def _stream_figures(codec: Codec, stream: np.ndarray, anomalous: np.ndarray, quality: int, threshold: float,
                    fallback: bool) -> dict[str, float]:
    enc = codec.encode_scored(stream, quality, threshold=threshold, fallback=fallback, per_frame=True)
    decoded = np.concatenate(codec.decode_many(enc.packets))
    peak = codec.normalization.peak
    return {
        "bytes_total": int(sum(len(p) for p in enc.packets)),
        "bytes_per_frame": round(sum(len(p) for p in enc.packets) / len(stream), 2),
        "psnr_db": round(psnr_db(stream, decoded, peak), 2),
        "psnr_db_digits": round(psnr_db(stream[~anomalous], decoded[~anomalous], peak), 2),
        "psnr_db_anomalies": round(psnr_db(stream[anomalous], decoded[anomalous], peak), 2),
        "exact_anomalies": round(
            float(np.mean([np.array_equal(a, b) for a, b in zip(stream[anomalous], decoded[anomalous], strict=True)])),
            3,
        ),
        "frames_lossless": int(enc.lossless.sum()),
        "digits_lossless": int(enc.lossless[~anomalous].sum()),
    }


def run(bundle: str, n_train: int = 10000, n_test: int = 2000, n_outliers: int = 500) -> dict:
    from sklearn.metrics import roc_auc_score

    t0 = time.perf_counter()
    codec = Codec.load(bundle, provider="cpu", threads=1)
    mnist = _data_root("mnist")
    train = load_mnist(mnist, split="train", limit=n_train).samples
    test = load_mnist(mnist, split="test", limit=n_test).samples
    calibration = codec.anomaly or AnomalyCalibration.fit(codec.scores(train))
    threshold = calibration.threshold
    normal = codec.scores(test)
    kinds = outliers(n_outliers, test)
    auc = {}
    for name, frames in kinds.items():
        s = codec.scores(frames)
        auc[name] = {
            "roc_auc": round(float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(s))], np.r_[normal, s])), 4),
            "n": int(len(frames)),
            "median_score": round(float(np.median(s)), 1),
            "flagged_at_threshold": round(float(np.mean(s > threshold)), 4),
        }
    rng = np.random.default_rng(1)
    per_kind = max(1, len(test) // 4 // len(kinds))
    extra = np.concatenate([f[:per_kind] for f in kinds.values()])
    stream = np.concatenate([test, extra])
    anomalous = np.r_[np.zeros(len(test), bool), np.ones(len(extra), bool)]
    order = rng.permutation(len(stream))
    stream, anomalous = stream[order], anomalous[order]
    latent_only = next(q.index for q in codec.qualities if q.max_error is None and q.latent_step == 1.0)
    streams = {}
    for q in sorted({latent_only, codec.default_quality}):
        name = codec.qualities[q].name
        streams[f"{name} (max_error {codec.qualities[q].max_error})"] = {
            "without_fallback": _stream_figures(codec, stream, anomalous, q, threshold, False),
            "with_fallback": _stream_figures(codec, stream, anomalous, q, threshold, True),
        }
    return {
        "bundle": str(bundle),
        "model_id": codec.model_id,
        "score": "per-frame MSE (raw units) of the latent-only reconstruction (Codec.scores)",
        "threshold": {"quantile": calibration.threshold_quantile, "value": round(threshold, 2),
                      "from": "manifest anomaly" if codec.anomaly else f"{len(train)} training digits"},
        "mnist_test": {"n": int(len(test)), "median_score": round(float(np.median(normal)), 1),
                       "flagged_at_threshold": round(float(np.mean(normal > threshold)), 4)},
        "roc_auc": auc,
        "mixed_stream": {"frames": int(len(stream)), "anomalous_frames": int(anomalous.sum()),
                         "packets": "one per frame", "by_quality": streams},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def markdown(r: dict) -> str:
    lines = [
        "## Anomaly detection",
        "",
        f"Bundle `{Path(r['bundle']).name}`; score = {r['score']}; threshold = {r['threshold']['quantile']} quantile "
        f"of the training digits' score ({r['threshold']['value']}, {r['threshold']['from']}). "
        f"{r['mnist_test']['n']} MNIST test digits are the negatives (median score {r['mnist_test']['median_score']}, "
        f"{100 * r['mnist_test']['flagged_at_threshold']:.2f}% above the threshold). "
        "`python -m benchmarks.anomaly --write-md`, "
        "results in `benchmarks/results/anomaly.json`.",
        "",
        "| inputs the model never saw | n | ROC-AUC | median score | flagged at threshold |",
        "|---|---|---|---|---|",
    ]
    for name, a in r["roc_auc"].items():
        lines.append(
            f"| {name} | {a['n']} | {a['roc_auc']:.4f} | {a['median_score']} | {100 * a['flagged_at_threshold']:.1f}% |"
        )
    m = r["mixed_stream"]
    lines += [
        "",
        f"Mixed stream: {m['frames']} frames ({m['anomalous_frames']} of them the anomalies above, shuffled in), "
        "one packet per frame; the fallback sends frames above the threshold as zstd of the raw frame (FLAG_LOSSLESS).",
        "",
        "| level | fallback | bytes/frame | PSNR all | PSNR digits | PSNR anomalies | anomalies exact "
        "| frames lossless (digits) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level, pair in m["by_quality"].items():
        for key, label in (("without_fallback", "off"), ("with_fallback", "on")):
            f = pair[key]
            lines.append(
                f"| {level} | {label} | {f['bytes_per_frame']} | {f['psnr_db']} dB | "
                f"{f['psnr_db_digits']} dB | {f['psnr_db_anomalies']} dB | {100 * f['exact_anomalies']:.0f}% | "
                f"{f['frames_lossless']} ({f['digits_lossless']}) |"
            )
    lines += [
        "",
        "Anomalies that score below the threshold (a few smooth photo crops) take the normal path; the digits above it "
        "(\"(digits)\") are the price of the 0.999 quantile. At a residual level the fallback also SAVES bytes: the "
        "residual of a frame the model cannot predict costs more than zstd of the frame itself.",
    ]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Write (or replace) one '## ' section of BENCHMARKS.md, leaving the others alone."""
    title = section.splitlines()[0]
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        path.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + tail if tail else ""), encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(REPO / "codec" / "assets" / "mnist-dense"))
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--n-outliers", type=int, default=500)
    p.add_argument(
        "--write-md", action="store_true", help="replace the '## Anomaly detection' section of BENCHMARKS.md"
    )
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    r = run(args.bundle, args.n_train, args.n_test, args.n_outliers)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "anomaly.json").write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(r, indent=2))
    if args.write_md:
        replace_section(REPO / "BENCHMARKS.md", markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
