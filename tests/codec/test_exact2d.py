"""The 2-D exact layers and the hyperprior's exact synthesis (codec/coding/exact_hyper.py).

The runtime evaluates conv2d as float64 im2col matmuls and trusts the 2**53 proof; these tests hold
it to plain Python integers (single layers) and to int64 numpy written here (whole networks, read
from the stored bytes, not through the runtime's loader), pin the transposed-convolution geometry to
torch's ConvTranspose2d, and run a small hyper-synthesis really trained on the shipped photos'
latents: the same integers across processes, batch sizes and BLAS thread counts, within a stated
tolerance of the float h_s, and files or weights the proof cannot vouch for refused.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from _exact_reference import int64_forward, read_exact
from latentwire.codec.coding import exact as exact_module
from latentwire.codec.coding import exact_layers
from latentwire.codec.coding.exact import IntegerNetwork
from latentwire.codec.coding.exact_hyper import (
    LOG_SCALE_RANGE,
    MEAN_FRAC_BITS,
    SCALE_FRAC_BITS,
    ExactHyperSynthesis,
    scale_code_range,
)
from latentwire.codec.coding.exact_layers import Conv2d, Dilate2d, Requant
from latentwire.codec.errors import BundleError, InputError

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
PHOTO_BUNDLE = ASSETS / "bsds-gdn2d"
M, N = 16, 4  # the tiny hyperprior: the 16 busiest latent channels of the shipped photo model, z of 4
SIZE = (12, 18)  # the latent's (h, w); z is 3x5, h_s predicts 12x20
# |mu_exact - mu_float| and |log sigma_exact - log sigma_float|: half a grid step (the rounding onto
# the 1/256 grids) plus a quarter step for the integer weights and activations
TOLERANCE = 2.0**-9 + 2.0**-10


# ------------------------------------------------------------------ independent references


def _python_conv2d(x: list, w: list, b: list, pads: tuple[int, int, int, int]) -> list:
    """One image (C, H, W) nested lists through a stride-1 zero-padded convolution, in Python ints."""
    top, bottom, left, right = pads
    c, h, wd = len(x), len(x[0]), len(x[0][0])
    kh, kw = len(w[0][0]), len(w[0][0][0])

    def at(ci: int, y: int, xx: int) -> int:
        y, xx = y - top, xx - left
        return x[ci][y][xx] if 0 <= y < h and 0 <= xx < wd else 0

    ho, wo = h + top + bottom - kh + 1, wd + left + right - kw + 1
    return [[[sum(w[o][ci][i][j] * at(ci, y + i, xx + j) for ci in range(c) for i in range(kh) for j in range(kw))
              + b[o] for xx in range(wo)] for y in range(ho)] for o in range(len(w))]


def _reference(data: bytes, z: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """What a hyper.npz means, per codec/FORMAT.md: the network, cropped, split, scale codes clipped."""
    spec, arrays = read_exact(data)
    out = int64_forward(spec, arrays, z)[:, :, : size[0], : size[1]]
    hyper, m = spec["hyper"], out.shape[1] // 2
    return out[:, :m], np.clip(out[:, m:], hyper["scale_code_lo"], hyper["scale_code_hi"])


# ------------------------------------------------------------------ the 2-D layers


def test_conv2d_and_dilate2d_agree_with_python_integers(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    # large operands: products to 2**44 and partial sums past 2**47, where float32 would be far off
    w = rng.integers(-(1 << 20), 1 << 20, size=(3, 2, 3, 4))
    b = rng.integers(-(1 << 40), 1 << 40, size=3)
    x = rng.integers(-(1 << 24), 1 << 24, size=(2, 2, 4, 3))  # (N, C, H, W)
    pads = (2, 1, 0, 3)
    conv = Conv2d(w, b, *pads)
    assert max(conv.bound([1 << 24] * 2)) < 1 << 53
    dil = Dilate2d(2)
    xd = dil(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    assert xd.shape == (2, 7, 5, 2)
    got = conv(xd).transpose(0, 3, 1, 2)
    for n in range(2):
        img = [[[int(v) for v in row] for row in ch] for ch in x[n]]
        dilated = [[[row[xx // 2] if y % 2 == 0 and xx % 2 == 0 else 0 for xx in range(5)]
                    for y, row in ((y, ch[y // 2]) for y in range(7))] for ch in img]
        want = _python_conv2d(dilated, w.tolist(), b.tolist(), pads)
        assert got[n].tolist() == want
    # chunked im2col (row blocks of one image, then several images a chunk): the same integers
    for budget in (8 * 7 * 24, 8 * 24 * 3, 1 << 30):
        monkeypatch.setattr(exact_layers, "IM2COL_BYTES", budget)
        assert np.array_equal(conv(xd).transpose(0, 3, 1, 2), got)


def test_the_sub_pixel_transposed_convolution_is_the_literal_dilate_then_conv2d() -> None:
    """The network runs dilate2d + conv2d as one sub-pixel matmul (TransposedConv2d, skipping the zeros):
    the same integers as the literal pair, for every stride, kernel, pad and map size, tiny maps included."""
    rng = np.random.default_rng(2)
    for trial in range(60):
        s, kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6))
        pads = tuple(int(p) for p in rng.integers(0, 6, size=4))
        h, w = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        conv = Conv2d(rng.integers(-50, 50, size=(3, 2, kh, kw)), rng.integers(-99, 99, size=3), *pads)
        x = rng.integers(-9, 9, size=(2, h, w, 2))
        try:
            literal = conv(Dilate2d(s)(x))
        except InputError:  # too small for the kernel: the fused path refuses it too
            with pytest.raises(InputError, match="too small"):
                exact_layers.TransposedConv2d(Dilate2d(s), conv)(x)
            continue
        fused = exact_layers.TransposedConv2d(Dilate2d(s), conv)(x)
        assert fused.shape == literal.shape and np.array_equal(fused, literal), (trial, s, kh, kw, pads, h, w)
        if trial < 6:  # and the literal pair against Python integers
            dilated = np.zeros((2, (h - 1) * s + 1, (w - 1) * s + 1, 2), np.int64)
            dilated[:, ::s, ::s] = x
            want = _python_conv2d(dilated[0].transpose(2, 0, 1).tolist(), conv.weight.tolist(), conv.bias.tolist(),
                                  pads)  # type: ignore[arg-type]
            assert fused[0].transpose(2, 0, 1).tolist() == want


def test_a_transposed_convolution_is_dilate_then_the_flipped_kernel_as_in_torch() -> None:
    torch = pytest.importorskip("torch")
    from latentwire.codec.training.models.hyper import HyperSynthesis
    from latentwire.codec.training.quantize_hyper import conv_steps

    torch.manual_seed(0)
    h_s = HyperSynthesis(5, 3).double()
    with torch.no_grad():  # integer weights and biases: float64 computes them exactly, as the layers must
        for p in h_s.parameters():
            p.copy_(torch.randint(-4, 5, p.shape, dtype=torch.float64))
    z = np.random.default_rng(1).integers(-3, 4, size=(2, 3, 3, 4))
    h = np.ascontiguousarray(z.transpose(0, 2, 3, 1))
    for k, step in enumerate(conv_steps(h_s)):
        if step.dilate > 1:
            h = Dilate2d(step.dilate)(h)
        h = Conv2d(np.rint(step.weight).astype(np.int64), np.rint(step.bias).astype(np.int64), *step.pads)(h)
        h = np.maximum(h, 0) if step.relu else h
        assert (k, step.relu) != (2, True)
    with torch.no_grad():
        want = h_s.net(torch.from_numpy(z.astype(np.float64))).numpy()
    assert h.shape == (2, 12, 16, 10)  # ConvTranspose2d(5, 2, 2, output_padding 1) twice: 4x each axis
    assert np.array_equal(h.transpose(0, 3, 1, 2), want)


def test_weights_that_could_round_in_float64_are_refused() -> None:
    w = np.full((1, 4, 2, 2), 1 << 20, dtype=np.int64)  # 16 taps * 2**20 * 2**32 = 2**56
    with pytest.raises(BundleError, match="2\\*\\*53"):
        IntegerNetwork(-(1 << 32), 1 << 32, (Conv2d(w, np.zeros(1, np.int64), 0, 0, 0, 0),
                                             Requant(np.ones(1, np.int64), 0, -9, 9)), (1, None, None), -9, 9,
                       "channels_first_2d")
    ok = IntegerNetwork(-(1 << 28), 1 << 28, (Conv2d(w, np.zeros(1, np.int64), 0, 0, 0, 0),
                                              Requant(np.ones(1, np.int64), 60, -9, 9)), (1, None, None), -9, 9,
                        "channels_first_2d")  # 2**52: exact
    assert ok.max_partial_sum == 1 << 52  # type: ignore[attr-defined]
    with pytest.raises(BundleError, match="int64"):  # 2**52 * 2**10 overflows the requant's product
        IntegerNetwork(-(1 << 28), 1 << 28, (Conv2d(w, np.zeros(1, np.int64), 0, 0, 0, 0),
                                             Requant(np.full(1, 1 << 10, np.int64), 0, -9, 9)), (1, None, None),
                       -9, 9, "channels_first_2d")
    with pytest.raises(BundleError, match="channels_first_2d layout"):
        IntegerNetwork(-8, 8, (Conv2d(w, np.zeros(1, np.int64), 0, 0, 0, 0), Requant(np.ones(1, np.int64), 0, -9, 9)),
                       (1, None), -9, 9, "channels_first")


# ------------------------------------------------------------------ a hyper-synthesis trained on real latents


@pytest.fixture(scope="module")
def trained() -> tuple:
    """(h_s, z): a tiny hyperprior (h_a, h_s with M = 16, N = 4) fitted for real to the latents the shipped
    photo model gives the three shipped BSDS photos (its 16 busiest channels), and those photos' z_hat."""
    torch = pytest.importorskip("torch")
    from PIL import Image

    from latentwire.codec.bundle import Bundle
    from latentwire.codec.runtime import Encoder
    from latentwire.codec.sources import ImageFolder, sample_data_root
    from latentwire.codec.training.models.hyper import HyperAnalysis, HyperSynthesis, gaussian_bits

    bundle = Bundle.load(PHOTO_BUNDLE)
    enc = Encoder(bundle, provider="cpu", threads=1)
    photos = []
    for img in ImageFolder(sample_data_root() / "bsds").images():  # 64x96 crops (one portrait: turned)
        pil = Image.fromarray(np.ascontiguousarray((img if img.shape[1] < img.shape[2] else img.transpose(0, 2, 1))
                                                   .transpose(1, 2, 0)))
        # enlarged 3x (Lanczos), so that a latent of 12x18 and a z of 3x5 leave h_s some room
        photos.append(np.asarray(pil.resize((288, 192), Image.Resampling.LANCZOS)).transpose(2, 0, 1))
    y = enc.encode(bundle.manifest.normalization.to_model(np.stack(photos)))  # (3, 192, 12, 18)
    busiest = np.argsort(y.std(axis=(0, 2, 3)))[-M:]
    y_t = torch.from_numpy(np.ascontiguousarray(y[:, busiest]))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    h_a, h_s = HyperAnalysis(M, N), HyperSynthesis(M, N)
    opt = torch.optim.Adam([*h_a.parameters(), *h_s.parameters()], lr=3e-3)

    def bits() -> torch.Tensor:
        z = h_a(y_t)
        mu, log_sigma = h_s(z + (torch.round(z) - z).detach(), SIZE)
        return gaussian_bits(torch.round(y_t - mu), torch.exp(log_sigma)).mean()

    with torch.no_grad():
        before = float(bits())
    for _ in range(150):
        opt.zero_grad()
        loss = bits()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(bits()) < 0.8 * before  # it learned to predict the latents: a real fit
    with torch.no_grad():
        z = np.rint(h_a(y_t).numpy()).astype(np.int64)  # (3, N, 3, 5)
    assert np.abs(z).max() > 1  # z carries information
    return h_s.eval(), z


