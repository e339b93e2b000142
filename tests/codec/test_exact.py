"""The exact prediction (codec/coding/exact.py): the same integers on every machine.

The runtime evaluates its dense layers as float64 BLAS matmuls and trusts a proof that no partial
sum reaches 2**53. These tests hold it to an independent implementation of the same arithmetic in
plain Python integers (and numpy's int64 matmul, which has no BLAS path), read straight from the
stored .npz, on real MNIST digits through the shipped bundle; across processes, batch sizes and
BLAS thread counts; and they check that the proof refuses a network that could round, and that a
packet coded against the exact prediction never decodes against anything else.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.bundle import EXACT, Bundle
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.compact import StreamContext, compact, expand
from latentwire.codec.coding.exact import Dense, IntegerNetwork, Lookup, Requant
from latentwire.codec.errors import BitstreamError, BundleError, InputError

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
MNIST = ASSETS / "mnist-dense"
ECG = ASSETS / "ecg-conv1d"


def _digits(n: int = 1000) -> np.ndarray:
    with np.load(ASSETS / "mnist_test_sample.npz") as z:
        return z["samples"][:n]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(MNIST, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def latents(codec: Codec) -> np.ndarray:
    """Real latent symbols: the shipped encoder on 1000 MNIST test digits, rounded."""
    y = codec.encoder.encode(codec.normalization.to_model(_digits()))
    return np.rint(y).astype(np.int64)


# ------------------------------------------------------------------ an independent reference


def _read_npz(path: Path) -> tuple[dict, dict[str, list]]:
    """The stored network, read without the runtime's loader: the spec and every array as Python ints."""
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
        spec = json.loads(bytes(z["spec"]).decode())
        arrays = {k: z[k].tolist() for k in z.files if k != "spec"}
    return spec, arrays


def _reference_one(spec: dict, arrays: dict[str, list], x: list[int]) -> list[int]:
    """One latent vector through the network in plain Python integers (unbounded, order-free)."""
    h = [min(max(int(v), spec["input"]["lo"]), spec["input"]["hi"]) for v in x]
    for layer in spec["layers"]:
        if layer["op"] == "dense":
            w, b = arrays[layer["weight"]], arrays[layer["bias"]]
            h = [sum(wi * xi for wi, xi in zip(row, h, strict=True)) + bj for row, bj in zip(w, b, strict=True)]
        elif layer["op"] == "requant":
            s, lo, hi = layer["shift"], layer["lo"], layer["hi"]
            half = (1 << (s - 1)) if s else 0
            h = [min(max((a * m + half) >> s, lo), hi) for a, m in zip(h, arrays[layer["multiplier"]], strict=True)]
        else:
            t, lo = arrays[layer["table"]], layer["lo"]
            h = [t[u - lo] for u in h]
    return h


