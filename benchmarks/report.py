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


def bounded_table(doc: dict[str, Any]) -> str:
    """The lossless / near-lossless table (benchmarks.rd.bounded), when the run has one."""
    rows = doc["summary"].get("bounded_error_table")
    if not rows:
        return ""
    unit = {"bsds": "bpp", "mnist": "bits/pixel", "ecg": "bits/sample"}.get(doc["meta"]["dataset"], "bits")
    lines = [f"| max error | codec | setting | bytes/sample | {unit} | measured max error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        bound = "0 (lossless)" if r["bound"] == 0 else str(r["bound"])
        name = f"**{r['codec']}**" if r["codec"] == "latentwire" else r["codec"]
        lines.append(f"| {bound} | {name} | {r['setting']} | {r['bytes_per_sample']:.2f} | {r['bits']:.3f} | "
                     f"{r['max_abs_error']:g}{'' if r['within_bound'] else ' (over the bound)'} |")
    return "\n".join(lines)


def _bd(r: dict[str, Any]) -> str:
    if r.get("value") is None:
        return "n/a"
    return f"{r['value']:+.1f}% ({r['lo']:.2f}-{r['hi']:.2f} dB{', overlap' if r['clipped'] else ''})"


def summary(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    tables = [(k, v) for k, v in s.items() if k.startswith("bd_rate_percent_vs") and v]
    names = sorted({n for _, t in tables for n in t})
    what = {"bd_rate_percent_vs": "PSNR, all levels", "bd_rate_percent_vs_latent_only": "PSNR, latent levels",
            "bd_rate_percent_vs_prd_1_8": "PRD 1-8 %", "bd_rate_percent_vs_prdn_1_8": "PRDN 1-8 %"}
    lines = []
    if names:  # none when every baseline of the run is lossless
        lines += ["| BD-rate of latentwire vs | " + " | ".join(what.get(k, k) for k, _ in tables) + " |",
                  "|---|" + "---|" * len(tables)]
        lines += [f"| {n} | " + " | ".join(_bd(t[n]) if n in t else "" for _, t in tables) + " |" for n in names]
        lines.append("")
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
        bounded = bounded_table(doc)
        print(f"`{doc['meta']['command']}`\n\n{machine(doc)}\n\n{points_table(doc)}\n\n"
              + (f"{bounded}\n\n" if bounded else "") + f"{summary(doc)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