@pytest.fixture(scope="module")
def exact(trained: tuple) -> ExactHyperSynthesis:
    from latentwire.codec.training.quantize_hyper import quantize_hyper_synthesis

    h_s, z = trained
    return quantize_hyper_synthesis(h_s, z[:2])  # calibrated on two photos; the third is unseen


def test_the_exact_synthesis_agrees_with_int64_numpy_and_the_float_h_s(trained: tuple,
                                                                        exact: ExactHyperSynthesis) -> None:
    from latentwire.codec.training.quantize_hyper import measure_hyper

    h_s, z = trained
    assert (exact.latent_channels, exact.hyper_channels, exact.stride) == (M, N, 4)
    assert (exact.mean_frac_bits, exact.scale_frac_bits) == (MEAN_FRAC_BITS, SCALE_FRAC_BITS)
    size = SIZE  # a latent off the 4-pixel grid: the output's top-left crop
    mean, scale = exact(z, size)
    assert mean.shape == scale.shape == (3, M, *SIZE) and mean.dtype == scale.dtype == np.int64
    ref_mean, ref_scale = _reference(exact.to_bytes(), z, size)
    assert np.array_equal(mean, ref_mean) and np.array_equal(scale, ref_scale)
    lo, hi = scale_code_range()
    assert lo <= scale.min() and scale.max() <= hi and lo / 256 >= LOG_SCALE_RANGE[0]
    full_mean, _ = exact(z, (12, 20))
    assert np.array_equal(full_mean[:, :, :, :18], mean)
    with pytest.MonkeyPatch.context() as mp:  # one image per pass (a big photo's memory bound): the same
        mp.setattr(exact_module, "MAP_PASS_VALUES", 1)
        assert all(np.array_equal(a, b) for a, b in zip(exact(z, size), (mean, scale), strict=True))
    agreement = measure_hyper(h_s, exact, z, (12, 20))
    assert agreement.max_abs_mean <= TOLERANCE and agreement.max_abs_log_scale <= TOLERANCE
    # the code the float log sigma rounds to, but where it lies within the quantization error of a tie
    assert agreement.scale_codes_differing < 0.05
    assert np.ptp(scale) > 64  # the scales vary across the photo: the comparison means something


