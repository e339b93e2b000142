"""The autoencoder family of the literature (codec/models/variants.py), each variant showing its
defining property on real MNIST digits with a tiny model trained in seconds.

Data: the shipped sample (tests/data/mnist: 1000 training, 500 test digits), always, so the
figures are the same on a fresh clone and on a machine with ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentwire.codec.sources import SampleSet, load_mnist, sample_data_root  # noqa: E402
from latentwire.codec.training.models import ModelConfig, build_model  # noqa: E402
from latentwire.codec.training.models import variants as V  # noqa: E402
from latentwire.codec.training.train import (  # noqa: E402
    TrainOptions,
    TrainResult,
    load_checkpoint,
    model_from_checkpoint,
    train,
    variant_fields,
)

torch.set_num_threads(1)

HIDDEN, CODE = [256], 32  # every nonlinear model below: 784-256-32
RATE = 1e-3


@pytest.fixture(scope="module")
def mnist() -> tuple[SampleSet, SampleSet]:
    folder = sample_data_root() / "mnist"
    return load_mnist(folder, split="train"), load_mnist(folder, split="test")


def _train(data: tuple[SampleSet, SampleSet], config: ModelConfig, **options) -> TrainResult:
    opts = dict(epochs=20, lr=3e-3, batch_size=32, rate_weight=RATE, patience=0, threads=1, progress=False)
    opts.update(options)
    return train(config, data[0], data[1], TrainOptions(**opts))


def _config(**variant) -> ModelConfig:
    return ModelConfig("dense", [1, 28, 28], CODE, HIDDEN, **variant)


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(x, np.float64) - ref) ** 2)))


@pytest.fixture(scope="module")
def plain(mnist) -> torch.nn.Module:
    return _train(mnist, _config()).model


@pytest.fixture(scope="module")
def denoising(mnist) -> TrainResult:
    return _train(mnist, _config(variant="denoising", corruption="mask:0.5"))


# ------------------------------------------------------------------------------------------ config


def test_variant_is_recorded_in_the_config_and_rebuilds() -> None:
    config = _config(variant="sparse", sparsity="kl:0.05:10")
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.variant == "sparse" and again.sparsity == "kl:0.05:10"
    # a manifest written before variants existed still rebuilds, as a plain model
    old = {
        k: v
        for k, v in _config().to_dict().items()
        if k not in ("variant", "corruption", "sparsity", "contractive_weight", "beta")
    }
    assert ModelConfig.from_dict(old) == _config()
    # defaults fill in; parameters of another variant, and malformed specs, are refused
    assert _config(variant="denoising").corruption == "mask:0.3"
    assert _config(variant="contractive").contractive_weight > 0
    with pytest.raises(ValueError, match="variant is 'plain'"):
        _config(corruption="mask:0.3")
    for bad in ({"variant": "denoising", "corruption": "mask:1.5"}, {"variant": "sparse", "sparsity": "l2:1"},
                {"variant": "vae", "beta": 0.0}, {"variant": "ladder"}):
        with pytest.raises(ValueError):
            _config(**bad)
    vae = build_model(_config(variant="vae"))
    assert vae.encoder[-1].out_features == 2 * CODE  # mean and log-variance heads
    assert build_model(_config()).encoder[-1].out_features == CODE


def test_cli_options_imply_the_variant() -> None:
    def ns(**kw) -> argparse.Namespace:
        base = dict(variant=None, corruption=None, sparsity=None, contractive_weight=None, beta=None)
        return argparse.Namespace(**{**base, **kw})

    assert variant_fields(ns(corruption="gaussian:0.2")) == {"variant": "denoising", "corruption": "gaussian:0.2"}
    assert variant_fields(ns(variant="vae", beta=4.0)) == {"variant": "vae", "beta": 4.0}
    assert variant_fields(ns()) == {"variant": "plain"}
    with pytest.raises(ValueError, match="one variant per model"):
        variant_fields(ns(variant="sparse", corruption="mask:0.3"))


def test_overcomplete_code_warns_only_without_a_regularizer() -> None:
    over = build_model(ModelConfig("dense", [1, 28, 28], 1000, [], activation="linear", output_activation="none"))
    assert V.is_overcomplete(over)
    with pytest.warns(V.OvercompleteCodeWarning, match="identity"):
        assert V.warn_if_unregularized(over, rate_weight=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not V.warn_if_unregularized(over, rate_weight=0.01)  # every bit costs: no free identity
        den = build_model(ModelConfig("dense", [1, 28, 28], 1000, [], variant="denoising"))
        assert not V.warn_if_unregularized(den, rate_weight=0.0)
        assert not V.warn_if_unregularized(build_model(_config()), rate_weight=0.0)  # undercomplete
    conv = build_model(ModelConfig("conv2d", [1, None, None], 8, [4]))  # 8 channels per 2x2 pixels > 1 * 4
    assert V.is_overcomplete(conv)


# ------------------------------------------------------------------------------------------ properties


def test_linear_autoencoder_is_within_2_percent_of_pca(mnist, tmp_path: Path) -> None:
    k = 16
    config = ModelConfig("dense", [1, 28, 28], k, [], activation="linear", output_activation="none")
    _train(mnist, config, epochs=120, lr=1e-2, batch_size=64, rate_weight=0.0, weight_decay=0.0, out=str(tmp_path))
    model = model_from_checkpoint(load_checkpoint(tmp_path), "model")  # the last epoch, continuous code
    train_x = mnist[0].model_domain().reshape(len(mnist[0]), -1).astype(np.float64)
    test_x = mnist[1].model_domain().reshape(len(mnist[1]), -1).astype(np.float64)
    mean = train_x.mean(axis=0)
    basis = np.linalg.svd(train_x - mean, full_matrices=False)[2][:k]
    pca_mse = float(np.mean(((test_x - mean) @ basis.T @ basis + mean - test_x) ** 2))
    with torch.no_grad():
        x_hat = model(torch.from_numpy(mnist[1].model_domain()), quantize="none").x_hat.numpy()
    ae_mse = float(np.mean((x_hat.reshape(len(test_x), -1) - test_x) ** 2))
    print(f"linear AE test MSE {ae_mse:.5f} vs PCA {pca_mse:.5f} (k={k}): {100 * (ae_mse / pca_mse - 1):+.2f}%")
    assert ae_mse <= 1.02 * pca_mse


def test_denoising_beats_plain_on_masked_digits(mnist, plain, denoising) -> None:
    clean = mnist[1].model_domain()
    masked = V.Corruption.parse("mask:0.5").apply(torch.from_numpy(clean), torch.Generator().manual_seed(1))
    with torch.no_grad():
        psnr_plain = _psnr(plain(masked, quantize="round").x_hat.numpy(), clean)
        psnr_den = _psnr(denoising.model(masked, quantize="round").x_hat.numpy(), clean)
    print(f"masked test digits -> clean: denoising {psnr_den:.2f} dB, plain {psnr_plain:.2f} dB, "
          f"input itself {_psnr(masked.numpy(), clean):.2f} dB")
    assert psnr_den >= psnr_plain + 1.0


def test_denoise_on_receive_through_the_exported_bundle(mnist, denoising, tmp_path: Path) -> None:
    """Item 4: the codec's latent-only reconstruction (onnxruntime, no torch) of noisy frames."""
    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.codec import Codec
    from latentwire.codec.training.export import export

    bundle = export(denoising, tmp_path / "bundle", name="mnist-denoising")
    calibrate(bundle, mnist[0].samples, (None, 0), threads=1)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["variant"] == "denoising" and manifest["config"]["corruption"] == "mask:0.5"
    codec = Codec.load(bundle, provider="cpu", threads=1)
    clean = mnist[1].samples[:200]
    keep = np.random.default_rng(3).random(clean.shape) >= 0.5
    noisy = (clean * keep).astype(np.uint8)
    # the noisy frames arrive exactly (lossless level), then the receiver asks for the denoised view
    received = codec.decode(codec.encode(noisy, quality=1))
    assert np.array_equal(received, noisy)
    denoised = codec.denoise(received)
    assert denoised.dtype == np.uint8 and denoised.shape == noisy.shape
    gain = _psnr(denoised / 255.0, clean / 255.0) - _psnr(noisy / 255.0, clean / 255.0)
    print(f"denoise on receive: +{gain:.2f} dB over the masked frames")
    assert gain > 1.0


