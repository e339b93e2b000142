"""What per-window modes cost and how the sender decides (issue 24 part 3), on held-out ECG windows.

    python -m benchmarks.ecg_modes [--bundle codec/assets/ecg-conv1d] [--old-tables tests/data/ecg-v4]
                                   [--data ../shared/data/mitdb] [--every 4] [--out benchmarks/results/ecg-modes.json]

Two questions, each on every ``--every``-th window of the bundle's held-out records:
1. Speed: encode and decode time per window, packets of 256, of the bundle before the modes
   (its tables rebuilt from --old-tables: every window sends its latent) and after (the sender
   codes every window both ways and picks), interleaved so a busy machine slows both alike;
   with the share of windows that went alone.
2. The decision: ideal bits (what the sender uses) against exact bytes, each window coded alone
   in each forced mode as a whole packet: how often the two pick the same mode, and the time per
   window of deciding by exact bytes (two trial packets) against the ideal-bit choice.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import git_commit, machine_info, write_result
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.payload import PayloadReader
from latentwire.codec.coding.transform import MODE_ALONE
from latentwire.codec.coding.transform_mode import LAMBDA_PER_STEP2
from latentwire.codec.sources import load_ecg_windows

REPO = Path(__file__).resolve().parents[1]
PACKET = 256
HELDOUT = ["117", "118", "119", "121", "122", "123", "124"]


def _round_trip(codec: Codec, x: np.ndarray, quality: int, mode: str) -> tuple[float, float, int, int]:
    """(encode s, decode s, bytes, windows sent alone) over packets of PACKET windows."""
    enc = dec = 0.0
    size = alone = 0
    for i in range(0, len(x), PACKET):
        t = time.perf_counter()
        packet = codec.encode(x[i : i + PACKET], quality=quality, transform_mode=mode)
        enc += time.perf_counter() - t
        t = time.perf_counter()
        codec.decode(packet)
        dec += time.perf_counter() - t
        size += len(packet)
        h, body = bitstream.read_packet(packet)
        if h.has_modes:
            alone += int((PayloadReader(body, codec.tables).modes(h.count) == MODE_ALONE).sum())
    return enc, dec, size, alone


def speed(old: Codec, new: Codec, x: np.ndarray, levels: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for q in levels:
        best: dict[str, list[float]] = {"old": [np.inf, np.inf], "new": [np.inf, np.inf]}
        got: dict[str, tuple[int, int]] = {}
        for _ in range(repeats):
            for name, codec, mode in (("old", old, "latent"), ("new", new, "auto")):
                e, d, size, alone = _round_trip(codec, x, q, mode)
                best[name] = [min(best[name][0], e), min(best[name][1], d)]
                got[name] = (size, alone)
        row = {"quality": q, "step": new.qualities[q].transform_step, "windows": len(x)}
        for name in ("old", "new"):
            row[f"{name}_encode_ms_per_window"] = 1e3 * best[name][0] / len(x)
            row[f"{name}_decode_ms_per_window"] = 1e3 * best[name][1] / len(x)
            row[f"{name}_bytes_per_window"] = got[name][0] / len(x)
        row["alone_share"] = got["new"][1] / len(x)
        print(row, flush=True)
        rows.append(row)
    return rows


def decision(new: Codec, x: np.ndarray, levels: list[int]) -> list[dict[str, Any]]:
    rows = []
    xf = x.astype(np.float64)
    for q in levels:
        lam = LAMBDA_PER_STEP2 * float(new.qualities[q].transform_step) ** 2  # type: ignore[arg-type]
        agree = 0
        t_exact = t_ideal = 0.0
        for i in range(len(x)):
            one = x[i : i + 1]
            t = time.perf_counter()
            cost = {}
            for mode in ("latent", "alone"):
                p = new.encode(one, quality=q, transform_mode=mode)
                cost[mode] = 8 * len(p) + float(((new.decode(p) - xf[i]) ** 2).sum()) / lam
            t_exact += time.perf_counter() - t
            t = time.perf_counter()
            picked = new.header(new.encode(one, quality=q)).has_modes
            t_ideal += time.perf_counter() - t
            agree += picked == (cost["alone"] < cost["latent"])
        row = {"quality": q, "windows": len(x), "agreement": agree / len(x),
               "exact_bytes_ms_per_window": 1e3 * t_exact / len(x), "ideal_bits_ms_per_window": 1e3 * t_ideal / len(x)}
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "codec" / "assets" / "ecg-conv1d")
    p.add_argument("--old-tables", type=Path, default=REPO / "tests" / "data" / "ecg-v4",
                   help="entropy.json and manifest.json of the bundle before the modes (same graphs)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mitdb")
    p.add_argument("--every", type=int, default=4, help="every N-th held-out window")
    p.add_argument("--levels", default="16,19,22,25,27")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--decision-windows", type=int, default=128, help="windows of the exact-bytes comparison")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ecg-modes.json")
    args = p.parse_args()
    x = load_ecg_windows(args.data, records=HELDOUT).samples[:: args.every]
    levels = [int(v) for v in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="latentwire-ecg-v4-") as tmp:
        old_dir = Path(tmp) / "bundle"
        shutil.copytree(args.bundle, old_dir)
        for name in ("entropy.json", "manifest.json"):
            shutil.copy(args.old_tables / name, old_dir / name)
        old = Codec.load(old_dir, provider="cpu", threads=1)
        new = Codec.load(args.bundle, provider="cpu", threads=1)
        t0 = time.perf_counter()
        result = {"speed": speed(old, new, x, levels, args.repeats),
                  "decision": decision(new, x[:: max(1, len(x) // args.decision_windows)][: args.decision_windows],
                                       levels)}
    write_result(args.out, {"records": HELDOUT, "every": args.every, "seconds": round(time.perf_counter() - t0, 1),
                            "git": git_commit(), "machine": machine_info(), **result})


if __name__ == "__main__":
    main()