def _reference_int64(spec: dict, arrays: dict[str, list], x: np.ndarray) -> np.ndarray:
    """The same arithmetic in numpy int64 (matmul and einsum integer loops, never BLAS or floats),
    convolutions as explicit tap stacks; channels-first networks return their full length."""
    conv = spec["input"].get("layout", "flat") == "channels_first"
    h = np.clip(x.astype(np.int64), spec["input"]["lo"], spec["input"]["hi"])
    h = h.transpose(0, 2, 1) if conv else h
    saved: dict[int, np.ndarray] = {}
    for layer in spec["layers"]:
        op = layer["op"]
        if op in ("dense", "conv1d"):
            w, b = np.asarray(arrays[layer["weight"]], np.int64), np.asarray(arrays[layer["bias"]], np.int64)
            if op == "dense":
                h = h @ w.T + b
            else:
                hp = np.pad(h, ((0, 0), (layer["pad_left"], layer["pad_right"]), (0, 0)))
                k = w.shape[2]
                n = hp.shape[1] - k + 1
                taps = np.stack([hp[:, j : j + n] for j in range(k)], axis=-1)  # (N, n, C, K)
                h = np.einsum("nlck,ock->nlo", taps, w) + b
        elif op == "dilate":
            up = np.zeros((h.shape[0], (h.shape[1] - 1) * layer["stride"] + 1, h.shape[2]), np.int64)
            up[:, :: layer["stride"]] = h
            h = up
        elif op == "save":
            saved[layer["slot"]] = h
        elif op == "add":
            h = h + saved[layer["slot"]]
        elif op == "requant":
            s = layer["shift"]
            h = np.floor_divide(h * np.asarray(arrays[layer["multiplier"]], np.int64) + (1 << s) // 2, 1 << s)
            h = np.clip(h, layer["lo"], layer["hi"])
        else:
            h = np.asarray(arrays[layer["table"]], np.int64)[h - layer["lo"]]
    return h.transpose(0, 2, 1) if conv else h


def test_the_runtime_agrees_with_plain_python_integers_on_real_digits(codec: Codec, latents: np.ndarray) -> None:
    spec, arrays = _read_npz(MNIST / EXACT)
    net = codec.exact
    assert net is not None
    got = net.predict(latents).reshape(len(latents), -1)
    for i in (0, 1, 517, 999):  # pure Python is slow: a few digits, bit for bit
        assert _reference_one(spec, arrays, latents[i].tolist()) == got[i].tolist()
    np.testing.assert_array_equal(_reference_int64(spec, arrays, latents), got)
    assert got.min() >= 0 and got.max() <= 255 and got.dtype == np.int32
    # and it is a prediction worth having: close to the float graph it was quantized from
    flt = np.rint(codec.normalization.to_raw_float(codec.decoder.decode(latents.astype(np.float32))))
    assert np.abs(got - flt.reshape(got.shape)).max() <= 1
    assert np.mean(got != flt.reshape(got.shape)) < 0.05


_CHILD = r"""
import sys, zlib, numpy as np
from latentwire.codec.coding.exact import IntegerNetwork
net = IntegerNetwork.load(sys.argv[1])
x = np.load(sys.argv[2])
for batch in (1, 7, 256):
    out = np.concatenate([net.predict(x[i : i + batch]) for i in range(0, len(x), batch)])
    print(batch, zlib.crc32(np.ascontiguousarray(out, dtype="<i4").tobytes()))
"""


def test_the_same_integers_in_other_processes_batch_sizes_and_thread_counts(
    codec: Codec, latents: np.ndarray, tmp_path: Path
) -> None:
    assert codec.exact is not None
    expected = zlib.crc32(np.ascontiguousarray(codec.exact.predict(latents), dtype="<i4").tobytes())
    np.save(tmp_path / "latents.npy", latents)
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        run = subprocess.run([sys.executable, "-c", _CHILD, str(MNIST / EXACT), str(tmp_path / "latents.npy")],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        lines = [line.split() for line in run.stdout.strip().splitlines()]
        assert lines == [[b, str(expected)] for b in ("1", "7", "256")], f"threads={threads}"


# ------------------------------------------------------------------ the proof refuses what could round


def _tiny(weight: int, in_limit: int, multiplier: int = 1, shift: int = 0) -> IntegerNetwork:
    w = np.full((2, 4), weight, dtype=np.int64)
    return IntegerNetwork(-in_limit, in_limit, (Dense(w, np.zeros(2, np.int64)),
                                                Requant(np.full(2, multiplier, np.int64), shift, 0, 255)),
                          (2,), 0, 255)


def test_a_network_whose_partial_sums_could_reach_2_53_is_refused() -> None:
    ok = _tiny(1 << 20, 1 << 30)  # 4 * 2**50 = 2**52: exact
    assert ok.max_partial_sum == 1 << 52  # type: ignore[attr-defined]
    assert ok.predict(np.full((1, 4), 1 << 30)).tolist() == [[255, 255]]
    with pytest.raises(BundleError, match="2\\*\\*53"):
        _tiny(1 << 21, 1 << 30)  # 4 * 2**51 = 2**53: float64 could round it
    with pytest.raises(BundleError, match="int64"):
        _tiny(1 << 20, 1 << 30, multiplier=1 << 12)  # requant product 2**64
    with pytest.raises(BundleError, match="domain"):
        IntegerNetwork(-8, 8, (Dense(np.ones((2, 4), np.int64), np.zeros(2, np.int64)),
                               Requant(np.ones(2, np.int64), 0, -4, 4), Lookup(np.arange(5, dtype=np.int64), -3),
                               Dense(np.ones((2, 2), np.int64), np.zeros(2, np.int64)),
                               Requant(np.ones(2, np.int64), 0, 0, 255)), (2,), 0, 255)
    with pytest.raises(InputError, match="integer latents"):
        ok.predict(np.full((1, 4), 0.5))


def test_rounding_shift_rounds_half_up_on_negatives_too() -> None:
    net = IntegerNetwork(-100, 100, (Dense(np.eye(4, dtype=np.int64), np.zeros(4, np.int64)),
                                     Requant(np.ones(4, np.int64), 1, -255, 255)), (4,), -255, 255)
    # x / 2 rounded half up: -3 -> -1.5 -> -1, -1 -> -0.5 -> 0, 1 -> 0.5 -> 1, 3 -> 1.5 -> 2
    assert net.predict(np.array([[-3, -1, 1, 3]])).tolist() == [[-1, 0, 1, 2]]


def test_the_stored_network_is_byte_stable(codec: Codec) -> None:
    assert codec.exact is not None
    data = (MNIST / EXACT).read_bytes()
    assert IntegerNetwork.from_bytes(data).to_bytes() == data  # same network, same bytes, same model id
    with pytest.raises(BundleError, match="not a readable"):
        IntegerNetwork.from_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------ packets against the exact prediction


@pytest.mark.parametrize("max_error", [0, 1, 2, 4])
def test_residual_levels_round_trip_against_the_exact_prediction(codec: Codec, max_error: int) -> None:
    raw = _digits(300)
    packet = codec.encode(raw, max_error=max_error)
    header = codec.header(packet)
    assert header.has_exact and header.has_residual and header.recon_crc is not None
    decoded = codec.decode(packet)
    err = np.abs(decoded.astype(np.int64) - raw)
    assert err.max() == max_error  # the bound, reached (these digits have residuals to spare)
    if max_error == 0:
        assert np.array_equal(decoded, raw) and decoded.dtype == np.uint8
    # a latent-only level keeps the float graph and no exact flag
    latent_only = [q.index for q in codec.qualities if q.max_error is None and q.transform_step is None]
    assert latent_only and not any(codec.header(codec.encode(raw, quality=q)).has_exact for q in latent_only)


def test_every_ladder_level_with_a_residual_is_exact_and_batches_decode_alike(codec: Codec) -> None:
    raw = _digits(64)
    residual = [q for q in codec.qualities if q.max_error is not None]
    assert residual and codec.exact is not None
    packets = [codec.encode(raw[i : i + 7], quality=q.index) for q in residual for i in range(0, 64, 7)]
    assert all(codec.header(p).has_exact for p in packets)
    together = codec.decode_many(packets)
    alone = [codec.decode(p) for p in packets]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a, b)


def test_a_receiver_in_another_process_with_two_blas_threads_decodes_bit_exact(codec: Codec, tmp_path: Path) -> None:
    raw = _digits(256)
    (tmp_path / "p.lw").write_bytes(codec.encode(raw, max_error=0))
    child = ("import sys, numpy as np\nfrom latentwire.codec.codec import Codec\n"
             f"c = Codec.load({str(MNIST)!r}, provider='cpu', threads=2)\n"
             "np.save(sys.argv[2], c.decode(open(sys.argv[1], 'rb').read()))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", child, str(tmp_path / "p.lw"), str(tmp_path / "out.npy")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), raw)  # and the recon CRC in the packet agreed


