"""benchmarks.throughput runs end to end and reports the one-frame rows beside WebP, JPEG and
zstd on the same digits (issue 15); figures live in BENCHMARKS.md, not in assertions."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import throughput


def test_throughput_smoke_with_single_frames(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    assert throughput.main(["--batches", "8", "--repeat", "2", "--min-time", "0.01", "--single-frames", "8",
                            "--threads", "1", "--no-spin-compare", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    single = report["single_frame"]
    assert single["frames"] == 8 and single["sample_shapes"] == [[1, 28, 28]]
    ops = {"lw_enc", "lw_dec", "lw_res_enc", "lw_res_dec", "webp_enc", "webp_dec", "jpeg_enc", "jpeg_dec",
           "zstd_enc", "zstd_dec"}
    assert set(single["frames_per_s"]) == ops and all(v > 0 for v in single["frames_per_s"].values())
    assert all(len(ts) == 2 for ts in single["seconds"].values())
    # the latent level's packets are smaller than the residual level's, and far below WebP's bytes
    sizes = single["bytes_per_frame"]
    assert sizes["lw"] < sizes["lw_res"] and sizes["lw"] < sizes["webp"] / 2
    assert {"webp_enc/lw_enc", "webp_dec/lw_dec", "zstd_dec/lw_res_dec"} <= set(single["ratios"])
    (row,) = report["cpu"]
    assert set(row["vs_single_webp"]) == {"enc_res", "dec_res"} and row["vs_single_webp"]["enc_res"] > 0
