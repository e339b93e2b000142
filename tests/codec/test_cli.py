"""The `latentwire` command as a user runs it: encode -> .lw -> decode, eval JSON, and clear
errors (never a traceback) for a damaged file or a wrong bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from latentwire.codec.coding.bitstream import iter_packets
from latentwire.codec.sources import load_mnist, sample_data_root

MNIST = sample_data_root() / "mnist"


def lw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "latentwire.codec.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_every_command() -> None:
    out = lw("--help")
    assert out.returncode == 0
    for name in ("train", "export", "calibrate", "encode", "decode", "eval", "serve", "send", "receive", "demo"):
        assert f"  {name}" in out.stdout
    assert lw("frobnicate").returncode == 2


def test_encode_decode_roundtrip_with_bound(tiny_bundle: Path, tmp_path: Path) -> None:
    lwfile, out = tmp_path / "digits.lw", tmp_path / "digits.npy"
    enc = lw("encode", str(MNIST), "--source-option", "split=test", "--bundle", str(tiny_bundle),
             "--out", str(lwfile), "--max-error", "6", "--batch", "128", "--no-progress")
    assert enc.returncode == 0, enc.stderr
    report = json.loads(enc.stdout)
    assert report["frames"] == 500 and report["packets"] == 4 and report["bytes"] == lwfile.stat().st_size
    assert [h.count for h, _ in iter_packets(lwfile.read_bytes())] == [128, 128, 128, 116]
    dec = lw("decode", str(lwfile), "--bundle", str(tiny_bundle), "--out", str(out), "--no-progress")
    assert dec.returncode == 0, dec.stderr
    original = load_mnist(MNIST, split="test").samples
    decoded = np.load(out)
    assert decoded.shape == original.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - original.astype(int)).max() <= 6


def test_decode_damaged_file_says_what_happened(tiny_bundle: Path, tmp_path: Path) -> None:
    lwfile = tmp_path / "d.lw"
    assert lw("encode", str(MNIST), "--source-option", "split=test", "--bundle", str(tiny_bundle),
              "--out", str(lwfile), "--no-progress").returncode == 0
    data = bytearray(lwfile.read_bytes())
    data[40] ^= 0xFF
    lwfile.write_bytes(bytes(data))
    dec = lw("decode", str(lwfile), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "o.npy"), "--no-progress")
    assert dec.returncode == 1
    assert "CRC32 mismatch" in dec.stderr and "Traceback" not in dec.stderr
    missing = lw("decode", str(lwfile), "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "o.npy"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_eval_reports_every_level(tiny_bundle: Path) -> None:
    out = lw("eval", "--bundle", str(tiny_bundle), "--data", str(MNIST), "--source-option", "split=test",
             "--limit", "200", "--max-error", "5")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    levels = report["levels"]
    assert len(levels) == len(json.loads((tiny_bundle / "manifest.json").read_text())["quality_levels"]) + 1
    assert levels[-1]["max_error"] == 5 and levels[-1]["max_abs_error"] <= 5
    sizes = [lv["bytes_per_sample"] for lv in levels[:-1]]
    assert sizes == sorted(sizes) and report["raw_bits_per_value"] == 8


def test_encode_takes_the_residual_mode(tmp_path: Path) -> None:
    """`--residual-mode`: the shipped ECG bundle's lossless level with every window classical, with
    every window's latent, or each as it codes smaller; all three decode bit-exact, and a mode the
    codec does not know is refused by the parser."""
    bundle = Path(__file__).resolve().parents[2] / "codec" / "assets" / "ecg-conv1d"
    with np.load(bundle.parent / "ecg_heldout_sample.npz") as z:
        windows = z["samples"][:6]
    np.save(tmp_path / "w.npy", windows)
    sizes = {}
    for mode in ("classic", "latent", "auto"):
        lwfile, out = tmp_path / f"{mode}.lw", tmp_path / f"{mode}.npy"
        enc = lw("encode", str(tmp_path / "w.npy"), "--bundle", str(bundle), "--out", str(lwfile), "--max-error", "0",
                 "--residual-mode", mode, "--no-progress")
        assert enc.returncode == 0, enc.stderr
        sizes[mode] = json.loads(enc.stdout)["bytes"]
        [(header, _)] = list(iter_packets(lwfile.read_bytes()))
        assert header.has_modes == (mode == "classic") or mode == "auto"
        assert lw("decode", str(lwfile), "--bundle", str(bundle), "--out", str(out), "--no-progress").returncode == 0
        assert np.array_equal(np.load(out), windows)
    assert sizes["auto"] <= min(sizes["classic"], sizes["latent"]) and sizes["classic"] != sizes["latent"]
    bad = lw("encode", str(tmp_path / "w.npy"), "--bundle", str(bundle), "--out", str(tmp_path / "x.lw"),
             "--residual-mode", "flac")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
