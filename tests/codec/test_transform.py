"""The transform residual (codec/coding/transform.py): what the latent misses, coded as DCT or
CDF 9/7 wavelet coefficients per lead, on real MIT-BIH windows and the shipped ECG model. Exact round trips,
fidelity set by the step, a per-frame PRDN target met, bit-exact decoding in another process,
and packets that cannot be misread."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.calibrate import calibrate
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding import transform as T
from latentwire.codec.errors import BitstreamError, InputError
from latentwire.codec.evaluate import prdn
from latentwire.codec.sources import load_ecg_windows, sample_data_root

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
MITDB = sample_data_root() / "mitdb"


@pytest.fixture(scope="module", params=["dct", "cdf97"])
def ecg(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Codec, np.ndarray]:
    """The shipped ECG model with a transform ladder in each basis, calibrated on records 100-101;
    windows of records 102-103 to code (never calibrated on)."""
    d = tmp_path_factory.mktemp("ecg-transform") / "bundle"
    shutil.copytree(ASSETS / "ecg-conv1d", d)
    cal = load_ecg_windows(MITDB, records=["100", "101"], window=1024).samples
    calibrate(d, cal, ["none", "t32", "t16", "t8"], threads=1, transform_basis=request.param)
    unseen = load_ecg_windows(MITDB, records=["102", "103"], window=1024).samples
    return Codec.load(d, provider="cpu", threads=1), unseen


def test_fft_dct_is_orthonormal_and_inverts() -> None:
    x = np.random.default_rng(0).normal(size=(3, 2, 1000))
    c = T.forward(x)
    assert np.allclose((x**2).sum(-1), (c**2).sum(-1))  # energy kept: the step sets the error energy
    assert np.abs(T.inverse(c) - x).max() < 1e-10
    i = np.arange(7)  # against the textbook matrix, odd length
    basis = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / 14) * np.sqrt(2 / 7)
    basis[0] /= np.sqrt(2)
    y = np.random.default_rng(1).normal(size=(2, 1, 7))
    assert np.abs(T.forward(y) - y @ basis.T).max() < 1e-12


def test_cdf97_keeps_length_and_inverts() -> None:
    x = np.random.default_rng(0).normal(size=(3, 2, 1024))
    c = T.wavelet_forward(x)
    assert c.shape == x.shape and T.wavelet_sizes(1024) == [16, 16, 32, 64, 128, 256, 512]
    assert np.abs(T.wavelet_inverse(c) - x).max() < 1e-9
    # close to orthonormal (CDF 9/7 is biorthogonal): a step still sets the error energy
    assert np.allclose((x**2).sum(-1), (c**2).sum(-1), rtol=0.1)
    edges = T.wavelet_band_edges(1024)
    assert edges[0] == 0 and edges[-1] == 1024 and np.all(np.diff(edges) > 0) and len(edges) - 1 == 18
    assert set(np.cumsum([0, 16, 16, 32, 64, 128, 256, 512]).tolist()) <= set(edges.tolist())  # subbands never mixed
    y = np.random.default_rng(1).normal(size=(1, 1, 1000))  # 1000 = 8 x 125: three levels
    assert T.wavelet_levels(1000) == 3 and np.abs(T.wavelet_inverse(T.wavelet_forward(y)) - y).max() < 1e-9
    with pytest.raises(InputError, match="divisible by 2"):
        T.wavelet_forward(np.zeros((1, 1, 999)))


def test_the_basis_is_named_in_the_tables(ecg: tuple[Codec, np.ndarray]) -> None:
    import json

    codec, _ = ecg
    tr = codec.tables.transform
    kind = json.loads((codec.bundle.path / "entropy.json").read_text())["transform"]["kind"]
    # the shipped model has an exact network: its wavelet levels reconstruct exactly, the DCT's in float
    assert tr.exact == (tr.basis == "cdf97")
    assert kind == (T.KIND_WAVELET_EXACT if tr.exact else T.BASES[tr.basis])
    assert T.TransformResidual.from_json_obj(tr.to_json_obj()) == tr
    with pytest.raises(Exception, match="unknown transform residual kind"):
        T.TransformResidual.from_json_obj({**tr.to_json_obj(), "kind": "haar-bands"})


def test_finer_steps_cost_more_and_deliver_more(ecg: tuple[Codec, np.ndarray]) -> None:
    codec, x = ecg
    assert [q.transform_step for q in codec.qualities] == [None, 32.0, 16.0, 8.0]
    sizes, fidelity = [], []
    for q in codec.qualities:
        packet = codec.encode(x, quality=q.index)
        out = codec.decode(packet)
        assert out.shape == x.shape and out.dtype == x.dtype
        sizes.append(len(packet))
        fidelity.append(prdn(x, out))
        assert codec.path(packet) == ("transform" if q.transform_step else "latent")
    assert sizes == sorted(sizes) and fidelity == sorted(fidelity, reverse=True), (sizes, fidelity)
    # orthonormal transform: the error of a step-s level is about s^2/12 per coefficient at most
    out = codec.decode(codec.encode(x, quality=3)).astype(np.float64)
    assert np.sqrt(np.mean((out - x) ** 2)) <= 8.0 / np.sqrt(12) + 0.5


def test_target_prdn_is_met_frame_by_frame(ecg: tuple[Codec, np.ndarray]) -> None:
    codec, x = ecg
    for target in (4.0, 8.0):
        out = codec.decode(codec.encode(x, target_prdn=target))
        per_frame = T.prdn_per_frame(x, out)
        hard = T.prdn_per_frame(x, codec.decode(codec.encode(x, quality=1))) > target  # where t32 fails
        assert per_frame.max() <= target + 1e-9, (target, per_frame.max())
        assert per_frame.mean() > 0.5 * target  # and it does not overspend (the coarsest step that meets it)
        assert hard.any() or per_frame.mean() < target
    with pytest.raises(InputError, match="target_prdn or max_error"):
        codec.encode(x, target_prdn=3.0, max_error=4)
    with pytest.raises(InputError, match="quality 0 has no transform residual"):
        codec.encode(x, quality=0, target_prdn=3.0)


_DECODE = """
import sys, numpy as np
from latentwire.codec.codec import Codec
c = Codec.load(sys.argv[1], provider="cpu", threads=int(sys.argv[2]))
np.save(sys.argv[3], c.decode(open(sys.argv[4], "rb").read()))
"""


def test_decodes_bit_exactly_in_another_process(ecg: tuple[Codec, np.ndarray], tmp_path: Path) -> None:
    codec, x = ecg
    packet = codec.encode(x[:64], target_prdn=5.0)
    (tmp_path / "p.lw").write_bytes(packet)
    out = tmp_path / "out.npy"
    subprocess.run([sys.executable, "-c", _DECODE, str(codec.bundle.path), "2", str(out), str(tmp_path / "p.lw")],
                   check=True, timeout=120)
    assert np.array_equal(np.load(out), codec.decode(packet))
    assert bitstream.read_packet(packet)[0].recon_crc is not None  # and the receiver can tell it is exact


def test_flags_and_levels_must_agree(ecg: tuple[Codec, np.ndarray]) -> None:
    codec, x = ecg
    packet = codec.encode(x[:4], quality=2)
    h, payload = bitstream.read_packet(packet)
    wrong = bitstream.write_packet(model_id=codec.model_id, quality=0, sample_shape=h.sample_shape, count=h.count,
                                   payload=bytes(payload), transform=True)  # a latent-only level with the flag
    with pytest.raises(BitstreamError, match="transform flag disagrees"):
        codec.decode(wrong)
    with pytest.raises(InputError, match="not both"):
        bitstream.write_packet(model_id=codec.model_id, quality=2, sample_shape=h.sample_shape, count=1, payload=b"",
                               residual=True, transform=True)


def test_eval_reports_the_target_and_the_windows_prdn(ecg: tuple[Codec, np.ndarray], tmp_path: Path) -> None:
    import json

    from latentwire.codec import cli

    codec, _ = ecg
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--bundle", str(codec.bundle.path), "--data", str(MITDB), "--source-option",
                     "records=102,103", "--quality", "0", "--target-prdn", "6", "--out", str(out)]) == 0
    latent, controlled = json.loads(out.read_text())["levels"]
    assert controlled["target_prdn"] == 6.0 and controlled["prdn_window_p95"] <= 6.0
    assert controlled["prdn_window_mean"] <= controlled["prdn_window_p95"]
    assert latent["prd_percent"] < latent["prdn_percent"] or latent["prdn_percent"] > 0
    assert controlled["bits_per_pixel"] is None and controlled["compression_ratio"] > 1