_CHILD = r"""
import sys, zlib, numpy as np
from latentwire.codec.coding.exact_hyper import ExactHyperSynthesis
hs = ExactHyperSynthesis.load(sys.argv[1])
assert "torch" not in sys.modules  # the receiver's runtime is numpy only
z = np.load(sys.argv[2])
for batch in (1, 2, 3):
    parts = [hs(z[i : i + batch], (12, 18)) for i in range(0, len(z), batch)]
    mean = np.concatenate([p[0] for p in parts]); scale = np.concatenate([p[1] for p in parts])
    print(batch, zlib.crc32(np.ascontiguousarray(mean, "<i8").tobytes() + np.ascontiguousarray(scale, "<i8").tobytes()))
"""


def test_the_same_integers_in_other_processes_batch_sizes_and_thread_counts(
    trained: tuple, exact: ExactHyperSynthesis, tmp_path: Path
) -> None:
    _, z = trained
    mean, scale = exact(z, SIZE)
    expected = str(zlib.crc32(np.ascontiguousarray(mean, "<i8").tobytes()
                              + np.ascontiguousarray(scale, "<i8").tobytes()))
    (tmp_path / "hyper.npz").write_bytes(exact.to_bytes())
    np.save(tmp_path / "z.npy", z)
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        run = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "hyper.npz"), str(tmp_path / "z.npy")],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert [line.split() for line in run.stdout.strip().splitlines()] == [[b, expected] for b in "123"], threads


