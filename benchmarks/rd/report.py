"""What the rate-distortion benchmark concludes and shows: BD-rates (PSNR, and PRD / PRDN for
ECG), the targets of the issues it checks (only against baselines that ran), the run's metadata,
the table and the plot."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from latentwire.codec.codec import Codec
from latentwire.codec.errors import InputError

from .. import bdrate
from ..common import git_commit, machine_info, version
from .codecs import NEAR_LOSSLESS, settings
from .points import Point


def quality(p: Point, metric: str) -> float:
    """The curve's quality axis in dB (higher is better): PSNR, or for ECG the SNR that PRD or
    PRDN stand for, -20 log10(PRD / 100), so one BD-rate method serves every metric."""
    if metric == "psnr":
        return p.psnr_db
    value = p.prd_percent if metric == "prd" else p.prdn_percent
    return math.inf if not value else -20.0 * math.log10(value / 100.0)


def prd_interval_db(lo_percent: float, hi_percent: float) -> tuple[float, float]:
    """A PRD range (percent) as the quality interval of ``quality``: (dB at hi, dB at lo)."""
    return -20.0 * math.log10(hi_percent / 100.0), -20.0 * math.log10(lo_percent / 100.0)


def curve_points(points: list[Point], codec: str, mode_prefix: str | None = "packet",
                 latent_only: bool = False) -> list[Point]:
    """The codec's whole-set points of the given packet mode, no subset rows, no rate-controlled rows
    (they are their own curve); latent_only: no max-error levels."""
    return [p for p in points if p.codec == codec and not p.lossless and p.subset is None and p.target_prdn is None
            and p.mode != NEAR_LOSSLESS
            and (mode_prefix is None or p.mode is None or p.mode.startswith(mode_prefix))
            and not (latent_only and p.max_error is not None)]


def curve(points: list[Point], codec: str, mode_prefix: str | None = "packet",
          metric: str = "psnr", latent_only: bool = False) -> tuple[list[float], list[float]]:
    """The codec's (rate, quality) points (curve_points)."""
    sel = curve_points(points, codec, mode_prefix, latent_only)
    x = [p.bpp if p.bpp is not None else p.bytes_per_sample for p in sel]
    return x, [quality(p, metric) for p in sel]


def bd_rates(points: list[Point], interval: tuple[float, float] | None, lw_mode: str | None,
             metric: str = "psnr", latent_only: bool = False) -> dict[str, Any]:
    """BD-rate of latentwire against each lossy baseline (near-lossless rows are the bounded table's)
    (negative: latentwire needs fewer bytes),
    over the quality interval (metric's dB) or the curves' overlap; latent_only: latentwire's
    latent levels alone (photos: the residual levels are the near-lossless mode, not the ladder)."""
    lw = curve(points, "latentwire", lw_mode, metric, latent_only)
    out: dict[str, Any] = {}
    for name in sorted({p.codec for p in points
                        if p.codec != "latentwire" and not p.lossless and p.mode != NEAR_LOSSLESS}):
        ref = curve(points, name, None, metric)
        try:
            res = bdrate.bd_rate(*ref, *lw, *(interval or (None, None)))
            out[name] = res.to_dict()
        except InputError as exc:
            out[name] = {"value": None, "error": str(exc)}
    return out


def rate_ratios_at_levels(points: list[Point], lw_mode: str | None, latent_only: bool = False) -> dict[str, Any]:
    """Per latentwire point, its bytes over each lossy baseline's bytes at the same PSNR (PCHIP on
    the baseline's front; None outside its range): where a BD-rate is won or lost, level by level."""
    sel = curve_points(points, "latentwire", lw_mode, latent_only)
    out: dict[str, Any] = {}
    for name in sorted({p.codec for p in points
                        if p.codec != "latentwire" and not p.lossless and p.mode != NEAR_LOSSLESS}):
        rates, dbs = curve(points, name, None)
        rows = []
        for p in sorted(sel, key=lambda q: q.psnr_db):
            mine = p.bpp if p.bpp is not None else p.bytes_per_sample
            theirs = bdrate.rate_at_psnr(rates, dbs, p.psnr_db)
            rows.append({"setting": p.setting, "psnr_db": round(p.psnr_db, 3), "rate": mine,
                         "baseline_rate": theirs, "ratio": None if theirs is None else round(mine / theirs, 4)})
        out[name] = rows
    return out


def format_ratios(ratios: dict[str, Any]) -> str:
    """One line per baseline: latentwire's bytes over the baseline's at each level's PSNR."""
    lines = []
    for name, rows in ratios.items():
        cells = [f"{r['setting'].split()[0]} {r['psnr_db']:.2f} dB "
                 + ("n/a" if r["ratio"] is None else f"{(r['ratio'] - 1) * 100:+.1f}%") for r in rows]
        lines.append(f"bytes vs {name} at equal PSNR: " + ", ".join(cells))
    return "\n".join(lines)


