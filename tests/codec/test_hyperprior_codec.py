"""A hyperprior photo bundle end to end (issue 23): trained for real (tiny), exported with its exact
hyper-synthesis, calibrated, and coded through the Codec: every level round-trips, sizes and
quality are monotone, residual levels keep their bound, and a stream decodes identically in
another process with other thread counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _exact_reference import int64_forward, read_exact
from _no_model import NoModel
from _tiny_hyper import DECODE, PHOTOS, tiny_photos, train_tiny_hyper
from latentwire.codec.codec import Codec, grid_of
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.payload import encode_payload
from latentwire.codec.coding.residual_classic import MODE_CLASSIC, MODE_LATENT
from latentwire.codec.errors import BundleError


@pytest.fixture(scope="module")
def hyper_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return train_tiny_hyper(tmp_path_factory.mktemp("hyper-bundle"))


def test_every_level_round_trips_with_monotone_bytes_and_quality(hyper_bundle: Path) -> None:
    codec = Codec.load(hyper_bundle, provider="cpu", threads=1)
    assert codec.hyper is not None and codec.manifest.has_hyper
    for photo in tiny_photos():
        sizes, psnrs = [], []
        for q in range(3):
            packet = codec.encode(photo[None], quality=q)
            out = codec.decode(packet)
            assert out.shape == (1, *photo.shape) and out.dtype == np.uint8
            mse = float(np.mean((out[0].astype(np.float64) - photo) ** 2))
            sizes.append(len(packet))
            psnrs.append(10 * np.log10(255.0**2 / max(mse, 1e-9)))
        assert sizes == sorted(sizes), sizes
        assert psnrs[2] > psnrs[0], psnrs
        assert not bitstream.peek_header(codec.encode(photo[None], quality=2)).has_exact
        assert bitstream.peek_header(codec.encode(photo[None], quality=3)).has_exact
        near = codec.decode(codec.encode(photo[None], quality=3))
        assert int(np.max(np.abs(near.astype(np.int64) - photo))) <= 4
        assert np.array_equal(codec.decode(codec.encode(photo[None], quality=4))[0], photo)


def test_a_packet_of_several_photos_equals_them_one_by_one(hyper_bundle: Path) -> None:
    codec = Codec.load(hyper_bundle, provider="cpu", threads=1)
    batch = np.stack(tiny_photos())
    joint = codec.decode(codec.encode(batch, quality=1))
    alone = np.concatenate([codec.decode(codec.encode(p[None], quality=1)) for p in batch])
    assert np.array_equal(joint, alone)




def test_streams_decode_identically_in_another_process_and_thread_count(hyper_bundle: Path, tmp_path: Path) -> None:
    codec = Codec.load(hyper_bundle, provider="cpu", threads=1)
    photos = tiny_photos()
    packets = {f"p{i}_{q}": np.frombuffer(codec.encode(p[None], quality=q), dtype=np.uint8)
               for i, p in enumerate(photos) for q in (0, 2, 4)}
    np.savez(tmp_path / "packets.npz", **packets)
    mine = [codec.decode(packets[k].tobytes()) for k in sorted(packets)]
    for threads in (1, 2):
        out = tmp_path / f"out{threads}.npz"
        subprocess.run([sys.executable, "-c", DECODE, str(hyper_bundle), str(threads), str(tmp_path / "packets.npz"),
                        str(out)], check=True, env={"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"})
        theirs = np.load(out)
        for k, a in enumerate(mine):
            assert np.array_equal(theirs[f"arr_{k}"], a)


def test_the_manifest_and_model_id_cover_the_exact_hyper_synthesis(hyper_bundle: Path, tmp_path: Path) -> None:
    import shutil

    manifest = json.loads((hyper_bundle / "manifest.json").read_text())
    assert manifest["family"] == "hyper2d" and "hyper.npz" in manifest["files"]
    assert manifest["latent"]["hyper"]["channels"] == 8
    tampered = tmp_path / "tampered"
    shutil.copytree(hyper_bundle, tampered)
    data = bytearray((tampered / "hyper.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "hyper.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hyper.npz"):
        Codec.load(tampered)


def test_a_run_continues_from_the_shipped_hyperprior_bundle(hyper_bundle: Path) -> None:
    """A later session warm-starts from the committed bundle: analysis, synthesis, gains and h_a come back
    from the graphs; h_s (stored only as integers) and z's density are fitted again before training."""
    import torch

    from latentwire.codec.training import warmstart
    from latentwire.codec.training.models import build_model
    from latentwire.codec.training.train import load_checkpoint, model_from_checkpoint

    trained = model_from_checkpoint(load_checkpoint(hyper_bundle.parent / "run"))
    recovered = build_model(warmstart.bundle_config(hyper_bundle))
    warmstart.load_bundle_weights(recovered, hyper_bundle)
    own = recovered.state_dict()
    for k, v in trained.state_dict().items():
        if k.startswith(("hyper_analysis.", "decoder.0.weight", "log_gain")):
            assert torch.allclose(own[k], v, atol=1e-6), k


