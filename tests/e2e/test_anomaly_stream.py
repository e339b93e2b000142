"""Anomaly scores, lossless fallback, denoise and features through the transport (issue 7, items
3-5): a real server on 127.0.0.1 with the session's calibrated tiny MNIST bundle, real clients.

The stream mixes real digits with inverted digits and uniform noise. The expected decisions come
from the same bundle run locally (Codec.scores against the calibrated threshold): the test checks
that the server takes exactly those decisions, that lossless frames arrive bit for bit, and that
scores, paths, seq order and counts survive the wire and a server restart.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from _transport import running_server
from latentwire.client import Client
from latentwire.client.receive import Receiver
from latentwire.codec.codec import Codec
from latentwire.codec.sources import load_mnist, sample_data_root
from latentwire.server.config import ChannelSpec, ConfigError, ServerConfig
from latentwire.server.main import LatentwireServer, add_parser, config_from_args
from latentwire.server.sqlite_store import SqliteStore
from latentwire.server.store import PendingPacket

ANOMALIES = {"noise": slice(40, 43), "inverted": slice(63, 65)}


@pytest.fixture(scope="module")
def codec(tiny_bundle: Path) -> Codec:
    return Codec.load(tiny_bundle, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def stream() -> np.ndarray:
    """75 frames: 40 digits, 3 noise, 20 digits, 2 inverted digits, 10 digits."""
    d = load_mnist(sample_data_root() / "mnist", split="test").samples
    noise = np.random.default_rng(7).integers(0, 256, size=(3, 1, 28, 28), dtype=np.uint8)
    inverted = (255 - d[70:72]).astype(np.uint8)
    return np.ascontiguousarray(np.concatenate([d[:40], noise, d[40:60], inverted, d[60:70]]))


def _anomalous(n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for s in ANOMALIES.values():
        mask[s] = True
    return mask


def _collect(client: Client, channel: str, n: int, **kw) -> list:
    frames = []
    for f in client.subscribe(channel, 0, idle_timeout=15, **kw):
        frames.append(f)
        if len(frames) == n:
            break
    return frames


def _channels(bundle: Path) -> tuple[ChannelSpec, ...]:
    """mixed: the bundle's default level (a residual one) with fallback; plain: latent only, scored,
    no fallback; bare: latent only, not scored (the default: no score bytes on the wire)."""
    return (ChannelSpec("mixed", str(bundle), fallback=True), ChannelSpec("plain", str(bundle), quality=0, scores=True),
            ChannelSpec("bare", str(bundle), quality=0))


def test_fallback_channel_sends_anomalies_losslessly(codec: Codec, stream: np.ndarray, tiny_bundle: Path,
                                                    tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = len(stream)
    anomalous = _anomalous(n)
    local = codec.scores(stream)
    threshold = codec.anomaly_threshold()
    expected_lossless = local > threshold
    assert expected_lossless[anomalous].all(), "the tiny model must flag every inverted/noise frame"
    assert expected_lossless[~anomalous].mean() < 0.5, "most real digits must be below the threshold"

    with running_server(tiny_bundle, tmp_path / "data", channels=_channels(tiny_bundle)) as server:
        target = f"127.0.0.1:{server.port}"
        with Client(target, cache_dir=tmp_path / "cache") as client:
            info = client.channel("mixed")
            assert info.fallback and info.anomaly_threshold == pytest.approx(threshold)
            result = client.publish("mixed", stream, frames_per_message=20)
            assert (result.accepted, result.rejected, result.first_seq, result.last_seq) == (n, 0, 0, n - 1)
            frames = _collect(client, "mixed", n)

            assert [f.seq for f in frames] == list(range(n)), "every frame once, in seq order"
            paths = np.array([f.path for f in frames])
            scores = np.array([f.anomaly_score for f in frames], dtype=np.float64)
            np.testing.assert_allclose(scores, local, rtol=1e-4)  # float32 on the wire
            assert np.array_equal(paths == "lossless", expected_lossless), (paths, local, threshold)
            assert set(paths[~expected_lossless]) == {"residual"}  # the default level has a residual layer
            data = np.stack([f.data for f in frames])
            assert np.array_equal(data[expected_lossless], stream[expected_lossless]), "anomalies arrive intact"
            assert not np.array_equal(data[~expected_lossless], stream[~expected_lossless]), (
                "digits go through the model"
            )
            assert scores[anomalous].min() > max(
                2 * np.median(scores[~anomalous]), np.quantile(scores[~anomalous], 0.9)
            )

            lossless_count = server.metrics.value("latentwire_frames_path_total", channel="mixed", path="lossless")
            coded = sum(server.metrics.value("latentwire_frames_path_total", channel="mixed", path=p)
                        for p in ("latent", "residual"))
            assert (lossless_count, coded) == (expected_lossless.sum(), n - expected_lossless.sum())

            # denoise: residual/lossless frames become the model's reconstruction, shapes unchanged
            denoised = _collect(client, "mixed", n, denoise=True)
            clean = np.stack([f.data for f in denoised])
            assert clean.shape == stream.shape and clean.dtype == stream.dtype
            assert [(f.seq, f.path) for f in denoised] == [(f.seq, f.path) for f in frames]
            assert np.abs(clean.astype(int) - codec.denoise(data)).max() <= 1  # +-1: rounding across thread counts
            assert not np.array_equal(clean[expected_lossless], stream[expected_lossless])

            # features: the client's codes are the local encoder's
            codes = client.embed(info.model_id[:12], stream[:10])
            assert codes.shape == (10, 16) and codes.dtype == np.float32
            np.testing.assert_allclose(codes, codec.embed(stream[:10]), atol=1e-4)
            assert client.embed(info.model_id, stream[0]).shape == (1, 16)

            # the receiver daemon names the path and the scores in its log
            with caplog.at_level(logging.INFO, logger="latentwire.receive"):
                rx = Receiver(client, "mixed", tmp_path / "rx.pos", out_dir=tmp_path / "rx", until_seq=n)
                assert rx.run(0) == 0
            assert rx.written == n and rx.paths.get("lossless") == expected_lossless.sum()
            assert "lossless fallback (anomaly scores" in caplog.text and "seq 40-42" in caplog.text

    # a restarted server serves the same scores and paths from its log
    with running_server(tiny_bundle, tmp_path / "data", channels=_channels(tiny_bundle)) as server:
        with Client(f"127.0.0.1:{server.port}", cache_dir=tmp_path / "cache") as client:
            again = _collect(client, "mixed", n)
    assert [(f.seq, f.path, f.anomaly_score) for f in again] == [(f.seq, f.path, f.anomaly_score) for f in frames]


def test_without_fallback_anomalies_are_coded_but_scored(codec: Codec, stream: np.ndarray, tiny_bundle: Path,
                                                         tmp_path: Path) -> None:
    n = len(stream)
    anomalous = _anomalous(n)
    with running_server(tiny_bundle, tmp_path / "data", channels=_channels(tiny_bundle)) as server:
        with Client(f"127.0.0.1:{server.port}", cache_dir=tmp_path / "cache") as client:
            info = client.channel("plain")
            assert not info.fallback and info.anomaly_threshold == pytest.approx(codec.anomaly_threshold())
            assert client.publish("plain", stream, frames_per_message=32).accepted == n
            # edge-coded packets are not scored: the server never sees their original frames
            assert client.publish("plain", stream[:3], encode_at_edge=True).accepted == 3
            frames = _collect(client, "plain", n + 3)
            denoised = _collect(client, "plain", n + 3, denoise=True)
            batches = []
            for b in client.subscribe_batches("plain", 0, idle_timeout=15):
                batches.append(b)
                if b.end_seq >= n + 3:
                    break
            # a channel without `scores` sends no score bytes: same packets, 4 bytes per frame fewer
            assert client.publish("bare", stream, frames_per_message=32).accepted == n
            bare = _collect(client, "bare", n)
            plain_wire = sum(b.wire_bytes for b in batches)
            bare_wire = sum(b.wire_bytes for b in client.subscribe_batches("bare", 0, idle_timeout=2))
    assert [f.anomaly_score for f in bare] == [None] * n
    assert np.array_equal(np.stack([f.data for f in bare]), np.stack([f.data for f in frames[:n]]))
    assert bare_wire < plain_wire - 3 * n
    assert [f.seq for f in frames] == list(range(n + 3))
    assert {f.path for f in frames} == {"latent"}, "no lossless packets without fallback"
    scores = np.array([f.anomaly_score for f in frames[:n]], dtype=np.float64)
    np.testing.assert_allclose(scores, codec.scores(stream), rtol=1e-4)
    assert scores[anomalous].min() > max(2 * np.median(scores[~anomalous]), np.quantile(scores[~anomalous], 0.9))
    data = np.stack([f.data for f in frames[:n]])
    assert not np.array_equal(data[ANOMALIES["noise"]], stream[ANOMALIES["noise"]]), "noise is destroyed"
    assert [f.anomaly_score for f in frames[n:]] == [None] * 3
    # latent frames already are the model's reconstruction: denoise leaves them as decoded
    assert np.array_equal(np.stack([f.data for f in denoised]), np.stack([f.data for f in frames]))
    # the batch view carries the same per-frame paths and scores (NaN: not scored)
    b_scores = np.concatenate([b.anomaly_scores for b in batches])
    b_paths = np.concatenate([b.paths for b in batches])
    np.testing.assert_array_equal(b_scores[:n], scores.astype(np.float32))
    assert np.isnan(b_scores[n:]).all() and list(b_paths) == [f.path for f in frames]


def test_logs_written_before_scores_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE packets (first_seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, ts REAL NOT NULL,
                              model_id TEXT NOT NULL, quality INTEGER NOT NULL, payload BLOB NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO packets VALUES (0, 2, 1.0, 'm', 0, x'0102');
        INSERT INTO meta VALUES ('next_seq', '2');
    """)
    old.commit()
    old.close()
    log = SqliteStore(path)
    assert log.next_seq == 2 and log.read_from(0)[0].anomaly_scores is None
    stored = log.append([PendingPacket(3, "m", 0, b"abc", (0.5, 1.25, 3e4))])
    assert stored[0].anomaly_scores == (0.5, 1.25, 3e4)
    with pytest.raises(ValueError, match="one per frame"):
        log.append([PendingPacket(2, "m", 0, b"x", (1.0,))])
    log.close()
    again = SqliteStore(path)  # the column exists now: opens without migrating again
    assert [p.anomaly_scores for p in again.read_from(0)] == [None, (0.5, 1.25, 3e4)]
    again.close()