def _lw_bytes_for(points: list[Point], target_db: float, mode: str) -> float | None:
    """Bytes latentwire needs for >= target_db: interpolated on its front, the cheapest point beyond
    its range (a cheaper point with more PSNR, or the lossless level)."""
    sel = [p for p in points if p.codec == "latentwire" and p.mode == mode]
    r = bdrate.rate_at_psnr([p.bytes_per_sample for p in sel], [p.psnr_db for p in sel], target_db)
    if r is not None:
        return r
    ok = [p.bytes_per_sample for p in sel if p.psnr_db >= target_db]
    return min(ok) if ok else None


def targets_mnist(points: list[Point], codec: Codec, batch: int, bd: dict[str, Any]) -> list[dict[str, Any]]:
    mode = f"packet{batch}"
    lw = [p for p in points if p.codec == "latentwire" and p.mode == mode]
    ladder = [p for p in lw if p.setting.startswith("q")]
    out = []
    lo, hi = min(p.psnr_db for p in ladder), max(p.psnr_db for p in ladder)
    out.append({"target": ">= 4 quality levels spanning <= 21 dB to >= 35 dB",
                "measured": f"{len(ladder)} levels, {lo:.2f} dB .. {'lossless' if math.isinf(hi) else f'{hi:.2f} dB'}",
                "met": len(ladder) >= 4 and lo <= 21.0 and hi >= 35.0})
    for db, nbytes in ((22.5, 16.0), (24.2, 24.0)):
        best = max((p.psnr_db for p in lw if p.bytes_per_sample <= nbytes), default=None)
        need = _lw_bytes_for(points, db, mode)
        out.append({"target": f">= {db} dB at <= {nbytes:g} B/sample",
                    "measured": (f"best PSNR at <= {nbytes:g} B: {best:.2f} dB; " if best is not None else
                                 f"no point at <= {nbytes:g} B; ") + (f"{db} dB needs {need:.2f} B" if need else ""),
                    "met": best is not None and best >= db})
    worst = None
    wx, wy = curve(points, "webp", None)
    fr, fp = bdrate.pareto_front(wx, wy)
    ok = True
    for r, p in zip(fr, fp, strict=True):
        need = _lw_bytes_for(points, float(p), mode)
        ratio = None if need is None else need / r
        if ratio is None or ratio >= 1.0:
            ok = False
        if ratio is not None and (worst is None or ratio > worst[0]):
            worst = (ratio, float(p), float(r))
    out.append({"target": "fewer bytes than WebP at every PSNR",
                "measured": "no WebP point" if worst is None else
                f"worst case: {100 * worst[0]:.1f}% of WebP's bytes (WebP {worst[2]:.1f} B at {worst[1]:.2f} dB)",
                "met": ok and worst is not None})
    w = bd.get("webp", {})
    out.append({"target": "BD-rate vs WebP <= -75% over 22-35 dB",
                "measured": "n/a" if w.get("value") is None else
                f"{w['value']:.1f}% over {w['lo']:.2f}-{w['hi']:.2f} dB"
                + (" (clipped to overlap)" if w["clipped"] else ""),
                # an interval cut short by WebP's own range (it cannot go below ~22.7 dB on digits)
                # still counts if it keeps >= 80 % of 22-35 dB
                "met": w.get("value") is not None and w["value"] <= -75.0 and (w["hi"] - w["lo"]) >= 0.8 * 13.0})
    if not any(p.codec == "pca" for p in points):  # --no-pca: no line for a baseline that did not run
        return out
    px, py = curve(points, "pca", None)
    lx, ly = curve(points, "latentwire", mode)
    fr, fp = bdrate.pareto_front(px, py)
    margins = []
    for r, p in zip(fr, fp, strict=True):
        mine = bdrate.psnr_at_rate(lx, ly, float(r))
        if mine is not None:
            margins.append((mine - float(p), float(r)))
    pca_bd = bd.get("pca", {})
    out.append({"target": "better than PCA (same quantizer + coder) at equal bytes",
                "measured": "no overlap" if not margins else
                f"latentwire PSNR - PCA PSNR at PCA's front points {min(m[0] for m in margins):+.2f} .. "
                f"{max(m[0] for m in margins):+.2f} dB ({len(margins)} points, "
                f"{min(m[1] for m in margins):.1f}-{max(m[1] for m in margins):.1f} B)"
                + ("" if pca_bd.get("value") is None else f"; BD-rate vs PCA {pca_bd['value']:.1f}%"),
                "met": bool(margins) and min(m[0] for m in margins) > 0})
    return out