def _python_exact_input(symbols: np.ndarray, mean_code: np.ndarray, gain: np.ndarray, frac: int) -> np.ndarray:
    """hyperprior.exact_input in exact rationals: symbols * 2**F + the float64 product mean * gain
    (Fraction -> float rounds correctly, as IEEE 754 multiplication must), scaled and rounded half to even."""
    from fractions import Fraction

    out = np.empty(symbols.shape, dtype=np.int64)
    for idx in np.ndindex(*symbols.shape):
        product = float(Fraction(int(mean_code[idx]), 1 << frac) * Fraction(float(gain[idx[1]])))
        out[idx] = int(symbols[idx]) * (1 << frac) + round(Fraction(product) * (1 << frac))
    return out


def test_the_exact_decoder_takes_y_hat_times_gain_on_the_means_grid(hyper_bundle: Path) -> None:
    """Residual levels predict from the exact network fed y_hat * gain on the mean's grid: those
    integers and the network's output match independent evaluations, whatever the batch."""
    codec = Codec.load(hyper_bundle, provider="cpu", threads=1)
    assert codec.hyper is not None and codec.exact is not None
    block = json.loads((hyper_bundle / "manifest.json").read_text())["exact"]
    frac = codec.hyper.input_frac_bits
    assert block["input_frac_bits"] == frac == 8 and block["max_partial_sum_log2"] < 53
    assert block["agreement"]["max_abs_difference"] <= 2
    photos = np.stack(tiny_photos())[:, :, :40, :48]
    grid = codec.reference_grid
    latents = codec.quantize_latents(codec._encode_model(codec.manifest.normalization.to_model(photos)), grid)
    x = codec.hyper.exact_input(latents, grid.level)
    gain = codec.manifest.latent_levels[grid.level].gain
    assert np.array_equal(x, _python_exact_input(latents.symbols, latents.mean_code, gain, frac))
    assert np.any(x % (1 << frac))  # the mean really enters at its own resolution
    got = codec.exact.predict_maps(x, (40, 48))
    reference = int64_forward(*read_exact((hyper_bundle / "exact.npz").read_bytes()), x)[:, :, :40, :48]
    assert np.array_equal(got, reference)
    assert np.array_equal(got[1:], codec.exact.predict_maps(x[1:], (40, 48)))
    assert np.array_equal(codec._residual_prediction(latents, grid, (3, 40, 48)), got.astype(np.float32))


def test_the_unrounded_ceiling_is_what_each_level_rounds(hyper_bundle: Path) -> None:
    """benchmarks.photo_ceiling feeds the decoder y * gain * inverse gain: each level's y_hat is that
    value rounded on the level's grid, so the two differ by at most half an inverse gain."""
    codec = Codec.load(hyper_bundle, provider="cpu", threads=1)
    assert codec.hyper is not None
    photos = np.stack(tiny_photos())[:, :, :48, :48]
    side = codec._encode_model(codec.manifest.normalization.to_model(photos))
    for k, level in enumerate(codec.manifest.latent_levels):
        latents = codec.quantize_latents(side, grid_of(codec.manifest.quality_levels[k]))
        assert latents.symbols.shape == side.y.shape
        unrounded = codec.hyper.unrounded_values(side.y, k)
        half = 0.5 * np.abs(np.asarray(level.inverse_gain)).reshape(1, -1, 1, 1) + 1e-4
        assert np.all(np.abs(codec.hyper.values(latents, k) - unrounded) <= half)
        assert not np.array_equal(codec.hyper.values(latents, k), unrounded)


