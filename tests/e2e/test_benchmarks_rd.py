"""The rate-distortion benchmark: Bjøntegaard math on curves with known answers, the PCA baseline's
packets, and the rd script end to end on the shipped sample with a really trained tiny bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import bdrate, rd
from benchmarks.dct import DctCodec, dct_matrix
from benchmarks.pca import PcaBasis, PcaCodec
from latentwire.codec.coding import bitstream
from latentwire.codec.errors import InputError
from latentwire.codec.sources import load_ecg_windows, load_mnist, sample_data_root

PSNR = np.array([20.0, 23.0, 26.5, 30.0, 33.0, 37.0])
RATE = 5.0 * 10 ** (PSNR / 12.0) * (1 + 0.05 * np.sin(PSNR))  # any monotone curve


# ------------------------------------------------------------------------------ BD-rate


def test_half_the_bytes_at_every_psnr_is_minus_50_percent() -> None:
    res = bdrate.bd_rate(RATE, PSNR, RATE / 2, PSNR)
    assert res.value == pytest.approx(-50.0, abs=1e-9)
    assert (res.lo, res.hi, res.clipped) == (20.0, 37.0, False)
    assert bdrate.bd_rate(RATE / 2, PSNR, RATE, PSNR).value == pytest.approx(100.0, abs=1e-9)


def test_bd_rate_matches_closed_form_when_log_rate_gap_is_linear_in_psnr() -> None:
    """Both log-rates linear in PSNR (PCHIP reproduces lines exactly), their gap -0.01 (p - 20):
    the mean gap over [22, 35] is -0.01 * 8.5."""
    ref = 10 ** (PSNR / 12.0)
    test = ref * 10 ** (-0.01 * (PSNR - 20.0))
    res = bdrate.bd_rate(ref, PSNR, test, PSNR, 22.0, 35.0)
    assert res.value == pytest.approx((10 ** (-0.085) - 1) * 100, abs=1e-9)
    assert (res.lo, res.hi) == (22.0, 35.0)


def test_bd_rate_uses_the_interval_and_clips_to_the_overlap() -> None:
    # test saves 50 % below 28 dB and nothing above: the interval decides the answer
    p = np.array([20.0, 21.0, 22.0, 23.0, 24.0, 32.0, 33.0, 34.0])
    r = 10 ** (p / 10)
    t = np.where(p < 28, r / 2, r)
    # (pieces whose knot slopes only see one regime are exact)
    assert bdrate.bd_rate(r, p, t, p, 20.0, 23.0).value == pytest.approx(-50.0, abs=1e-9)
    assert bdrate.bd_rate(r, p, t, p, 33.0, 34.0).value == pytest.approx(0.0, abs=1e-9)
    assert -50.0 < bdrate.bd_rate(r, p, t, p).value < 0.0
    wide = bdrate.bd_rate(RATE, PSNR, RATE / 3, PSNR, 10.0, 50.0)
    assert wide.clipped and (wide.lo, wide.hi) == (20.0, 37.0)
    with pytest.raises(InputError, match="do not overlap"):
        bdrate.bd_rate(RATE, PSNR, RATE, PSNR + 30.0)


def test_bd_psnr_of_a_constant_gain_is_that_gain() -> None:
    assert bdrate.bd_psnr(RATE, PSNR, RATE, PSNR + 1.5).value == pytest.approx(1.5, abs=1e-9)


def test_pareto_front_drops_dominated_and_lossless_points() -> None:
    r, p = bdrate.pareto_front([10, 20, 15, 30, 40, 40, 50], [20, 25, 19, 24, 30, 31, math.inf])
    assert r.tolist() == [10, 20, 40] and p.tolist() == [20, 25, 31]


def test_pchip_is_exact_on_lines_and_monotone_on_monotone_data() -> None:
    x = np.array([0.0, 1.0, 3.0, 4.0, 7.0])
    line = bdrate.Pchip.fit(x, 2 * x + 1)
    t = np.linspace(0, 7, 50)
    assert np.allclose(line(t), 2 * t + 1)
    assert line.integral(0.5, 6.0) == pytest.approx((6.0**2 + 6.0) - (0.5**2 + 0.5))
    steps = bdrate.Pchip.fit(x, np.array([0.0, 0.0, 1.0, 5.0, 5.1]))
    assert np.all(np.diff(steps(np.linspace(0, 7, 500))) >= -1e-12)  # no overshoot between knots


# ------------------------------------------------------------------------------ PCA baseline


def test_pca_packets_round_trip_and_trade_bytes_for_psnr() -> None:
    folder = sample_data_root() / "mnist"
    train = load_mnist(folder, split="train").samples
    test = load_mnist(folder, split="test", limit=200).samples
    basis = PcaBasis.fit(train, 64, 0, 255)
    coef = basis.project(train, 64)
    fine, coarse = PcaCodec(basis, 64, 8.0, coef), PcaCodec(basis, 64, 64.0, coef)
    pf, pc = fine.encode(test), coarse.encode(test)
    header, _ = bitstream.read_packet(pf, expected_model_id=fine.model_id)
    assert header.count == 200 and header.sample_shape == (1, 28, 28)
    df, dc = fine.decode(pf, test.dtype), coarse.decode(pc, test.dtype)
    assert df.dtype == np.uint8 and df.shape == test.shape
    mse = lambda d: float(np.mean((d.astype(float) - test) ** 2))  # noqa: E731
    assert len(pc) < len(pf) and mse(df) < mse(dc)
    # decoding equals quantize -> dequantize -> reconstruct (the entropy coder is lossless)
    sym = np.rint(basis.project(test, 64) / 8.0)
    assert np.array_equal(df, basis.reconstruct(sym * 8.0, (1, 28, 28), np.uint8))


def test_dct_packets_round_trip_on_ecg_and_trade_bytes_for_prd() -> None:
    folder = sample_data_root() / "mitdb"
    train = load_ecg_windows(folder, records=["100", "101"], window=256).samples
    test = load_ecg_windows(folder, records=["102"], window=256).samples
    assert np.allclose(dct_matrix(256) @ dct_matrix(256).T, np.eye(256))  # orthonormal: energy is kept
    fine, coarse = (DctCodec(256, s, train, 1024.0, 0.0, 2047.0) for s in (8.0, 48.0))
    pf, pc = fine.encode(test), coarse.encode(test)
    header, _ = bitstream.read_packet(pf, expected_model_id=fine.model_id)
    assert header.count == len(test) and header.sample_shape == (2, 256)
    df, dc = fine.decode(pf, test.dtype), coarse.decode(pc, test.dtype)
    assert df.dtype == test.dtype and df.shape == test.shape
    err = lambda d: float(np.sum((d.astype(float) - test) ** 2))  # noqa: E731
    assert len(pc) < len(pf) < test.nbytes and err(df) < err(dc)
    # decoding equals quantize -> dequantize -> inverse DCT (the entropy coder is lossless)
    basis = dct_matrix(256)
    sym = np.rint(((test - 1024.0) @ basis.T) / 8.0)
    assert np.array_equal(df, np.rint(np.clip(sym * 8.0 @ basis + 1024.0, 0, 2047)).astype(test.dtype))
    with pytest.raises(InputError, match="windows must be"):
        fine.encode(test[:, :1])


def test_ecg_training_records_are_what_the_bundle_saw() -> None:
    data = {"train_records": [100, 101], "val_records": [102]}
    assert rd.training_records({"training": {"data": data}}) == ["100", "101", "102"]
    cmd = "latentwire train --data mitdb --source-option records=100,103 --family conv1d"
    assert rd.training_records({"training": {"command": cmd, "data": {}}}) == ["100", "103"]
    assert rd.training_records({}) == []


# ------------------------------------------------------------------------------ end to end


def test_rd_script_end_to_end_on_the_shipped_sample(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "rd-mnist.json"
    assert rd.main([
        "--dataset", "mnist", "--bundle", str(tiny_bundle), "--data-root", str(sample_data_root()),
        "--limit", "150", "--batch", "64", "--max-errors", "24,4", "--compact-levels", "2", "--compact-limit", "40",
        "--webp-step", "50", "--jpeg-qualities", "20,80", "--pca-ks", "16,64", "--pca-steps", "16,64",
        "--near", "4", "--no-progress", "--out", str(out),
    ]) == 0
    doc = json.loads(out.read_text())  # strict JSON: no NaN/Infinity
    meta, points = doc["meta"], doc["points"]
    assert meta["machine"]["cpu_count"] >= 1 and meta["versions"]["numpy"] == np.__version__
    assert meta["command"].startswith("python -m benchmarks.rd --dataset mnist")
    assert meta["data"]["n_samples"] == 150
    lw = [p for p in points if p["codec"] == "latentwire"]
    batch = [p for p in lw if p["mode"] == "packet64"]
    frame = [p for p in lw if p["mode"] == "frame"]
    n_levels = len(json.loads((tiny_bundle / "manifest.json").read_text())["quality_levels"])
    assert len(batch) == n_levels + 2 and len(frame) == 2
    # bytes as sent: a one-frame packet pays the whole header, so it costs more per frame
    for f in frame:
        b = next(p for p in batch if p["setting"] == f["setting"])
        assert f["bytes_per_sample"] > b["bytes_per_sample"] + 15
    # the residual levels honour their bound on what the receiver decoded; lossless is lossless
    for p in batch:
        if p.get("max_error") is not None:
            assert p["max_abs_error"] <= p["max_error"]
    assert any(p.get("lossless") and p["max_error"] == 0 for p in batch)
    codecs = {p["codec"] for p in points}
    assert {"webp", "jpeg", "png", "zstd", "raw", "pca"} <= codecs
    pca = [p for p in points if p["codec"] == "pca"]
    assert len(pca) == 4 and any(p["pareto"] for p in pca)
    assert {t["target"] for t in doc["summary"]["targets"]} >= {"fewer bytes than WebP at every PSNR",
                                                                "lossless <= 0.8x xz on the same batches"}
    # xz and zstd on the same 64-digit batches latentwire packs, decoded back exactly
    for name in ("xz", "zstd"):
        row = next(p for p in points if p["codec"] == name and "64 samples per batch" in p["setting"])
        assert row["lossless"] and row["max_abs_error"] == 0
    table = doc["summary"]["bounded_error_table"]
    assert {r["bound"] for r in table} == {0, 4} and all(r["within_bound"] for r in table)
    assert {r["codec"] for r in table if r["bound"] == 0} >= {"latentwire", "xz", "zstd", "webp", "png"}
    lw4 = next(r for r in table if r["bound"] == 4 and r["codec"] == "latentwire")
    assert lw4["bits"] == pytest.approx(8 * lw4["bytes_per_sample"] / 784)
    assert isinstance(doc["summary"]["bd_rate_percent_vs"]["webp"], dict)
    # a new bundle re-measured against the same samples reuses the classical codecs' points verbatim
    again = tmp_path / "again.json"
    assert rd.main([
        "--dataset", "mnist", "--bundle", str(tiny_bundle), "--data-root", str(sample_data_root()),
        "--limit", "150", "--batch", "64", "--max-errors", "", "--near", "", "--compact-levels", "0", "--no-pca",
        "--reuse-baselines", str(out), "--no-progress", "--no-plot", "--out", str(again),
    ]) == 0
    doc2 = json.loads(again.read_text())
    assert doc2["meta"]["baselines_from"]["file"] == str(out)
    baselines = [p for p in points if p["codec"] != "latentwire"]
    assert [p for p in doc2["points"] if p["codec"] != "latentwire"] == baselines
    assert len([p for p in doc2["points"] if p["codec"] == "latentwire"]) == n_levels
    png = out.with_suffix(".png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.stat().st_size > 1000


def test_reused_baselines_are_matched_by_samples_not_by_how_the_folder_is_spelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.rd.points import Point
    from benchmarks.rd.report import reuse_baselines

    (tmp_path / "mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    points = [Point("pca", "k=8 step=1", 10.0, 20.0).to_dict(), Point("latentwire", "q0", 5.0, 21.0).to_dict()]
    old = tmp_path / "old.json"  # an older layout: an absolute folder, a split key the new one lacks
    old.write_text(json.dumps({"meta": {"dataset": "mnist", "date": "d", "command": "c", "data": {
        "folder": str(tmp_path / "mnist"), "split": "test", "n_samples": 10, "pca_fit": "train (60000)"}},
        "points": points}))
    meta = {"dataset": "mnist", "data": {"folder": "mnist", "n_samples": 10, "sample_shape": [1, 28, 28]}}
    assert [p.codec for p in reuse_baselines(old, meta)] == ["pca"]
    for other in ({"folder": "elsewhere", "n_samples": 10}, {"folder": "mnist", "n_samples": 11},
                  {"folder": "mnist", "n_samples": 10, "split": "train"}):
        with pytest.raises(InputError, match="other samples"):
            reuse_baselines(old, {"dataset": "mnist", "data": other})


def test_ecg_held_out_records_come_from_the_manifest() -> None:
    avail = [str(r) for r in range(100, 125)]
    assert rd.heldout_records({"training": {"data": {"test_records": [117, 119]}}}, avail)[0] == ["117", "119"]
    recs, _ = rd.heldout_records({"training": {"data": {"records": [str(r) for r in range(100, 120)]}}}, avail)
    assert recs == [str(r) for r in range(120, 125)]
    cmd = "latentwire train --data mitdb --source-option records=100,101,102 --family conv1d"
    recs, why = rd.heldout_records({"training": {"command": cmd, "data": {}}}, ["100", "101", "102", "103"])
    assert recs == ["103"] and "command" in why
    recs, why = rd.heldout_records({"training": {"data": {}}}, avail)
    assert recs == list(rd.DEFAULT_ECG_HELD_OUT) and "default" in why


def test_ecg_scorer_prd_and_cr() -> None:
    x = np.full((2, 1, 100), 1024, dtype=np.int16)
    x[:, 0, ::2] += 100  # 0 / 100 adu above the ADC zero, alternating
    y = x.copy()
    y[:, 0, 0] += 10
    s = rd.Scorer(peak=2047.0, prd_baseline=1024.0, bits_per_value=11.0).score(x, y, total_bytes=2 * 50)
    assert s["prd_percent"] == pytest.approx(100 * math.sqrt(2 * 100 / (2 * 50 * 100**2)))
    assert s["cr"] == pytest.approx(100 * 11 / (8 * 50))
    # against its own mean (1074) the signal swings +-50 instead of 0/100: half the energy
    assert s["prdn_percent"] == pytest.approx(s["prd_percent"] * math.sqrt(2))



def test_wavelet_packets_round_trip_and_count_every_byte() -> None:
    import pywt

    from benchmarks.wavelet import WAVELET, WaveletCodec

    folder = sample_data_root() / "mitdb"
    train = load_ecg_windows(folder, records=["100", "101"], window=512).samples
    test = load_ecg_windows(folder, records=["102"], window=512).samples
    fine, coarse = (WaveletCodec(512, s, train, 1024.0, 0.0, 2047.0) for s in (8.0, 48.0))
    pf, pc = fine.encode(test), coarse.encode(test)
    header, payload = bitstream.read_packet(pf, expected_model_id=fine.model_id)
    # bytes counted like latentwire's: the whole packet (header + payload + CRC), one per batch
    assert header.count == len(test) and len(pf) == header.packet_length > len(payload)
    df, dc = fine.decode(pf, test.dtype), coarse.decode(pc, test.dtype)
    err = lambda d: float(np.sum((d.astype(float) - test) ** 2))  # noqa: E731
    assert len(pc) < len(pf) < test.nbytes and err(df) < err(dc)
    # decoding equals quantize -> dequantize -> inverse CDF 9/7 (the entropy coder is lossless)
    coeffs = pywt.wavedec(test.astype(np.float64) - 1024.0, WAVELET, mode="periodization", level=fine.level, axis=-1)
    q = [np.rint(c / 8.0) * 8.0 for c in coeffs]
    want = np.rint(np.clip(pywt.waverec(q, WAVELET, mode="periodization", axis=-1) + 1024.0, 0, 2047))
    assert np.array_equal(df, want.astype(test.dtype))


def test_rd_ecg_measures_prdn_both_baselines_and_rate_control(tmp_path: Path) -> None:
    """The ECG benchmark on the shipped records: held-out 102-103, baselines fit on 100-101, the
    shipped model with a transform ladder; every target line is for a baseline that ran."""
    import shutil

    from latentwire.codec.calibrate import calibrate

    bundle = tmp_path / "ecg"
    shutil.copytree(Path(rd.__file__).resolve().parents[2] / "codec" / "assets" / "ecg-conv1d", bundle)
    folder = sample_data_root() / "mitdb"
    calibrate(bundle, load_ecg_windows(folder, records=["100", "101"], window=1024).samples,
              ["none", "t32", "t8", 0], threads=1)
    out = tmp_path / "rd-ecg.json"
    args = ["--dataset", "ecg", "--bundle", str(bundle), "--data", str(folder), "--records", "102,103",
            "--fit-records", "100,101", "--dct-steps", "8,32", "--max-errors", "", "--compact-levels", "1",
            "--compact-limit", "8", "--target-prdns", "5", "--no-progress", "--no-plot", "--out", str(out)]
    assert rd.main(args) == 0
    doc = json.loads(out.read_text())
    points = doc["points"]
    assert {p["codec"] for p in points} >= {"latentwire", "dct", "wavelet", "zstd", "delta+zstd", "flac", "xz"}
    # FLAC on the whole records and on each window, xz on latentwire's batches: decoded back exactly
    flac = {p["setting"]: p for p in points if p["codec"] in ("flac", "xz")}
    assert set(flac) == {"whole records", "each window alone", "-9e, 256 samples per batch"}
    assert all(p["lossless"] and p["max_abs_error"] == 0 for p in flac.values())
    assert flac["whole records"]["bits_per_value"] < flac["each window alone"]["bits_per_value"] < 16
    table = doc["summary"]["bounded_error_table"]
    # the ladder's lossless level, and the max_error 1, 2, 4 points the table adds
    assert [r["bound"] for r in table if r["codec"] == "latentwire"] == [0, 1, 2, 4]
    assert all(r["within_bound"] for r in table)
    lossless = next(r for r in table if r["bound"] == 0 and r["codec"] == "latentwire")
    assert lossless["bits"] == pytest.approx(next(p["bits_per_value"] for p in points if p["codec"] == "latentwire"
                                                  and p.get("lossless") and p["mode"] == "packet256"))

    for p in points:
        if p["codec"] in ("latentwire", "dct", "wavelet") and not p.get("lossless"):
            assert p["prdn_percent"] >= p["prd_percent"] > 0 and p["bits_per_value"] > 0
            assert p["cr"] == pytest.approx(11.0 / p["bits_per_value"])
    rc = next(p for p in points if p.get("target_prdn") == 5.0)
    assert rc["prdn_percent"] <= 5.0
    # transform levels say how many windows went without their latent; every latentwire point its time each way
    ours = [p for p in points if p["codec"] == "latentwire" and p["mode"] == "packet256"]
    tx = [p for p in ours if p.get("target_prdn") or "transform step" in p["setting"]]
    assert len(tx) == 3 and all(0.0 <= p["alone_share"] <= 1.0 for p in tx)
    # residual levels say so only when some window went classical; latent-only levels never
    assert all(("alone_share" not in p) if p.get("max_error") is None else (0.0 < p.get("alone_share", 1.0) <= 1.0)
               for p in ours if p not in tx)
    assert all(0 < p["encode_seconds"] + p["decode_seconds"] <= p["seconds"] for p in ours)
    subset = [p for p in points if p.get("subset")]
    assert subset and all(p["mode"] == "frame" and "first 8 of" in p["subset"] for p in subset)
    targets = [t["target"] for t in doc["summary"]["targets"]]
    assert any("vs dct" in t for t in targets) and any("vs wavelet" in t for t in targets)
    assert any("FLAC on the same whole records" in t for t in targets)
    assert set(doc["summary"]["bd_rate_percent_vs_prdn_1_8"]) >= {"dct", "wavelet"}
    # --levels: only the ladder levels asked for, and a level the ladder lacks is a one-line error
    assert rd.main(args[:-2] + ["--levels", "9", "--out", str(tmp_path / "z.json")]) == 2
    # a baseline that cannot be fit is an error that says why, not a silent omission
    assert rd.main(args[:-2] + ["--fit-records", "999", "--out", str(tmp_path / "x.json")]) == 2
    assert rd.main(args[:-2] + ["--fit-records", "999", "--no-dct", "--no-wavelet", "--out",
                                str(tmp_path / "y.json")]) == 0
    assert not any("vs dct" in t["target"] for t in json.loads((tmp_path / "y.json").read_text())["summary"]["targets"])


# ------------------------------------------------------------------------------ photo baselines


def test_reversible_colour_transforms_round_trip_every_colour() -> None:
    from benchmarks.rd import codecs

    rng = np.random.default_rng(0)
    edges = np.array([0, 1, 2, 127, 128, 254, 255], dtype=np.uint8)
    grid = np.stack(np.meshgrid(edges, edges, edges, indexing="ij")).reshape(3, 7, 49)
    for rgb in (grid, rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)):
        assert np.array_equal(codecs.rct_inverse(*codecs.rct_forward(rgb)), rgb)
        t = codecs.hp2_forward(rgb)
        assert t.dtype == np.uint8 and np.array_equal(codecs.hp2_inverse(t), rgb)
    photo = np.asarray(Image.open(sample_data_root() / "bsds" / "100007.png").convert("RGB"))
    photo = np.ascontiguousarray(np.moveaxis(photo, -1, 0))
    sizes = {}
    for t in codecs.JPEGLS_TRANSFORMS:
        sizes[t], decoded = codecs.jpegls(0, t)(photo)
        assert np.array_equal(decoded, photo), t
    for near in (1, 2, 4):
        n, decoded = codecs.jpegls(near)(photo)
        err = np.abs(decoded.astype(int) - photo).max()
        assert 0 < err <= near and n < sizes["rgb"]
    with pytest.raises(InputError, match="rgb only"):
        codecs.jpegls(2, "hp2")


def test_rd_bsds_sets_every_image_codec_beside_latentwire(tmp_path: Path) -> None:
    """The shipped photo bundle on the three sample photos: AVIF and JPEG XL sweeps next to JPEG and
    WebP with a BD-rate against each, and the lossless / near-lossless table decoded within its bounds."""
    bundle = Path(rd.__file__).resolve().parents[2] / "codec" / "assets" / "bsds-gdn2d"
    out = tmp_path / "rd-bsds.json"
    assert rd.main(["--dataset", "bsds", "--bundle", str(bundle), "--data", str(sample_data_root() / "bsds"),
                    "--webp-step", "50", "--jpeg-qualities", "30,90", "--avif-qualities", "30,70",
                    "--jxl-distances", "1,4", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    points, summary = doc["points"], doc["summary"]
    assert doc["meta"]["baseline_settings"]["avif"].startswith("imagecodecs avif_encode (libavif")
    lossy = {"avif", "jpegxl", "jpeg", "webp"}
    for table in ("bd_rate_percent_vs", "bd_rate_percent_vs_latent_only"):
        assert set(summary[table]) == lossy  # near-lossless JPEG-LS is the bounded table's, not a curve
        assert all(r["value"] is not None for r in summary[table].values())
    for p in points:
        assert p["n_samples"] == 3 and p["bpp"] > 0
        if p.get("lossless"):
            assert p["max_abs_error"] == 0
        elif p["codec"] == "jpeg-ls":
            assert p["mode"] == "near-lossless" and 0 < p["max_abs_error"] <= p["max_error"]
    names = {(p["codec"], p["setting"]) for p in points if p.get("lossless")}
    assert {n for n, _ in names} >= {"latentwire", "png", "webp", "jpegxl", "jpeg-ls"} and len(names) >= 7
    rows = summary["bounded_error_table"]
    assert all(r["within_bound"] for r in rows)
    for bound in (1, 2, 4):
        assert {r["codec"] for r in rows if r["bound"] == bound} == {"latentwire", "jpeg-ls"}
    targets = {t["target"] for t in summary["targets"]}
    assert {"lossless <= WebP lossless", "max error 2 <= JPEG-LS NEAR=2"} <= targets
    # the markdown for BENCHMARKS.md: the bounded table and one BD-rate row per baseline
    from benchmarks import report

    md = report.bounded_table(doc)
    assert md.count("\n| 0 (lossless) |") >= 7 and md.count("\n| 4 |") == 2
    assert all(f"| {name} | " in report.summary(doc) for name in lossy)