def test_z_outside_the_declared_range_is_clipped_on_both_sides_and_logged(
    trained: tuple, exact: ExactHyperSynthesis, caplog: pytest.LogCaptureFixture
) -> None:
    _, z = trained
    net = exact.network
    wild = z[:1].copy()
    wild[0, 0, 0, 0], wild[0, 1, 2, 3] = net.in_hi + 1000, net.in_lo - 7
    tame = np.clip(wild, net.in_lo, net.in_hi)
    with caplog.at_level(logging.WARNING, logger="latentwire.codec.coding.exact_hyper"):
        got = exact(wild, SIZE)
    assert "2 z_hat values outside" in caplog.text
    want = exact(tame, SIZE)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    with pytest.raises(InputError, match="integer latents"):
        exact(z.astype(np.float64) + 0.5, SIZE)
    with pytest.raises(InputError, match="exceeds"):
        exact(z, (13, 18))  # z of 3x5 predicts 12x20
    with pytest.raises(InputError, match="shaped"):
        exact(z[:, :2], SIZE)


def test_the_stored_synthesis_is_byte_stable_and_malformed_files_are_refused(exact: ExactHyperSynthesis) -> None:
    data = exact.to_bytes()
    again = ExactHyperSynthesis.from_bytes(data)
    assert again.to_bytes() == data
    spec, arrays = read_exact(data)
    assert spec["hyper"] == {"version": 1, "mean_frac_bits": 8, "scale_frac_bits": 8,
                             "scale_code_lo": scale_code_range()[0], "scale_code_hi": scale_code_range()[1]}
    from latentwire.codec.coding.exact import write_npz

    def refused(spec_change: dict, match: str, arrays_: dict | None = None) -> None:
        bad = json.loads(json.dumps(spec))
        for path, value in spec_change.items():
            node = bad
            *head, leaf = path.split("/")
            for key in head:
                node = node[int(key)] if isinstance(node, list) else node[key]
            if value is None:
                del node[leaf]
            else:
                node[leaf] = value
        with pytest.raises(BundleError, match=match):
            ExactHyperSynthesis.from_bytes(write_npz(bad, arrays if arrays_ is None else arrays_))

    refused({"hyper/version": 2}, "version 2")
    refused({"hyper": None}, "without a hyper block")
    refused({"hyper/scale_frac_bits": "8"}, "integer")
    refused({"hyper/scale_code_hi": 1 << 40}, "inside its output range")
    refused({"hyper/mean_frac_bits": 40}, "fractional bits")
    refused({"layers/1/op": "conv3d"}, "unknown exact layer")
    refused({"input/layout": "channels_first"}, "output shape")
    refused({"input/layout": "sideways"}, "layout in")
    refused({"layers/1/pad_top": -1}, "pads")
    refused({}, "not a readable", {k: v for k, v in arrays.items() if not k.endswith("weight")})
    refused({}, "integer weight", {**arrays, "1.weight": arrays["1.weight"].astype(np.float32)})
    with pytest.raises(BundleError, match="not a readable"):
        ExactHyperSynthesis.from_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="without a hyper block"):  # an exact.npz is not a hyper-synthesis
        ExactHyperSynthesis.load(ASSETS / "mnist-dense" / "exact.npz")