def test_a_reader_without_the_exact_prediction_refuses_the_packet(codec: Codec, tmp_path: Path) -> None:
    raw = _digits(8)
    packet = codec.encode(raw, max_error=2)
    # a reader that predates the flag: FLAG_EXACT lies outside the flags version 1 started with,
    # which such a reader refuses as unknown (UnsupportedVersion), never decoding it
    assert bitstream.FLAG_EXACT & 0x0F == 0 and packet[3] & bitstream.FLAG_EXACT
    # a bundle without the exact network (the float one): another model id, and, given its id,
    # the flag itself disagrees with the bundle
    plain = tmp_path / "float"
    shutil.copytree(MNIST, plain)
    from latentwire.codec.bundle import finalize, read_manifest, write_manifest

    manifest = read_manifest(plain)
    del manifest["exact"]
    write_manifest(plain, manifest)
    finalize(plain)
    other = Codec.load(plain, provider="cpu", threads=1)
    assert other.exact is None and other.model_id != codec.model_id
    with pytest.raises(BitstreamError):
        other.decode(packet)
    h = codec.header(packet)
    _, payload = bitstream.read_packet(packet)
    forged = bitstream.write_packet(model_id=other.model_id, quality=h.quality, sample_shape=h.sample_shape,
                                    count=h.count, payload=bytes(payload), max_error=h.max_error, residual=True,
                                    recon_crc=h.recon_crc, exact=True)
    with pytest.raises(BitstreamError, match="exact-prediction flag"):
        other.decode(forged)
    # and the exact bundle refuses a residual packet taken against the float decoder
    unflagged = bitstream.write_packet(model_id=codec.model_id, quality=h.quality, sample_shape=h.sample_shape,
                                       count=h.count, payload=bytes(payload), max_error=h.max_error, residual=True,
                                       recon_crc=h.recon_crc)
    with pytest.raises(BitstreamError, match="exact-prediction flag"):
        codec.decode(unflagged)