def test_an_exact_network_built_for_another_input_grid_is_refused(hyper_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from latentwire.codec.bundle import finalize

    bad = tmp_path / "bad"
    shutil.copytree(hyper_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["exact"]["input_frac_bits"]  # as a symbols-fed (gdn2d-style) network would be described
    (bad / "manifest.json").write_text(json.dumps(manifest))
    finalize(bad)
    codec = Codec.load(bad, provider="cpu", threads=1)
    photo = tiny_photos()[0][None]
    assert codec.decode(codec.encode(photo, quality=1)).shape == photo.shape  # latent levels need no exact network
    with pytest.raises(BundleError, match="input"):
        codec.encode(photo, quality=4)


def test_residual_frames_may_go_classical_without_z_or_y(hyper_bundle: Path) -> None:
    """A hyperprior bundle's max-error packets choose per frame like any photo bundle's: classical
    frames carry neither z nor y and decode without the model; mixed packets decode each frame as
    it would alone; auto is never larger than either mode alone."""
    codec = Codec.load(hyper_bundle, provider="cpu", threads=1)
    blind = Codec.load(hyper_bundle, provider="cpu", threads=1)
    blind.decoder = NoModel("a classical frame")  # type: ignore[assignment]
    blind.exact = NoModel("a classical frame")  # type: ignore[assignment]
    photos = np.stack(tiny_photos())
    flat = np.full_like(photos[:1], 128)  # a flat frame: classical costs almost nothing, the latent does not
    for q in (3, 4):
        bound = codec.qualities[q].max_error
        assert bound is not None
        classic = codec.encode(photos, quality=q, residual_mode="classic")
        h = codec.header(classic)
        assert h.has_modes and h.has_residual and h.has_exact
        out = blind.decode(classic)
        assert int(np.abs(out.astype(np.int64) - photos).max()) <= bound
        latent = codec.encode(photos, quality=q, residual_mode="latent")
        assert not codec.header(latent).has_modes
        auto = codec.encode(photos, quality=q)
        assert len(auto) <= min(len(classic), len(latent))
        # a packet of both modes, the second frame with its z and y: it decodes as that frame alone
        mixed = np.concatenate([flat, photos[:1]])
        grid = codec.reference_grid
        latents = codec.quantize_latents(codec._encode_model(codec.manifest.normalization.to_model(mixed)), grid)
        pred = codec._residual_prediction(latents, grid, mixed.shape[1:])
        payload, _ = encode_payload(codec.tables, latents, 0, x_raw=mixed, raw_float=pred, max_error=bound,
                                    latent_level=grid.level, hyper=codec.hyper,
                                    modes=np.array([MODE_CLASSIC, MODE_LATENT]))
        both = bitstream.write_packet(model_id=codec.model_id, quality=q, sample_shape=mixed.shape[1:],
                                      count=2, payload=payload, residual=True, exact=True, modes=True)
        back = codec.decode(both)
        assert int(np.abs(back.astype(np.int64) - mixed).max()) <= bound
        alone = codec.encode(photos[:1], quality=q, residual_mode="latent")
        assert np.array_equal(back[1:], codec.decode(alone))
        assert len(both) > len(alone)  # the classical frame's bytes, and no latent of its own
        if bound == 0:
            assert np.array_equal(out, photos) and np.array_equal(back, mixed)


def test_the_encoder_stored_in_float16_halves_it_and_changes_no_receiver(hyper_bundle: Path, tmp_path: Path) -> None:
    """half_encoder.py: the sender's weights in float16 (+ casts) take half the bytes; the model id,
    the decoder side and every receiver's decoding stay as they were; y moves by ~1e-3 of its size;
    a later session still warm-starts from the bundle."""
    import shutil

    import torch

    from latentwire.codec.training import warmstart
    from latentwire.codec.training.half_encoder import halve_bundle_encoder
    from latentwire.codec.training.models import build_model
    from latentwire.codec.training.train import load_checkpoint, model_from_checkpoint

    half = tmp_path / "half"
    shutil.copytree(hyper_bundle, half)
    codec = Codec.load(hyper_bundle, provider="cpu", threads=1)
    photos = np.stack(tiny_photos())
    report = halve_bundle_encoder(half, codec.normalization.to_model(photos), "test", min_elements=64)
    assert report.tensors > 0 and report.bytes_after < report.bytes_before  # (graph structure dominates this tiny one)
    assert 0 < report.max_relative_change < 1e-2
    halved = Codec.load(half, provider="cpu", threads=1)
    assert halved.model_id == codec.model_id  # the id covers what receivers compute with, not encoder.onnx
    assert json.loads((half / "manifest.json").read_text())["training"]["encoder_float16"]["tensors"] == report.tensors
    for q in (1, 4):  # packets of the halved sender decode with the original bundle, losslessly at q4
        packet = halved.encode(photos, quality=q)
        assert np.array_equal(codec.decode(packet), halved.decode(packet))
    assert np.array_equal(codec.decode(halved.encode(photos, quality=4)), photos)
    model = build_model(warmstart.bundle_config(half))
    warmstart.load_bundle_weights(model, half)  # reads the float16 weights back (its parity check included)
    own = model.state_dict()
    trained = model_from_checkpoint(load_checkpoint(hyper_bundle.parent / "run")).state_dict()
    halved_keys = [k for k, v in trained.items() if k.startswith("hyper_analysis.") and v.numel() >= 64]
    assert halved_keys
    for k in halved_keys:  # exactly the float16 rounding of the trained weights
        assert own[k].dtype == torch.float32 and torch.equal(own[k], trained[k].half().float()), k


def test_calibration_refits_the_latent_tables_to_the_samples_symbols(hyper_bundle: Path) -> None:
    """calibrate_hyper.fit_tables: every table keeps the model's span and thresholds, its frequencies
    follow an independent count of the calibration crops' symbols at every level, and those crops
    cost fewer bits than under the model's own Gaussian tables."""
    from latentwire.codec.bundle import Bundle
    from latentwire.codec.calibrate_hyper import hyper_stage
    from latentwire.codec.sources import load_source

    codec = Codec.load(hyper_bundle, threads=1)
    assert codec.hyper is not None and codec.tables.hyper is not None
    fitted = codec.tables.hyper
    model = hyper_stage(Bundle.load(hyper_bundle), fitted.gaussian.precision).coding
    assert np.array_equal(fitted.thresholds, model.thresholds)
    for a, b in [*zip(fitted.gaussian.tables, model.gaussian.tables, strict=True),
                 *zip(fitted.z_tables.tables, model.z_tables.tables, strict=True)]:
        assert (a.lo, a.hi) == (b.lo, b.hi)
    assert codec.tables.latent.to_json_obj() == fitted.z_tables.to_json_obj()  # z's tables, stored once each way

    crops = load_source(PHOTOS, size=(64, 64), per_image=8).samples  # what the fixture calibrated on
    inputs = codec._encode_model(codec.normalization.to_model(crops))
    counts: dict[tuple[int, int], int] = {}
    for level in range(codec.hyper.coding.levels):
        lat = codec.hyper.quantize(inputs, level)
        ids = fitted.table_ids(lat.scale_code, level)
        for k, s in zip(ids.ravel().tolist(), lat.symbols.ravel().tolist(), strict=True):
            counts[(k, s)] = counts.get((k, s), 0) + 1
        got, before = (c.ideal_bits(lat.z, lat.symbols, lat.scale_code, level) for c in (fitted, model))
        assert got.y_bits < before.y_bits and got.z_bits < before.z_bits
    per_table: dict[int, int] = {}
    for (k, _), n in counts.items():
        per_table[k] = per_table.get(k, 0) + n
    busiest = max(per_table, key=per_table.__getitem__)
    table = fitted.gaussian.tables[busiest]
    total = 1 << table.precision
    for s in range(table.lo, table.hi + 1):  # the data's share, to within the model's 64 observations
        share = counts.get((busiest, s), 0) / per_table[busiest]
        assert abs(int(table.freqs[s - table.lo]) / total - share) < 64 / per_table[busiest] + 2 / total


def test_refit_tables_count_symbols_outside_a_span_for_the_escape() -> None:
    from latentwire.codec.calibrate_hyper import PRIOR_OBSERVATIONS, _Counts
    from latentwire.codec.coding.tables import TableSet, table_from_counts

    prior = TableSet((table_from_counts([1, 2, 1], -1, 16, escape_count=1),))
    counts = _Counts(prior)
    counts.add(np.array([-9, 0, 0, 0, 5, 1] * 1000), np.zeros(6000, dtype=np.int64))
    table = counts.tables().tables[0]
    freqs = table.freqs.astype(np.float64) / (1 << 16)
    assert (table.lo, table.hi) == (-1, 1)
    prior_share = prior.tables[0].freqs.astype(np.float64) / (1 << 16)
    seen = np.array([0, 3000, 1000, 2000])  # -1, 0, 1, then the escapes: -9 and 5
    expected = (seen + PRIOR_OBSERVATIONS * prior_share) / (6000 + PRIOR_OBSERVATIONS)
    assert np.abs(freqs - expected).max() < 1e-4


# ---------------------------------------------------------------------- checkerboard context (issue 23)