def test_bit_widths_whose_sums_could_round_are_refused_by_the_quantizer(trained: tuple) -> None:
    from latentwire.codec.training.quantize_hyper import quantize_hyper_synthesis

    h_s, z = trained
    with pytest.raises(BundleError, match="2\\*\\*53"):
        quantize_hyper_synthesis(h_s, z, weight_bits=24, act_bits=24)
    narrow = quantize_hyper_synthesis(h_s, z, weight_bits=8, act_bits=8)  # allowed, and coarser
    assert narrow.network.max_partial_sum < exact_layers.FLOAT64_EXACT  # type: ignore[attr-defined]


def test_the_sub_sample_transposed_convolution_is_the_literal_dilate_then_conv1d() -> None:
    """1-D networks (ECG) run dilate + conv1d as one sub-sample convolution (TransposedConv1d): the
    same integers as the literal pair and as Python integers, for every stride, kernel, pad and length."""
    rng = np.random.default_rng(3)
    for trial in range(80):
        s, k = int(rng.integers(1, 4)), int(rng.integers(1, 8))
        pads = (int(rng.integers(0, k + 1)), int(rng.integers(0, k + 2)))
        length = int(rng.integers(1, 9))
        conv = exact_layers.Conv1d(rng.integers(-50, 50, size=(3, 2, k)), rng.integers(-99, 99, size=3), *pads)
        x = rng.integers(-9, 9, size=(2, length, 2))
        try:
            literal = conv(exact_layers.Dilate(s)(x))
        except InputError:  # too short for the kernel: the fused path refuses it too
            with pytest.raises(InputError, match="too short"):
                exact_layers.TransposedConv1d(exact_layers.Dilate(s), conv)(x)
            continue
        fused = exact_layers.TransposedConv1d(exact_layers.Dilate(s), conv)(x)
        assert fused.shape == literal.shape and np.array_equal(fused, literal), (trial, s, k, pads, length)
        padded = []  # frame 0, per input channel: pads, then the samples with s - 1 zeros between them
        for ch in range(2):
            dilated = [0] * ((length - 1) * s + 1)
            for j in range(length):
                dilated[j * s] = int(x[0, j, ch])
            padded.append([0] * pads[0] + dilated + [0] * pads[1])
        for t in range(fused.shape[1]):  # output channel 0
            want = int(conv.bias[0]) + sum(int(conv.weight[0, ch, i]) * padded[ch][t + i]
                                           for ch in range(2) for i in range(k))
            assert int(fused[0, t, 0]) == want
