"""Calibrate a real (tiny) trained bundle with its own ONNX graphs, then code real digits through
packets at every quality level: the bound holds, the model id covers the tables, bytes drop with D."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentwire.codec.bundle import Bundle  # noqa: E402
from latentwire.codec.calibrate import DEFAULT_QUALITY_LADDER, calibrate  # noqa: E402
from latentwire.codec.coding.bitstream import read_packet, write_packet  # noqa: E402
from latentwire.codec.coding.payload import CodingTables, PayloadReader, encode_payload  # noqa: E402
from latentwire.codec.coding.quantize import quantize  # noqa: E402
from latentwire.codec.coding.residual import reconstruction_crc  # noqa: E402
from latentwire.codec.errors import InputError, ModelMismatch  # noqa: E402
from latentwire.codec.runtime import Decoder, Encoder  # noqa: E402
from latentwire.codec.sources import load_mnist, sample_data_root  # noqa: E402
from latentwire.codec.training import export as export_mod  # noqa: E402
from latentwire.codec.training import train as train_mod  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cal")
    folder = sample_data_root() / "mnist"
    assert train_mod.main([
        "--data", str(folder), "--source-option", "limit=1000", "--family", "dense", "--layers", "128",
        "--code-size", "16", "--epochs", "3", "--batch-size", "64", "--lr", "3e-3", "--rate-weight", "0.01",
        "--out", str(work / "run"), "--no-progress", "--threads", "1",
    ]) == 0
    assert export_mod.main([str(work / "run"), "--out", str(work / "bundle"), "--name", "cal-test"]) == 0
    return work / "bundle"


def test_calibrate_then_code_every_level(bundle_dir: Path) -> None:
    folder = sample_data_root() / "mnist"
    train = load_mnist(folder, split="train")
    before = Bundle.load(bundle_dir).model_id
    report = calibrate(bundle_dir, train, threads=1)
    bundle = Bundle.load(bundle_dir, verify=True)  # hashes + model id re-finalized
    m = bundle.manifest
    assert bundle.model_id == report.model_id != before
    assert [q.max_error for q in m.quality_levels] == list(DEFAULT_QUALITY_LADDER)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["entropy"]["file"] == "entropy.json" and len(manifest["metrics"]["calibration"]["levels"]) == 6
    # every stage that made the bundle says how it was run and how long it took
    stage = manifest["metrics"]["calibration"]
    assert stage["command"].startswith("latentwire") and 0 < stage["seconds"] <= report.seconds
    assert manifest["training"]["export"]["seconds"] > 0 and manifest["training"]["export"]["command"]
    psnrs = [lv.psnr_db for lv in report.levels]
    assert psnrs == sorted(psnrs) and psnrs[-1] == float("inf") and psnrs[3] > 35

    tables = CodingTables.load(bundle_dir)
    assert len(tables.latent) == m.latent_channels and tables.residual is not None
    norm = m.normalization
    enc, dec = Encoder(bundle, provider="cpu", threads=1), Decoder(bundle, provider="cpu", threads=1)
    raw = load_mnist(folder, split="test", limit=50).samples
    symbols = quantize(enc.encode(norm.to_model(raw)))
    raw_float = norm.to_raw_float(dec.decode(symbols.astype(np.float32)))
    sizes = []
    for level, d in enumerate(m.quality_levels):
        e = d.max_error
        payload, info = encode_payload(
            tables, symbols, m.channel_axis, x_raw=raw if e is not None else None,
            raw_float=raw_float if e is not None else None, max_error=e,
        )
        pkt = write_packet(
            model_id=m.model_id, quality=level, sample_shape=raw.shape[1:], count=len(raw), payload=payload,
            residual=e is not None, recon_crc=None if info is None else info.crc,
        )
        sizes.append(len(pkt))
        header, body = read_packet(pkt, m.model_id)
        reader = PayloadReader(body, tables)
        s = reader.latents(header.count, tuple(m.latent_shape), m.channel_axis)
        assert np.array_equal(s, symbols)
        f = norm.to_raw_float(dec.decode(s.astype(np.float32)))
        if e is None:
            continue
        rec = reader.residual(f, e)
        assert reconstruction_crc(rec) == header.recon_crc
        assert np.abs(rec.astype(np.int64) - raw.astype(np.int64)).max() <= e
    assert sizes == sorted(sizes)
    with pytest.raises(ModelMismatch):
        read_packet(pkt, before)


def test_calibrate_rejects_bad_ladders(bundle_dir: Path) -> None:
    raw = load_mnist(sample_data_root() / "mnist", split="test", limit=20).samples
    with pytest.raises(InputError):
        calibrate(bundle_dir, raw, quality_max_errors=(4, None))
    with pytest.raises(InputError):
        calibrate(bundle_dir, raw.astype(np.int64) + 300)
