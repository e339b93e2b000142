"""The photo bundle's exact prediction (issue 24 part 1): gdn2d's decoder as an integer network.

The inverse GDN layer is held to Python integers (math.isqrt), the whole network built from the
shipped photo bundle to an independent int64 evaluation of the stored file (no BLAS, no float),
and the codec with it: FLAG_EXACT packets round-trip within every bound (lossless bit-exactly), at
any batch size, and decode to the same bytes in another process with another thread count.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _exact_reference import int64_forward, read_exact
from latentwire.codec.calibrate import calibrate
from latentwire.codec.codec import Codec, LatentGrid
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.exact import IntegerNetwork
from latentwire.codec.coding.exact_gdn import Igdn, isqrt_int64
from latentwire.codec.errors import BundleError, InputError
from latentwire.codec.sources import ImageFolder, load_source, sample_data_root
from latentwire.codec.training.quantize_exact import quantize_exact

PHOTOS = sample_data_root() / "bsds"
SHIPPED = Path(__file__).resolve().parents[2] / "codec" / "assets" / "bsds-gdn2d"


def test_isqrt_is_the_floor_of_the_real_root_up_to_2_53() -> None:
    roots = np.array([0, 1, 2, 3, 1000, 2**20 + 7, 2**26 - 1, 94906265, 94906266], dtype=np.int64)
    values = np.concatenate([roots * roots + d for d in (-1, 0, 1)])
    values = values[(values >= 0) & (values < 2**53)]
    assert isqrt_int64(values).tolist() == [math.isqrt(int(v)) for v in values]


def _python_igdn(layer: Igdn, x: np.ndarray) -> list[int]:
    """One pixel's channels through the igdn arithmetic of codec/FORMAT.md, in Python integers."""
    out = []
    for i in range(layer.channels):
        acc = int(layer.beta[i]) + sum(int(g) * int(v) * int(v) for g, v in zip(layer.gamma[i], x, strict=True))
        y = int(x[i]) * math.isqrt(acc)
        y = (y + (1 << (layer.pre_shift - 1))) >> layer.pre_shift if layer.pre_shift else y
        u = (y * int(layer.multiplier[i]) + (1 << (layer.shift - 1))) >> layer.shift
        out.append(min(max(u, layer.lo), layer.hi))
    return out


def test_igdn_agrees_with_python_integers() -> None:
    rng = np.random.default_rng(0)
    c = 6
    layer = Igdn(rng.integers(0, 2**16, (c, c)), rng.integers(1, 2**30, c), rng.integers(2**20, 2**24, c), 9, 30,
                 -(2**15), 2**15 - 1)
    x = rng.integers(-(2**15), 2**15, (2, 3, 4, c))
    layer.bound([2**15] * c)  # provable
    got = layer(x)
    for idx in np.ndindex(*x.shape[:-1]):
        assert got[idx].tolist() == _python_igdn(layer, x[idx])


def test_an_igdn_whose_sum_could_round_in_float64_is_refused() -> None:
    c = 4
    big = Igdn(np.full((c, c), 2**20), np.ones(c, np.int64), np.ones(c, np.int64), 0, 0, -10, 10)
    with pytest.raises(BundleError, match="2\\*\\*53"):
        big.bound([2**16] * c)
    with pytest.raises(BundleError, match="beta >= 1"):
        Igdn(np.ones((c, c), np.int64), np.zeros(c, np.int64), np.ones(c, np.int64), 0, 0, -10, 10)


def _crops() -> np.ndarray:
    return load_source(PHOTOS, size=(64, 64), per_image=4).samples


@pytest.fixture(scope="module")
def exact_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The shipped photo bundle with its exact network built on crops of the shipped sample photos,
    then recalibrated (its residual tables follow the prediction)."""
    pytest.importorskip("onnx")
    d = tmp_path_factory.mktemp("exact-photo") / "bundle"
    shutil.copytree(SHIPPED, d)
    crops = _crops()
    _, agreement = quantize_exact(d, crops, holdout=2, threads=1, command="test")
    calibrate(d, crops, threads=1)
    return d, agreement


def test_the_integer_network_follows_the_float_decoder(exact_bundle: tuple[Path, object]) -> None:
    d, agreement = exact_bundle
    assert agreement.values_differing < 0.02 and agreement.max_abs_difference <= 2  # type: ignore[attr-defined]
    assert abs(agreement.psnr_exact_db - agreement.psnr_float_db) < 0.02  # type: ignore[attr-defined]
    block = json.loads((d / "manifest.json").read_text())["exact"]
    assert block["latent_level"] == 7 and block["command"] == "test" and block["max_partial_sum_log2"] < 53


def _int64_reference(data: bytes, symbols: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What exact.npz means, evaluated independently (tests/_exact_reference.py), cropped to size."""
    return int64_forward(*read_exact(data), symbols)[:, :, : size[0], : size[1]]


def test_the_stored_network_equals_an_independent_int64_evaluation(exact_bundle: tuple[Path, object]) -> None:
    d, _ = exact_bundle
    codec = Codec.load(d, provider="cpu", threads=1)
    x = _crops()[:2, :, :24, :40]
    symbols = codec.quantize_latents(codec.encoder.encode(codec.manifest.normalization.to_model(x)),
                                     codec.reference_grid)
    net = IntegerNetwork.load(d / "exact.npz")
    got = net.predict_maps(symbols, (24, 40))
    assert np.array_equal(got, _int64_reference((d / "exact.npz").read_bytes(), symbols, (24, 40)))
    assert np.array_equal(got[1:], net.predict_maps(symbols[1:], (24, 40)))  # batch size changes nothing
    with pytest.raises(InputError, match="reference level"):
        codec._residual_prediction(symbols, LatentGrid(1.0, 0), (3, 24, 40))


_CHILD = """
import sys, numpy as np
from latentwire.codec.codec import Codec, LatentGrid
c = Codec.load(sys.argv[1], provider="cpu", threads=2)
np.save(sys.argv[3], np.concatenate([c.decode(p).ravel() for p in np.load(sys.argv[2], allow_pickle=True)]))
"""


def test_exact_photo_levels_round_trip_the_same_in_another_process(exact_bundle: tuple[Path, object],
                                                                   tmp_path: Path) -> None:
    d, _ = exact_bundle
    codec = Codec.load(d, provider="cpu", threads=1)
    photos = [img[:, :40, :56] for img in ImageFolder(PHOTOS).images()]
    packets, decoded = [], []
    for q, level in enumerate(codec.qualities):
        if level.max_error is None:
            continue
        for photo in photos:
            pkt = codec.encode(photo[None], quality=q)
            assert bitstream.peek_header(pkt).has_exact
            out = codec.decode(pkt)
            assert int(np.abs(out.astype(np.int64) - photo).max()) <= level.max_error
            if level.max_error == 0:
                assert np.array_equal(out[0], photo)
            packets.append(pkt)
            decoded.append(out.ravel())
    arr = np.empty(len(packets), dtype=object)
    arr[:] = packets
    np.save(tmp_path / "packets.npy", arr, allow_pickle=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", _CHILD, str(d), str(tmp_path / "packets.npy"),
                          str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), np.concatenate(decoded))


def test_too_few_crops_are_refused_and_change_nothing(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    with pytest.raises(InputError, match="equal-size image crops"):
        quantize_exact(tmp_path / "b", _crops()[:2], holdout=2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before  # nothing written