def _best_cr(points: list[Point], codec: str, limit: float, metric: str = "prd") -> Point | None:
    def within(p: Point) -> bool:
        value = p.prd_percent if metric == "prd" else p.prdn_percent
        return value is not None and value <= limit

    ok = [p for p in points if p.codec == codec and (p.mode is None or p.mode.startswith("packet")) and p.subset is None
          and within(p)]
    return max(ok, key=lambda p: p.cr or 0.0, default=None)


def targets_ecg(points: list[Point], bd_prd: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's targets against every classical baseline that ran (no line for one that did not)."""
    out = []
    baselines = [b for b in ("dct", "wavelet") if any(p.codec == b for p in points)]
    for b in baselines:
        r = bd_prd.get(b, {})
        out.append({"target": f"BD-rate vs {b} <= -25% over PRD 1-8%",
                    "measured": "n/a" if r.get("value") is None else
                    f"{r['value']:+.1f}% over PRD {100 * 10 ** (-r['hi'] / 20):.2f}-{100 * 10 ** (-r['lo'] / 20):.2f}%"
                    + (" (clipped to the overlap)" if r.get("clipped") else ""),
                    "met": r.get("value") is not None and r["value"] <= -25.0})
    mine = _best_cr(points, "latentwire", 5.0, "prdn")
    for b in baselines:
        theirs = _best_cr(points, b, 5.0, "prdn")
        gain = None if mine is None or theirs is None or not theirs.cr else (mine.cr or 0.0) / theirs.cr - 1.0
        out.append({"target": f"best CR at PRDN <= 5% beats {b} by >= 25%",
                    "measured": ("no latentwire point at PRDN <= 5%" if mine is None else
                                 f"latentwire {mine.cr:.2f} ({mine.setting}, PRDN {mine.prdn_percent:.2f}%)")
                    + ("" if theirs is None else f" vs {b} {theirs.cr:.2f} ({theirs.setting}, "
                                                  f"PRDN {theirs.prdn_percent:.2f}%)")
                    + ("" if gain is None else f": {100 * gain:+.1f}%"),
                    "met": gain is not None and gain >= 0.25})
    return out


def targets_bsds(bd: dict[str, Any], bd_latent: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets against the image codecs that ran: the latent levels (the PSNR ladder the
    issue asks of the latent path), and the whole ladder with the residual levels."""
    out = []
    for name, bound in (("jpeg", -20.0), ("webp", 0.0)):
        for what, table in (("latent levels", bd_latent), ("whole ladder", bd)):
            r = table.get(name)
            if r is None:
                continue
            out.append({"target": f"BD-rate vs {name} <= {bound:+.0f}% ({what})",
                        "measured": "n/a" if r.get("value") is None
                        else f"{r['value']:+.1f}% over {r['lo']:.2f}-{r['hi']:.2f} dB"
                        + (" (clipped to the overlap)" if r.get("clipped") else ""),
                        "met": r.get("value") is not None and r["value"] <= bound})
    return out


def run_metadata(args: argparse.Namespace, codec: Codec, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.rd " + shlex.join(argv),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "versions": {n: version(n) for n in ("latentwire", "numpy", "onnxruntime", "Pillow", "zstandard",
                                             "constriction", "PyWavelets", "imagecodecs", "soundfile")},
        "baseline_settings": settings(args.dataset),
        "bundle": {"path": str(codec.bundle.path), "name": codec.manifest.name, "model_id": codec.model_id,
                   "family": codec.manifest.family, "qualities": [asdict(q) for q in codec.qualities],
                   "training": codec.manifest.raw.get("training", {}).get("command")},
        "batch": args.batch,
        "bytes": "latentwire and pca: whole packets (header + payload + CRCs) / frames; others: per-sample files",
    }


def format_table(points: list[Point]) -> str:
    ecg = any(p.prd_percent is not None for p in points)
    img = any(p.bpp is not None for p in points)
    head = f"{'codec':<11} {'setting':<34} {'mode':<10} {'B/sample':>10} {'PSNR dB':>8}"
    head += f" {'PRD %':>7} {'PRDN %':>7} {'bits/s':>7} {'CR':>7}" if ecg else ""
    head += f" {'bpp':>7}" if img else ""
    lines = [head, "-" * len(head)]
    order = {id(p): i for i, p in enumerate(points)}

    def lw_key(p: Point) -> tuple[bool, bool, float]:
        mine = p.codec == "latentwire"
        return not mine, p.mode == "frame", p.bytes_per_sample if mine else order[id(p)]

    for p in sorted(points, key=lw_key):
        if p.codec == "pca" and not p.pareto:
            continue
        psnr = "inf" if p.lossless else f"{p.psnr_db:.2f}"
        line = f"{p.codec:<11} {p.setting:<34} {p.mode or '':<10} {p.bytes_per_sample:>10.2f} {psnr:>8}"
        if ecg:
            prd = [float("nan") if v is None else v for v in (p.prd_percent, p.prdn_percent, p.bits_per_value, p.cr)]
            line += f" {prd[0]:>7.2f} {prd[1]:>7.2f} {prd[2]:>7.3f} {prd[3]:>7.2f}"
        if img:
            line += f" {p.bpp if p.bpp is not None else float('nan'):>7.3f}"
        if p.subset:
            line += f"   [{p.subset}]"
        lines.append(line)
    return "\n".join(lines)


def _rate(p: Point, img: bool) -> float:
    """The plot's x: bits per pixel for images, else bytes per sample."""
    return p.bpp if img and p.bpp is not None else p.bytes_per_sample


def plot(points: list[Point], path: Path, title: str) -> Path | None:
    """PSNR vs bytes per sample (log x), next to the JSON; skipped (None) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install -e '.[dev]')", file=sys.stderr)
        return None
    img = any(p.bpp is not None for p in points)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"latentwire": ("C3", "o"), "pca": ("C2", "s"), "dct": ("C2", "D"), "wavelet": ("C4", "P"),
              "webp": ("C0", "^"), "jpeg": ("C1", "v"), "avif": ("C5", "<"), "jpegxl": ("C6", ">"),
              "jpeg-ls": ("C8", "d")}
    ecg = any(p.prdn_percent is not None for p in points)
    series: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        if p.lossless or (p.codec == "pca" and not p.pareto) or p.subset:
            continue
        kind = "target PRDN" if p.target_prdn is not None else (p.mode or "")
        series.setdefault((p.codec, kind), []).append(p)
    for (name, mode), pts in sorted(series.items()):
        pts.sort(key=lambda p: p.bytes_per_sample)
        x = [_rate(p, img) for p in pts]
        y = [math.nan if p.prdn_percent is None else p.prdn_percent for p in pts] if ecg else [p.psnr_db for p in pts]
        color, marker = styles.get(name, ("C7", "x"))
        label = name + (f" ({mode})" if mode else "") + (" front" if name == "pca" else "")
        ax.plot(x, y, marker=marker, color=color, markersize=4, label=label,
                linestyle="--" if mode in ("frame", "target PRDN") else "-", alpha=0.6 if mode == "frame" else 1.0)
    lossless = sorted((p for p in points if p.lossless and p.subset is None and (img or p.mode != "frame")),
                      key=lambda p: _rate(p, img))
    for p in lossless:  # one line for latentwire's; the rest in a box, so the labels do not pile up
        if p.codec == "latentwire":
            ax.axvline(_rate(p, img), color="C3", linewidth=0.8, linestyle=":")
    if lossless:
        unit = "bpp" if img else "B"
        text = "lossless:\n" + "\n".join(
            f"{p.codec} {p.setting if 'lossless' not in p.setting else p.setting.replace('lossless', '').strip()}"
            f"  {p.bpp if img else p.bytes_per_sample:.2f} {unit}" for p in lossless)
        # the corner the curves leave free: PSNR curves rise to the upper right, PRDN curves fall to the lower right
        ax.text(0.99, 0.98 if ecg else 0.02, text, transform=ax.transAxes, fontsize=6, ha="right",
                va="top" if ecg else "bottom", family="monospace",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel" if img else "bytes per sample (as sent)")
    if ecg:
        ax.set_yscale("log")
        ax.set_ylabel("PRDN (%), lower is better")
    else:
        ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reuse_baselines(path: Path, meta: dict[str, Any]) -> list[Point]:
    """The classical codecs' points of an earlier run on the same samples (they do not depend on
    the bundle), so re-measuring a new bundle does not spend CPU minutes on WebP again."""
    doc = json.loads(path.read_text())
    old = doc["meta"]

    def samples(d: dict[str, Any] | None) -> dict[str, Any]:  # what identifies the samples, not the fits
        out = {k: v for k, v in (d or {}).items() if k not in ("pca_fit", "baseline_fit", "dct_fit")}
        if "folder" in out:  # the same folder, however it was spelled
            out["folder"] = str(Path(out["folder"]).resolve())
        return out

    # keys one run's layout has and the other's lacks (an older file) are not compared, but the
    # folder and the sample count always are
    a, b = samples(old.get("data")), samples(meta.get("data"))
    shared = (a.keys() & b.keys()) | {"folder", "n_samples"}
    if old["dataset"] != meta["dataset"] or any(a.get(k) != b.get(k) for k in shared):
        raise InputError(f"{path} was measured on other samples ({old.get('data')}); run the baselines again")
    meta["baselines_from"] = {"file": str(path), "date": old["date"], "command": old["command"],
                              "git_commit": old.get("git_commit")}
    return [Point.from_dict(p) for p in doc["points"] if p["codec"] != "latentwire"]


