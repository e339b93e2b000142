"""Which basis codes the ECG latent's residual in fewer bytes: DCT or CDF 9/7 wavelet (issue 14).

    python -m benchmarks.ecg_basis [--bundle codec/assets/ecg-conv1d] [--data-root ../shared/data]
                                   [--out benchmarks/results/ecg-basis.json]

A choice made on VALIDATION records only: the bundle's graphs stay as they are; for each basis a
copy is calibrated on the bundle's training records minus its validation records (manifest
training.data), then the validation records' windows are coded at every transform step of the
shipped ladder, in packets of 256 windows, all bytes counted. Quality is PRDN (pooled over the
windows, each window's mean removed), so a baseline offset cannot flatter either side. Reported:
bytes per window and PRDN per step, and the BD-rate of cdf97 against dct over PRDN 1-8 %.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bdrate
from benchmarks.common import git_commit, machine_info, write_result
from latentwire.codec.bundle import read_manifest
from latentwire.codec.calibrate import calibrate
from latentwire.codec.codec import Codec
from latentwire.codec.coding.transform import BASES
from latentwire.codec.sources import load_ecg_windows

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ecg-basis.json"
PACKET = 256


def pooled_prdn(x: np.ndarray, rec: np.ndarray) -> float:
    xf = x.astype(np.float64)
    centred = xf - xf.mean(axis=-1, keepdims=True)
    return float(100.0 * np.sqrt(((xf - rec) ** 2).sum() / (centred**2).sum()))


def measure(bundle: Path, cal: np.ndarray, val: np.ndarray, ladder: Sequence[Any], basis: str,
            include_latent: bool = False) -> list[dict[str, Any]]:
    """Rows of every transform level (and q0, the latent alone, with include_latent) on val."""
    with tempfile.TemporaryDirectory(prefix=f"latentwire-basis-{basis}-") as tmp:
        d = Path(tmp) / "bundle"
        shutil.copytree(bundle, d)
        calibrate(d, cal, list(ladder), threads=1, transform_basis=basis)
        codec = Codec.load(d, provider="cpu", threads=1)
        rows = []
        for q in codec.qualities:
            if q.transform_step is None and not (include_latent and q.index == 0):
                continue
            size, parts = 0, []
            for i in range(0, len(val), PACKET):
                packet = codec.encode(val[i : i + PACKET], quality=q.index)
                size += len(packet)
                parts.append(codec.decode(packet))
            rec = np.concatenate(parts).astype(np.float64)
            rows.append({"basis": basis, "quality": q.index, "step": q.transform_step,
                         "bytes_per_window": size / len(val), "prdn_percent": pooled_prdn(val, rec)})
            print(f"{basis:>6} {q.name:>24}: {size / len(val):7.1f} B/window, "
                  f"PRDN {rows[-1]['prdn_percent']:.2f} %", flush=True)
        return rows


def prdn_curve(rows: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(bytes per window, -20 log10 PRDN) of measured rows: the curve a BD-rate over PRDN takes."""
    return [r["bytes_per_window"] for r in rows], [-20.0 * np.log10(r["prdn_percent"]) for r in rows]


@dataclass(frozen=True)
class ValidationSplit:
    """A bundle's calibration records (its training records minus its validation records), its
    validation records, both as windows, and the ladder to measure: q0 and every transform step."""

    cal_records: list[int]
    val_records: list[int]
    ladder: list[str | None]
    cal: np.ndarray
    val: np.ndarray


def validation_split(bundle: Path, data_root: Path) -> ValidationSplit:
    m = read_manifest(bundle)
    data = m["training"]["data"]
    val_records = [int(r) for r in data["val_records"]]
    cal_records = [int(r) for r in data["train_records"] if int(r) not in val_records]
    steps = [q["transform_step"] for q in m["quality_levels"] if q.get("transform_step")]
    if not steps:
        raise SystemExit(f"{bundle}: no transform levels in its ladder; nothing to compare")
    mitdb = data_root / "mitdb"
    split = ValidationSplit(cal_records, val_records, [None] + [f"t{s:g}" for s in steps],
                            load_ecg_windows(mitdb, records=cal_records).samples,
                            load_ecg_windows(mitdb, records=val_records).samples)
    print(f"calibrating on records {cal_records} ({len(split.cal)} windows), coding validation records "
          f"{val_records} ({len(split.val)} windows)", flush=True)
    return split


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ecg_basis", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=REPO / "codec" / "assets" / "ecg-conv1d")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    m = read_manifest(args.bundle)
    split = validation_split(args.bundle, args.data_root)
    rows = [r for basis in sorted(BASES) for r in measure(args.bundle, split.cal, split.val, split.ladder, basis)]

    def curve(basis: str) -> tuple[list[float], list[float]]:
        return prdn_curve([r for r in rows if r["basis"] == basis])

    bd = bdrate.bd_rate(*curve("dct"), *curve("cdf97"), -20.0 * np.log10(8.0), -20.0 * np.log10(1.0))
    print(f"BD-rate cdf97 vs dct over PRDN {10 ** (-bd.hi / 20):.2f}-{10 ** (-bd.lo / 20):.2f} %: {bd.value:+.1f} %")
    report = {
        "benchmark": "ecg_basis", "command": "python -m benchmarks.ecg_basis", "started": started.isoformat(),
        "git_commit": git_commit(), "machine": machine_info(), "bundle": str(args.bundle),
        "model_id": m["model_id"], "calibration_records": split.cal_records, "validation_records": split.val_records,
        "windows": int(len(split.val)), "packet_windows": PACKET, "rows": rows,
        "bd_rate_cdf97_vs_dct_prdn_1_8": bd.to_dict(),
    }
    print(f"wrote {write_result(args.out, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