def test_exact_packets_compact_and_expand_to_the_very_packet_sent(codec: Codec) -> None:
    raw = _digits(3)
    ctx = StreamContext.of(codec.header(codec.encode(raw[:1], quality=3)))
    for q in (3, 2, 10):
        packet = codec.encode(raw[1:2], quality=q)
        frame = compact(packet, ctx)
        assert frame is not None and len(frame) < len(packet)
        assert expand(frame, ctx) == packet
    # the marker carries FLAG_EXACT as the residual + transform pair, which no packet holds; a
    # reader that took the pair at face value rebuilds another header and fails the check
    frame = compact(codec.encode(raw[1:2], quality=3), ctx)
    assert frame is not None and frame[0] & 0x09 == 0x09


def test_quantize_exact_then_calibrate_a_fresh_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """The whole flow on a freshly trained bundle: quantize, recalibrate against the exact
    prediction, and round-trip lossless and near-lossless."""
    pytest.importorskip("onnx")
    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.sources import load_mnist, sample_data_root
    from latentwire.codec.training.quantize_exact import quantize_exact

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    train = load_mnist(sample_data_root() / "mnist", split="train")
    net, agreement = quantize_exact(bundle, train, holdout=200, threads=1, command="test")
    assert agreement.max_abs_difference <= 2 and agreement.values_differing < 0.1
    assert abs(agreement.psnr_exact_db - agreement.psnr_float_db) < 0.05
    assert Bundle.load(bundle).manifest.has_exact
    calibrate(bundle, train, [None, 4, 0], threads=1)
    c = Codec.load(bundle, provider="cpu", threads=1)
    assert c.tables.residual is not None and c.tables.residual.spec.n_shifts == 1  # no float drift to guard
    raw = _digits(50)
    for e in (0, 4):
        p = c.encode(raw, max_error=e)
        assert c.header(p).has_exact
        assert np.abs(c.decode(p).astype(np.int64) - raw).max() <= e

    # max-error levels on a coarser latent step (ladder.residual_grid): the manifest names it and custom
    # max errors use it too; a ladder that mixes grids for its residual levels keeps the trained one
    calibrate(bundle, train, [None, "s2+4", 0], threads=1)
    mixed = Codec.load(bundle, provider="cpu", threads=1)
    assert "residual_step" not in Bundle.load(bundle).manifest.raw["latent"] and mixed.residual_grid.step == 1.0
    assert np.abs(mixed.decode(mixed.encode(raw, quality=1)).astype(np.int64) - raw).max() <= 4  # s2+4 still works
    calibrate(bundle, train, ["s2", "s2+4", "s2+0"], threads=1)
    c2 = Codec.load(bundle, provider="cpu", threads=1)
    assert Bundle.load(bundle).manifest.raw["latent"]["residual_step"] == 2.0 and c2.model_id != c.model_id
    assert c2.residual_grid.step == 2.0 and c2.reference_grid.step == 1.0
    latent_only = len(c2.encode(raw, quality=0))  # step 2, no residual
    for q, e in ((1, 4), (2, 0)):
        ladder, custom = c2.encode(raw, quality=q), c2.encode(raw, max_error=e)
        assert np.array_equal(c2.decode(ladder), c2.decode(custom))  # the same grid, the same residual
        assert np.abs(c2.decode(custom).astype(np.int64) - raw).max() <= e and len(custom) > latent_only
    calibrate(bundle, train, [None, 4, 0], threads=1)  # back at step 1: the key is gone, the id is the first one
    assert "residual_step" not in Bundle.load(bundle).manifest.raw["latent"]
    assert Codec.load(bundle, provider="cpu", threads=1).model_id == c.model_id


