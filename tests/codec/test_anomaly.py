"""Anomaly score, lossless fallback packets, features: the codec side of issue 7 items 3-5.

Runs on the session's tiny trained MNIST bundle (tests/conftest.py), calibrated like any bundle,
so its manifest carries the anomaly threshold calibrate.py derives from the training digits.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.cli import main as cli_main
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.bitstream import CodingPath
from latentwire.codec.coding.fallback import compress_raw
from latentwire.codec.errors import BitstreamError, InputError
from latentwire.codec.sources import load_mnist, sample_data_root

PATH_LATENT, PATH_RESIDUAL, PATH_LOSSLESS = CodingPath.LATENT, CodingPath.RESIDUAL, CodingPath.LOSSLESS


@pytest.fixture(scope="module")
def codec(tiny_bundle: Path) -> Codec:
    return Codec.load(tiny_bundle, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist(sample_data_root() / "mnist", split="test").samples


def test_threshold_is_the_training_error_quantile(codec: Codec) -> None:
    train = load_mnist(sample_data_root() / "mnist", split="train").samples
    block = codec.manifest.raw["anomaly"]
    assert block["threshold_quantile"] == 0.999 and block["n_samples"] == len(train)
    scores = codec.scores(train)
    assert scores.shape == (len(train),) and scores.dtype == np.float64
    assert codec.anomaly_threshold() == pytest.approx(float(np.quantile(scores, 0.999)), rel=1e-6)
    assert codec.anomaly_threshold(0.99) < codec.anomaly_threshold(0.999)
    assert np.mean(scores > codec.anomaly_threshold(0.99)) <= 0.011
    with pytest.raises(InputError, match="quantile"):
        codec.anomaly_threshold(0.5)


def test_scores_separate_unseen_kinds_of_input(codec: Codec, digits: np.ndarray) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    inverted = (255 - digits[:200]).astype(np.uint8)
    noise = rng.integers(0, 256, size=(200, 1, 28, 28), dtype=np.uint8)
    normal = codec.scores(digits[:400])
    for name, other in (("inverted", inverted), ("noise", noise)):
        auc = roc_auc_score(np.r_[np.zeros(400), np.ones(len(other))], np.r_[normal, codec.scores(other)])
        assert auc > 0.95, (name, auc)


def test_lossless_fallback_packet_round_trips_exactly(codec: Codec, digits: np.ndarray) -> None:
    raw = digits[:5]
    packet = codec.encode_lossless(raw)
    header = codec.header(packet)
    assert header.is_lossless and header.flags == bitstream.FLAG_LOSSLESS and header.quality == 0
    assert codec.path(packet) == PATH_LOSSLESS
    assert np.array_equal(codec.decode(packet), raw)
    # latent and residual packets are what they always were
    assert codec.path(codec.encode(raw, quality=0)) == PATH_LATENT
    assert codec.path(codec.encode(raw, max_error=0)) == PATH_RESIDUAL
    assert not codec.header(codec.encode(raw, quality=0)).is_lossless


def test_malformed_fallback_packets_are_refused(codec: Codec, digits: np.ndarray) -> None:
    with pytest.raises(InputError):
        bitstream.write_packet(model_id=codec.model_id, quality=0, sample_shape=(1, 28, 28), count=1,
                               payload=b"x", residual=True, lossless=True)
    junk = bitstream.write_packet(model_id=codec.model_id, quality=0, sample_shape=(1, 28, 28), count=1,
                                  payload=b"not zstd", lossless=True)
    with pytest.raises(BitstreamError, match="zstd"):
        codec.decode(junk)
    short = bitstream.write_packet(model_id=codec.model_id, quality=0, sample_shape=(1, 28, 28), count=2,
                                   payload=compress_raw(digits[:1], np.uint8), lossless=True)
    with pytest.raises(BitstreamError, match="need 1568"):
        codec.decode(short)
    # flags lossless + residual, with a valid CRC: still refused
    body = bytearray(codec.encode_lossless(digits[:1])[:-4])
    body[3] = bitstream.FLAG_LOSSLESS | bitstream.FLAG_RESIDUAL
    forged = bytes(body) + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    with pytest.raises(BitstreamError, match="combine"):
        codec.decode(forged)


def test_mixed_stream_sends_anomalies_losslessly_in_order(codec: Codec, digits: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=(3, 1, 28, 28), dtype=np.uint8)
    stream = np.concatenate([digits[:10], noise, digits[10:20], (255 - digits[20:22]).astype(np.uint8)])
    enc = codec.encode_scored(stream, quality=0)
    assert enc.threshold == codec.anomaly_threshold()
    assert np.array_equal(enc.lossless, enc.scores > enc.threshold)
    assert enc.lossless[10:13].all() and enc.lossless[23:].all() and enc.lossless[:10].mean() < 0.5
    assert [b - a for a, b in enc.frames] and enc.frames[0][0] == 0 and enc.frames[-1][1] == len(stream)
    decoded = np.concatenate(codec.decode_many(enc.packets))
    assert decoded.shape == stream.shape
    for (a, b), packet in zip(enc.frames, enc.packets, strict=True):
        assert codec.path(packet) == (PATH_LOSSLESS if enc.lossless[a] else PATH_LATENT)
        assert bool(enc.lossless[a:b].all()) or not enc.lossless[a:b].any()  # one path per packet
    assert np.array_equal(decoded[enc.lossless], stream[enc.lossless])  # never learned, arrives intact
    # without the fallback the same frames are destroyed; per_frame gives one packet per frame
    plain = np.concatenate(codec.decode_many(codec.encode_scored(stream, quality=0, fallback=False).packets))
    assert not np.array_equal(plain[10:13], stream[10:13])
    assert len(codec.encode_scored(stream, quality=0, per_frame=True).packets) == len(stream)
    assert codec.encode_with_fallback(stream, 0) == enc.packets


def test_embed_api_and_cli(codec: Codec, digits: np.ndarray, tiny_bundle: Path, tmp_path: Path) -> None:
    codes = codec.embed(digits[:64])
    assert codes.dtype == np.float32 and codes.shape == (64, 16)
    np.testing.assert_array_equal(codec.embed(digits[:64]), codes)
    out = tmp_path / "codes.npy"
    assert cli_main(["embed", "--bundle", str(tiny_bundle), "--data", str(sample_data_root() / "mnist"),
                     "--source-option", "split=test", "--out", str(out), "--threads", "1"]) == 0
    saved = np.load(out)
    assert saved.shape == (len(digits), 16)
    np.testing.assert_allclose(saved[:64], codes, atol=1e-5)
    labels = np.load(tmp_path / "codes.labels.npy")
    assert labels.shape == (len(digits),) and set(np.unique(labels)) <= set(range(10))
    json.dumps(saved[:1].tolist())  # plain floats, usable anywhere