def test_sparse_code_activity_is_below_its_target(mnist, plain) -> None:
    sparse = _train(mnist, _config(variant="sparse", sparsity="kl:0.05")).model
    x = torch.from_numpy(mnist[1].model_domain())
    with torch.no_grad():
        active, active_plain = V.code_activity(sparse.encode(x)), V.code_activity(plain.encode(x))
    print(f"non-zero code symbols: sparse {active:.4f} (target 0.05), plain {active_plain:.4f}")
    assert active < 0.05 < active_plain


def test_contractive_encoder_has_a_smaller_jacobian(mnist, plain) -> None:
    contractive = _train(mnist, _config(variant="contractive", contractive_weight=0.1)).model
    x = torch.from_numpy(mnist[1].model_domain()[:200])
    norm_c = float(V.jacobian_frobenius_sq(contractive, x).sqrt().mean())
    norm_p = float(V.jacobian_frobenius_sq(plain, x).sqrt().mean())
    # the estimate used in training is unbiased for the exact norm
    x.requires_grad_(True)
    est = torch.stack([V.jacobian_estimate(x, plain.encode(x)).detach() for _ in range(64)]).mean(0)
    exact = V.jacobian_frobenius_sq(plain, x)
    assert float((est.mean() / exact.mean() - 1).abs()) < 0.1
    print(f"mean ||J||_F: contractive {norm_c:.3f}, plain {norm_p:.3f}")
    assert norm_c < 0.8 * norm_p


def test_vae_kl_is_finite_prior_samples_decode_and_the_mean_exports(mnist, tmp_path: Path) -> None:
    result = _train(mnist, _config(variant="vae", beta=1.0), epochs=10)
    vae = result.model
    x = torch.from_numpy(mnist[1].model_domain())
    with torch.no_grad():
        mu, logvar = vae.encode_distribution(x)
        kl = V.kl_to_standard_normal(mu, logvar)
    assert torch.isfinite(kl).all() and float(kl.mean()) > 0
    samples = V.prior_samples(vae, 7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 1, 28, 28) and torch.isfinite(samples).all()
    with pytest.raises(ValueError, match="need a VAE"):
        V.prior_samples(build_model(_config()), 2)

    from latentwire.codec.runtime import Encoder
    from latentwire.codec.training.export import export

    bundle = export(result, tmp_path / "vae")
    y = Encoder(bundle, provider="cpu").encode(mnist[1].model_domain()[:16])
    assert y.shape == (16, CODE)  # encoder.onnx is the mean path only
    np.testing.assert_allclose(y, mu[:16].numpy(), atol=1e-4)
    assert json.loads((bundle / "manifest.json").read_text())["config"]["variant"] == "vae"
    print(f"VAE: mean KL {float(kl.mean()):.2f} nats per digit, val PSNR (round(mu)) {result.val_psnr_db:.2f} dB")
