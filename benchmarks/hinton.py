"""Dense autoencoders on full MNIST against Hinton & Salakhutdinov (2006).

Trains a 784-1000-500-250-k autoencoder (rate weight 0: a plain autoencoder, float codes, as in
the paper) for k in --code-sizes, and reports the test set's PSNR and Hinton's metric: the
average per-image squared error with pixels in [0, 1]. Paper anchors for k = 30: deep
autoencoder 3.00, logistic PCA 8.01, PCA 13.87. PCA with the same k is measured in the same run.

    python -m benchmarks.hinton --epochs 20 --code-sizes 16,30,64
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from latentwire.codec.sources import default_data_root, load_mnist

PAPER = {"deep autoencoder (k=30)": 3.00, "logistic PCA (k=30)": 8.01, "PCA (k=30)": 13.87}


def hinton_error(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Average over images of the summed squared error, pixels in [0, 1]."""
    d = (x.reshape(len(x), -1).astype(np.float64) - x_hat.reshape(len(x), -1).astype(np.float64))
    return float((d * d).sum(axis=1).mean())


def pca_error(train: np.ndarray, test: np.ndarray, k: int) -> float:
    a = train.reshape(len(train), -1).astype(np.float64)
    mean = a.mean(axis=0)
    _, _, vt = np.linalg.svd(a - mean, full_matrices=False)
    basis = vt[:k]
    b = test.reshape(len(test), -1).astype(np.float64) - mean
    return hinton_error(test, b @ basis.T @ basis + mean)


def main(argv: list[str] | None = None) -> int:
    import torch

    from latentwire.codec.training.models import ModelConfig
    from latentwire.codec.training.train import TrainOptions, train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=default_data_root())
    p.add_argument("--code-sizes", default="16,30,64")
    p.add_argument("--layers", default="1000,500,250")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/hinton.json"))
    args = p.parse_args(argv)
    if args.data_root is None:
        p.error("no data root: pass --data-root (the folder holding mnist/) or set LATENTWIRE_DATA")
    train_set = load_mnist(args.data_root / "mnist", split="train")
    test_set = load_mnist(args.data_root / "mnist", split="test")
    tr, val = train_set.split(0.05, seed=0)
    x_test = test_set.model_domain()
    rows = []
    for k in [int(v) for v in args.code_sizes.split(",")]:
        config = ModelConfig(family="dense", sample_shape=[1, 28, 28], code_size=k,
                             layers=[int(v) for v in args.layers.split(",")], activation="gelu", loss="mse")
        opts = TrainOptions(epochs=args.epochs, batch_size=256, lr=2e-3, rate_weight=0.0, patience=0,
                            threads=args.threads, progress=True, command=f"benchmarks.hinton k={k}")
        t0 = time.perf_counter()
        result = train(config, tr, val, opts)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            out = result.model(torch.from_numpy(x_test), quantize="none").x_hat.numpy()
        x_hat = np.clip(out, 0.0, 1.0)
        err = hinton_error(x_test, x_hat)
        mse = float(np.mean((x_test - x_hat) ** 2))
        rows.append({
            "code_size": k, "layers": config.layers, "epochs": result.epochs_run, "train_seconds": round(seconds, 1),
            "hinton_error": round(err, 3), "test_psnr_db": round(10 * np.log10(1.0 / mse), 2),
            "pca_hinton_error": round(pca_error(train_set.model_domain(), x_test, k), 3),
        })
        print(json.dumps(rows[-1]))
    report = {
        "benchmark": "hinton", "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__, "command": "python -m benchmarks.hinton " + " ".join(argv or []),
        "paper_anchors": PAPER, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'k':>4} {'epochs':>6} {'seconds':>8} {'error':>7} {'PSNR dB':>8} {'PCA error':>10}")
    for r in rows:
        print(f"{r['code_size']:>4} {r['epochs']:>6} {r['train_seconds']:>8} {r['hinton_error']:>7} "
              f"{r['test_psnr_db']:>8} {r['pca_hinton_error']:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