# ------------------------------------------------------------------ the 1-D conv network (ECG)


@pytest.fixture(scope="module")
def ecg() -> Codec:
    return Codec.load(ECG, provider="cpu", threads=1)


def _ecg_windows() -> np.ndarray:
    with np.load(ASSETS / "ecg_heldout_sample.npz") as z:
        return z["samples"]


def test_the_conv_network_agrees_with_int64_einsum_on_held_out_ecg(ecg: Codec, tmp_path: Path) -> None:
    raw = _ecg_windows()
    net = ecg.exact
    assert net is not None and net.layout == "channels_first"
    assert {type(layer).__name__ for layer in net.layers} >= {"Conv1d", "Dilate", "Save", "Add", "Lookup"}
    latents = np.rint(ecg.encoder.encode(ecg.normalization.to_model(raw))).astype(np.int64)
    spec, arrays = _read_npz(ECG / EXACT)
    full = net.predict(latents)
    np.testing.assert_array_equal(_reference_int64(spec, arrays, latents), full)
    many = np.tile(latents, (10, 1, 1))  # 70 frames: predicted in chunks, the same integers
    assert np.array_equal(net.predict(many), np.tile(full, (10, 1, 1)))
    cropped = net.predict(latents, raw.shape[-1])
    assert np.array_equal(cropped, full[:, :, : raw.shape[-1]]) and cropped.shape == raw.shape
    flt = np.rint(ecg.normalization.to_raw_float(ecg.decoder.decode(latents.astype(np.float32), (raw.shape[-1],))))
    assert np.abs(cropped - flt).max() <= 1  # the float graph it came from, to one ADC unit
    # another process, batch sizes 1 and 7, two BLAS threads: the same integers
    np.save(tmp_path / "latents.npy", latents)
    expected = zlib.crc32(np.ascontiguousarray(full, dtype="<i4").tobytes())
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", _CHILD, str(ECG / EXACT), str(tmp_path / "latents.npy")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert [line.split() for line in run.stdout.strip().splitlines()] == [[b, str(expected)] for b in ("1", "7", "256")]


@pytest.mark.parametrize("max_error", [0, 1, 4])
def test_ecg_residual_levels_round_trip_against_the_exact_prediction(ecg: Codec, max_error: int) -> None:
    raw = _ecg_windows()
    packet = ecg.encode(raw, max_error=max_error)
    assert ecg.header(packet).has_exact
    decoded = ecg.decode(packet)
    assert np.abs(decoded.astype(np.int64) - raw).max() == max_error
    if max_error == 0:
        assert np.array_equal(decoded, raw)
    # odd lengths crop the same prediction (the network predicts whole strides)
    odd = raw[:2, :, :1000]
    assert np.array_equal(ecg.decode(ecg.encode(odd, max_error=0)), odd)
    # the transform residual levels still code against the float graph, without the flag
    level = next(q.index for q in ecg.qualities if q.transform_step is not None)
    assert not ecg.header(ecg.encode(raw, quality=level)).has_exact