def test_cli_and_config_options(tiny_bundle: Path, tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    p = add_parser(sub)
    helptext = p.format_help()
    assert "--fallback CHANNEL" in helptext and "--anomaly-threshold CHANNEL=VALUE" in helptext
    args = parser.parse_args(["serve", "--channel", f"a={tiny_bundle}", "--channel", f"b={tiny_bundle}:1",
                              "--fallback", "a", "--anomaly-threshold", "b=1234.5"])
    a, b = config_from_args(args).channels
    got = (a.fallback, a.anomaly_threshold, b.fallback, b.anomaly_threshold, b.quality)
    assert got == (True, None, False, 1234.5, 1)
    for bad, match in ((["--fallback", "nope"], "not defined"), (["--anomaly-threshold", "a"], "CHANNEL=VALUE"),
                       (["--anomaly-threshold", "a=-1"], ">= 0")):
        with pytest.raises(ConfigError, match=match):
            config_from_args(parser.parse_args(["serve", "--channel", f"a={tiny_bundle}", *bad])).check()
    cfg = ServerConfig.from_dict({"channels": [{"name": "a", "bundle": "b", "fallback": True,
                                                "anomaly_threshold": 2.5}]})
    assert cfg.channels[0].fallback and cfg.channels[0].anomaly_threshold == 2.5
    with pytest.raises(ConfigError, match="fallbak"):
        ServerConfig.from_dict({"channels": [{"name": "a", "bundle": "b", "fallbak": True}]})

    # fallback needs a threshold: an uncalibrated bundle is refused unless one is given
    raw = tmp_path / "uncalibrated"
    shutil.copytree(tiny_bundle, raw)
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest.pop("anomaly")
    (raw / "manifest.json").write_text(json.dumps(manifest))
    spec = ChannelSpec("a", str(raw), fallback=True)
    with pytest.raises(ConfigError, match="anomaly-threshold a=VALUE"):
        LatentwireServer(ServerConfig(data_dir=str(tmp_path / "d"), channels=(spec,), threads=1))
    spec = ChannelSpec("a", str(raw), fallback=True, anomaly_threshold=9.0)
    server = LatentwireServer(ServerConfig(data_dir=str(tmp_path / "d"), threads=1, channels=(spec,)))
    assert server.channels["a"].anomaly_threshold == 9.0
