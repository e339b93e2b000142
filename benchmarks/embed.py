"""Feature extraction: are the codec's latent codes useful features, compared with PCA?

    python -m benchmarks.embed [--bundle DIR] [--write-md]

Codes = Codec.embed (the encoder's continuous output, what `latentwire embed` writes) of MNIST
training and test digits. Features of the same size k for the baseline: PCA (fit on the same
training digits, pixels in [0, 1]). For both: k-NN (k=5) and logistic regression (scikit-learn,
standardized features) trained on the training digits, accuracy on the test digits. The 2-D map
is PCA of the test codes to two dimensions, coloured by label (t-SNE is slower and its picture
depends on its settings; PCA shows what a linear read-out sees).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from latentwire.codec.codec import Codec
from latentwire.codec.embed import embed_samples
from latentwire.codec.sources import load_mnist

from .anomaly import REPO, RESULTS, _data_root, replace_section


def _accuracies(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)).fit(train_x, train_y)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
    return {
        "knn5": round(float(knn.score(test_x, test_y)), 4),
        "logistic_regression": round(float(logreg.score(test_x, test_y)), 4),
    }


def run(bundle: str, n_train: int = 10000, n_test: int = 10000, png: Path | None = None) -> dict:
    t0 = time.perf_counter()
    codec = Codec.load(bundle, provider="cpu", threads=1)
    mnist = _data_root("mnist")
    train = load_mnist(mnist, split="train", limit=n_train)
    test = load_mnist(mnist, split="test", limit=n_test)
    code_tr = embed_samples(codec, train.samples).reshape(len(train), -1)
    code_te = embed_samples(codec, test.samples).reshape(len(test), -1)
    k = code_tr.shape[1]
    assert train.labels is not None and test.labels is not None, "MNIST loads with its labels"
    pix_tr = train.samples.reshape(len(train), -1) / 255.0
    pix_te = test.samples.reshape(len(test), -1) / 255.0
    mean = pix_tr.mean(axis=0)
    basis = np.linalg.svd(pix_tr - mean, full_matrices=False)[2][:k]
    pca_tr, pca_te = (pix_tr - mean) @ basis.T, (pix_te - mean) @ basis.T
    result = {
        "bundle": str(bundle),
        "features": k,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "codes": _accuracies(code_tr, train.labels, code_te, test.labels),
        f"pca_{k}": _accuracies(pca_tr, train.labels, pca_te, test.labels),
    }
    if png is not None:
        _plot(code_te, test.labels, png, f"MNIST test codes ({k}-D) of {Path(bundle).name}, PCA to 2-D")
        result["map"] = str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _plot(codes: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = codes - codes.mean(axis=0)
    xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=100)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6, linewidths=0)
    ax.legend(*sc.legend_elements(), title="digit", loc="best", fontsize=7, markerscale=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("code PC 1")
    ax.set_ylabel("code PC 2")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def markdown(r: dict) -> str:
    k = r["features"]
    pca = r[f"pca_{k}"]
    return "\n".join([
        "## Feature extraction",
        "",
        f"Latent codes of `{Path(r['bundle']).name}` (`latentwire embed` / `Codec.embed`, {k} floats per digit) as "
        f"features, against PCA features of the same size fit on the same {r['n_train']} training digits; "
        f"classifiers trained on those digits, accuracy on {r['n_test']} MNIST test digits "
        "(`python -m benchmarks.embed --write-md`, results in `benchmarks/results/embed.json`).",
        "",
        "| features | k-NN (k=5) | logistic regression |",
        "|---|---|---|",
        f"| autoencoder codes ({k}) | {100 * r['codes']['knn5']:.2f}% "
        f"| {100 * r['codes']['logistic_regression']:.2f}% |",
        f"| PCA ({k}) | {100 * pca['knn5']:.2f}% | {100 * pca['logistic_regression']:.2f}% |",
        "",
        f"![MNIST test codes, PCA to 2-D, coloured by label]({r['map']})" if "map" in r else "",
        "",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(REPO / "codec" / "assets" / "mnist-dense"))
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument(
        "--write-md", action="store_true", help="replace the '## Feature extraction' section of BENCHMARKS.md"
    )
    args = p.parse_args()
    r = run(args.bundle, args.n_train, args.n_test, png=RESULTS / "embed_map.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed.json").write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(r, indent=2))
    if args.write_md:
        replace_section(REPO / "BENCHMARKS.md", markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
