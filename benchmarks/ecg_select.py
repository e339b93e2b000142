"""Choose between ECG models on VALIDATION records, against the wavelet baseline (issue 14).

    python -m benchmarks.ecg_select BUNDLE [BUNDLE ...] [--data-root ../shared/data]
                                    [--out benchmarks/results/ecg-select.json]

The issue asks that models be picked on validation records, never on the held-out ones. Each
bundle (an exported candidate, or the shipped one) is calibrated in a copy on the training records
minus the validation records of the FIRST bundle's manifest (so every candidate sees the same
split), with the first bundle's ladder of transform steps and the CDF 9/7 residual basis; then the
validation windows are coded at q0 and every transform step in packets of 256, all bytes counted.
The CDF 9/7 wavelet baseline (tables fit on the same records) runs in the same process. Reported:
bytes per window and pooled PRDN per level, and each candidate's BD-rate over PRDN 1-8 % against
the wavelet baseline and against the first bundle.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import bdrate
from benchmarks.common import git_commit, machine_info, write_result
from benchmarks.ecg_basis import PACKET, measure, pooled_prdn, prdn_curve, validation_split
from benchmarks.wavelet import WaveletCodec
from latentwire.codec.bundle import Bundle, read_manifest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ecg-select.json"
WAVELET_STEPS = (96, 64, 48, 40, 32, 28, 24, 20, 16, 12, 8, 6)
PRDN_RANGE = (1.0, 8.0)


def wavelet_rows(
    cal: np.ndarray, val: np.ndarray, offset: float, raw_min: float, raw_max: float
) -> list[dict[str, Any]]:
    rows = []
    for step in WAVELET_STEPS:
        wc = WaveletCodec(val.shape[-1], step, cal, offset, raw_min, raw_max)
        size, parts = 0, []
        for i in range(0, len(val), PACKET):
            packet = wc.encode(val[i : i + PACKET])
            size += len(packet)
            parts.append(wc.decode(packet, val.dtype))
        rec = np.concatenate(parts).astype(np.float64)
        rows.append({"step": step, "bytes_per_window": size / len(val), "prdn_percent": pooled_prdn(val, rec)})
        print(
            f"wavelet step {step:5g}: {rows[-1]['bytes_per_window']:7.1f} B/window, "
            f"PRDN {rows[-1]['prdn_percent']:.2f} %",
            flush=True,
        )
    return rows


def _bd(anchor: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]]) -> dict[str, Any]:
    lo, hi = (-20.0 * np.log10(PRDN_RANGE[1]), -20.0 * np.log10(PRDN_RANGE[0]))
    return bdrate.bd_rate(*prdn_curve(anchor), *prdn_curve(test), lo, hi).to_dict()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ecg_select", description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", type=Path, nargs="+", help="candidate bundles; the first sets split and ladder")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    started = _dt.datetime.now(_dt.timezone.utc)
    split = validation_split(args.bundles[0], args.data_root)
    cal, val = split.cal, split.val
    norm = Bundle.load(args.bundles[0]).manifest.normalization
    wavelet = wavelet_rows(cal, val, norm.offset, norm.raw_min, norm.raw_max)
    candidates: list[dict[str, Any]] = []
    for bundle in args.bundles:
        m = read_manifest(bundle)
        rows = measure(bundle, cal, val, split.ladder, "cdf97", include_latent=True)
        transform_rows = [r for r in rows if r["step"] is not None]
        entry = {"bundle": str(bundle), "model_id": m["model_id"], "rows": rows,
                 "bd_rate_vs_wavelet_prdn_1_8": _bd(wavelet, rows)}
        if candidates:
            entry["bd_rate_vs_first_prdn_1_8"] = _bd(candidates[0]["rows"], rows)
        candidates.append(entry)
        q0 = next(r for r in rows if r["step"] is None)
        print(
            f"{bundle}: q0 {q0['bytes_per_window']:.1f} B at PRDN {q0['prdn_percent']:.2f} %; "
            f"{len(transform_rows)} transform levels; "
            f"BD-rate vs wavelet {entry['bd_rate_vs_wavelet_prdn_1_8']['value']:+.1f} %"
            + (
                f", vs {args.bundles[0]} {entry['bd_rate_vs_first_prdn_1_8']['value']:+.1f} %"
                if len(candidates) > 1
                else ""
            ),
            flush=True,
        )
    report = {
        "benchmark": "ecg_select", "command": "python -m benchmarks.ecg_select " + " ".join(map(str, args.bundles)),
        "started": started.isoformat(), "git_commit": git_commit(), "machine": machine_info(),
        "calibration_records": split.cal_records, "validation_records": split.val_records, "windows": int(len(val)),
        "packet_windows": PACKET, "transform_basis": "cdf97", "wavelet": wavelet, "candidates": candidates,
    }
    print(f"wrote {write_result(args.out, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
