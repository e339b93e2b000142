"""Autoencoder families, the factorized density and training (torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentwire.codec.sources import load_mnist, sample_data_root  # noqa: E402
from latentwire.codec.training.models import MODELS, ModelConfig, build_model  # noqa: E402
from latentwire.codec.training.models.density import FactorizedDensity  # noqa: E402
from latentwire.codec.training.train import TrainOptions, load_checkpoint, train  # noqa: E402

torch.set_num_threads(1)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig("dense", [1, 28, 28], 32, [512, 256], activation="gelu"),
        ModelConfig("conv2d", [3, None, None], 8, [16, 24], kernel_size=3, loss="bce"),
        ModelConfig("conv1d", [2, None], 6, [8, 16, 16], activation="leaky_relu"),
        ModelConfig("conv1d", [2, None], 6, [8, 16], blocks=2),
    ],
    ids=lambda c: c.family + (f"-blocks{c.blocks}" if c.blocks else ""),
)
def test_config_round_trip_rebuilds_identical_model(config: ModelConfig) -> None:
    import json

    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    a, b = build_model(config), build_model(again)
    assert _shapes(a) == _shapes(b)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k  # the seed makes initial weights reproducible
    other = build_model(ModelConfig.from_dict({**config.to_dict(), "seed": 1}))
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in a.state_dict().items())


def test_residual_blocks_deepen_every_stage_and_keep_shapes() -> None:
    from latentwire.codec.training.models.conv import ResidualBlock

    plain = build_model(ModelConfig("conv1d", [2, None], 4, [8, 16]))
    deep = build_model(ModelConfig("conv1d", [2, None], 4, [8, 16], blocks=2))
    # 2 stages x 2 blocks in the encoder; decoder: 2 after its input conv + 2 after the one inner stage
    assert sum(isinstance(m, ResidualBlock) for m in deep.encoder) == 4
    assert sum(isinstance(m, ResidualBlock) for m in deep.decoder) == 4
    assert not any(isinstance(m, ResidualBlock) for m in plain.modules())
    x = torch.rand(3, 2, 301)
    a, b = plain.eval()(x), deep.eval()(x)
    assert a.x_hat.shape == b.x_hat.shape == x.shape and a.y.shape == b.y.shape == (3, 4, 76)
    with pytest.raises(ValueError, match="conv families only"):
        build_model(ModelConfig("dense", [1, 28, 28], 8, [32], blocks=1))
    with pytest.raises(ValueError, match="blocks must be >= 0"):
        ModelConfig("conv1d", [2, None], 4, [8], blocks=-1)


def test_hinton_784_1000_500_250_30_builds() -> None:
    model = build_model(ModelConfig("dense", [1, 28, 28], 30, [1000, 500, 250], activation="relu"))
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 1000), (1000, 500), (500, 250), (250, 30)]
    dec = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dec] == [(30, 250), (250, 500), (500, 1000), (1000, 784)]
    out = model.eval()(torch.rand(3, 1, 28, 28))
    assert out.x_hat.shape == (3, 1, 28, 28) and out.y.shape == (3, 30) and out.bits.shape == (3,)
    assert model.latent_shape() == [30] and model.stride == 1
    assert set(MODELS) == {"dense", "conv2d", "conv1d", "gdn2d", "hyper2d"}


@pytest.mark.parametrize("size", [(28, 28), (37, 53), (5, 3)])
def test_conv2d_any_size_pads_and_crops(size: tuple[int, int]) -> None:
    model = build_model(ModelConfig("conv2d", [3, None, None], 4, [8, 8])).eval()
    x = torch.rand(2, 3, *size)
    out = model(x)
    assert out.x_hat.shape == x.shape
    assert out.y.shape == (2, 4, math.ceil(size[0] / 4), math.ceil(size[1] / 4))


def test_conv1d_any_length() -> None:
    model = build_model(ModelConfig("conv1d", [2, None], 4, [8, 8, 8])).eval()
    for n in (1024, 1000, 9):
        out = model(torch.randn(2, 2, n))
        assert out.x_hat.shape == (2, 2, n) and out.y.shape == (2, 4, math.ceil(n / 8))


def test_bad_configs_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="bce"):
        ModelConfig("dense", [784], 8, [16], loss="bce", output_activation="none")
    with pytest.raises(ValueError, match="activation"):
        ModelConfig("dense", [784], 8, [16], activation="swish")
    with pytest.raises(ValueError, match="unknown model family"):
        build_model(ModelConfig("lstm", [784], 8, [16]))
    with pytest.raises(ValueError, match="odd"):
        build_model(ModelConfig("conv2d", [1, None, None], 8, [16], kernel_size=4))
    with pytest.raises(ValueError, match="fixed sample_shape"):
        build_model(ModelConfig("dense", [1, None, None], 8, [16]))


def test_density_learns_a_gaussian_and_gives_normalised_pmfs() -> None:
    """Per-channel densities fitted to N(0, 3^2) and N(2, 0.5^2) reach the true discrete entropy."""
    torch.manual_seed(0)
    density = FactorizedDensity(2)
    opt = torch.optim.Adam(density.parameters(), lr=1e-2)
    scale = torch.tensor([3.0, 0.5]).reshape(1, 2)
    mean = torch.tensor([0.0, 2.0]).reshape(1, 2)
    for _ in range(400):
        y = torch.randn(512, 2) * scale + mean
        loss = density.bits(y + torch.empty_like(y).uniform_(-0.5, 0.5)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    offsets, probs = density.pmf_tables(tail_mass=1e-9)
    for p in probs:
        assert p.dtype == np.float64 and abs(p.sum() - 1.0) < 1e-12 and np.all(p >= 0)
    # The true pmf of round(N(mu, s^2)) and its entropy.
    from scipy.stats import norm

    for c, (mu, s) in enumerate([(0.0, 3.0), (2.0, 0.5)]):
        k = np.arange(offsets[c], offsets[c] + len(probs[c]))
        truth = norm.cdf(k + 0.5, mu, s) - norm.cdf(k - 0.5, mu, s)
        assert truth.sum() > 1 - 1e-6  # the range covers the mass
        cross_entropy = -np.sum(truth * np.log2(np.maximum(probs[c], 1e-300)))
        entropy = -np.sum(truth[truth > 0] * np.log2(truth[truth > 0]))
        assert cross_entropy - entropy < 0.05, (c, cross_entropy, entropy)
    # Far outside the learned range the rate is large but finite (likelihood floor).
    far = density.bits(torch.tensor([[1e4, -1e4]])).detach()
    assert torch.isfinite(far).all() and float(far) > 50


def _mnist(n: int):
    return load_mnist(sample_data_root() / "mnist", limit=n)


def test_train_checkpoint_and_resume(tmp_path) -> None:
    data = _mnist(600)
    tr, va = data.split(0.2, seed=0)
    config = ModelConfig("dense", [1, 28, 28], 8, [64])
    opts = TrainOptions(epochs=2, batch_size=64, progress=False, threads=1, out=str(tmp_path), command="pytest")
    first = train(config, tr, va, opts)
    assert first.epochs_run == 2 and len(first.history) == 2
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["epoch"] == 1 and ckpt["config"] == config.to_dict() and ckpt["command"] == "pytest"
    assert ckpt["data"]["n_train"] == len(tr) and ckpt["normalization"]["scale"] == 255.0
    assert {"optimizer", "scheduler", "model", "best_model", "best_val_loss"} <= set(ckpt)
    resumed = train(
        config, tr, va, TrainOptions(epochs=4, batch_size=64, progress=False, threads=1, out=str(tmp_path), resume=True)
    )
    assert resumed.epochs_run == 4 and [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.best_val_loss <= first.best_val_loss
    with pytest.raises(ValueError, match="trained with"):
        train(ModelConfig("dense", [1, 28, 28], 9, [64]), tr, va,
              TrainOptions(epochs=5, progress=False, threads=1, out=str(tmp_path), resume=True))


def test_init_from_warm_starts_with_a_fresh_schedule(tmp_path) -> None:
    data = _mnist(600)
    tr, va = data.split(0.2, seed=0)
    config = ModelConfig("dense", [1, 28, 28], 8, [64])
    first = train(config, tr, va, TrainOptions(epochs=2, batch_size=64, progress=False, threads=1,
                                                out=str(tmp_path / "a"), command="pytest a"))
    # lr 0: the warm-started weights must come through untouched, and the first run's provenance with them
    warm = train(config, tr, va, TrainOptions(epochs=1, batch_size=64, lr=0.0, progress=False, threads=1,
                                               out=str(tmp_path / "b"), init_from=str(tmp_path / "a"),
                                               command="pytest b"))
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["best_model"][k], b["best_model"][k]) for k in a["best_model"])
    assert b["init_from"]["command"] == "pytest a" and b["init_from"]["epochs"] == 2 and b["init_from"]["seconds"] > 0
    assert b["epoch"] == 0 and b["command"] == "pytest b"  # a fresh schedule, not a resume
    assert warm.best_val_loss == pytest.approx(first.best_val_loss, rel=1e-4)
    with pytest.raises(ValueError, match="--init-from"):
        train(ModelConfig("dense", [1, 28, 28], 9, [64]), tr, va,
              TrainOptions(epochs=1, progress=False, threads=1, init_from=str(tmp_path / "a")))


def test_plain_autoencoder_still_fits_a_density() -> None:
    data = _mnist(400)
    tr, va = data.split(0.25, seed=1)
    config = ModelConfig("dense", [1, 28, 28], 4, [32])
    before = build_model(config).density.pmf_tables()
    result = train(config, tr, va, TrainOptions(epochs=2, batch_size=50, rate_weight=0.0, progress=False, threads=1))
    after = result.model.density.pmf_tables()
    assert before[0] != after[0] or any(
        len(a) != len(b) or not np.allclose(a, b) for a, b in zip(before[1], after[1], strict=True)
    )
    assert np.isfinite(result.val_bytes_per_sample) and np.isfinite(result.val_psnr_db)


def test_bce_rejects_data_outside_unit_range() -> None:
    from latentwire.codec.sources import load_ecg_windows

    ecg = load_ecg_windows(sample_data_root() / "mitdb", limit_per_record=4)
    tr, va = ecg.split(0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train(
            ModelConfig("conv1d", [2, None], 4, [8], loss="bce"),
            tr,
            va,
            TrainOptions(epochs=1, progress=False, threads=1),
        )


def test_cuda_device_is_refused_without_a_gpu() -> None:
    from latentwire.codec.training.train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda() -> None:
    data = _mnist(400)
    tr, va = data.split(0.25)
    result = train(ModelConfig("conv2d", [1, None, None], 4, [8, 8]), tr, va,
                   TrainOptions(epochs=1, device="cuda", progress=False, threads=1))
    assert result.device == "cuda" and next(result.model.parameters()).device.type == "cpu"
    assert len(result.model.density.pmf_tables()[0]) == 4
