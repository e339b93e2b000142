"""Markdown tables for BENCHMARKS.md from a results JSON of ``benchmarks.rd``.

    python -m benchmarks.report benchmarks/results/rd-mnist.json

So the document is regenerated from measured files, never retyped by hand.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _psnr(p: dict[str, Any]) -> str:
    return "lossless" if p.get("lossless") else f"{p['psnr_db']:.2f}"


def points_table(doc: dict[str, Any], max_baseline_rows: int = 8) -> str:
    """Every latentwire point; for sweeps, their Pareto-front points (at most max_baseline_rows each)."""
    pts = doc["points"]
    ecg = any("prd_percent" in p for p in pts)
    img = any("bpp" in p for p in pts)
    cols = ["codec", "setting", "mode", "bytes/sample"] + (["bpp"] if img else []) + ["PSNR dB"]
    cols += ["PRD %", "PRDN %", "CR"] if ecg else []
    rows = []
    by_codec: dict[str, list[dict[str, Any]]] = {}
    for p in pts:
        by_codec.setdefault(p["codec"], []).append(p)
    for codec, group in by_codec.items():
        if codec == "pca":
            group = [p for p in group if p.get("pareto")]
        if codec == "latentwire":  # batched packets first, each mode by rate
            group = sorted(group, key=lambda p: (p.get("mode") == "frame", p["bytes_per_sample"]))
        if codec != "latentwire" and len(group) > max_baseline_rows:
            group = sorted(group, key=lambda p: p["bytes_per_sample"])
            keep = {round(i * (len(group) - 1) / (max_baseline_rows - 1)) for i in range(max_baseline_rows)}
            group = [p for i, p in enumerate(group) if i in keep or p.get("lossless")]
        for p in group:
            row = [codec, p["setting"], p.get("mode", ""), f"{p['bytes_per_sample']:.2f}"]
            row += [f"{p['bpp']:.3f}"] if img else []
            row += [_psnr(p)]
            row += (
                [f"{p.get('prd_percent', 0.0):.2f}", f"{p.get('prdn_percent', 0.0):.2f}", f"{p.get('cr', 0.0):.1f}"]
                if ecg
                else []
            )
            rows.append(row)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    lines = []
    for name, r in s["bd_rate_percent_vs"].items():
        if r.get("value") is None:
            lines.append(f"- BD-rate latentwire vs {name}: n/a ({r.get('error')})")
        else:
            lines.append(f"- BD-rate latentwire vs {name}: **{r['value']:+.1f}%** over {r['lo']:.2f}-{r['hi']:.2f} dB"
                         + (" (cut to the overlap of the curves)" if r["clipped"] else ""))
    for t in s.get("targets", []):
        lines.append(f"- {'MET' if t['met'] else '**NOT MET**'}: {t['target']} - {t['measured']}")
    return "\n".join(lines)


def machine(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
    return (f"{m['date']}, {m['machine']['platform']}, {m['machine']['cpu_count']} CPUs, Python "
            f"{m['machine']['python']}; {v}; git {m.get('git_commit')}; {m.get('seconds')} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m benchmarks.report RESULTS.json [...]", file=sys.stderr)
        return 2
    for path in args:
        doc = json.loads(Path(path).read_text())
        print(f"`{doc['meta']['command']}`\n\n{machine(doc)}\n\n{points_table(doc)}\n\n{summary(doc)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
