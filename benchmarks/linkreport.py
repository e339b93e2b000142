"""The link benchmark's report: the console table, the issue's target checks, the plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TARGET_KBIT = 1000.0  # the issue's targets are stated at 1 Mbit/s
FILL = 0.9  # delivered frames/s >= FILL x link rate / bytes on the wire per frame
OVER_WEBP = 3.0  # and >= OVER_WEBP x WebP's at equal PSNR


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    for r in rows:
        print(f"{r['link_kbit']:>7g} kbit/s  {r['codec']:<10} {r['setting']:<42} "
              f"{_f(r['frames_per_s'], ',.0f'):>8} f/s {_f(r['bytes_per_frame'], '.1f'):>7} B/f "
              f"(link {_f(r.get('link_bytes_per_frame'), '.1f')}) util {_f(r.get('link_utilization'), '.2f')}  "
              f"p50 {_f(r['p50_ms'], '.0f')} p99 {_f(r['p99_ms'], '.0f')} ms"
              f"{'  ERR ' + str(r['errors']) if r['errors'] else ''}", flush=True)


def targets(rows: Sequence[dict[str, Any]], slow: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    at = [r for r in rows if r["link_kbit"] == TARGET_KBIT and not r["errors"]]
    for r in [r for r in at if r["codec"] == "latentwire"]:
        fps, cap = r["frames_per_s"], r["capacity_frames_per_s"]
        out.append({"target": f"latentwire {r['setting']} at 1 Mbit/s: frames/s >= {FILL} x link rate / bytes on the "
                              "wire per frame",
                    "measured": f"{fps:,.0f} frames/s at {r['bytes_per_frame']:.2f} B/frame: {fps / cap:.3f} x "
                                f"{cap:,.0f}" if fps and cap else "no figure",
                    "pass": bool(fps and cap and fps >= FILL * cap)})
        webp = next((w for w in at if w["codec"] == "webp" and r["setting"] in w.get("matched_to", [])), None)
        if webp is None or not webp["frames_per_s"]:
            out.append({"target": f"latentwire {r['setting']} at 1 Mbit/s: >= {OVER_WEBP:g}x WebP's frames/s at "
                                  "equal PSNR", "measured": "no WebP row", "pass": None})
            continue
        ratio = fps / webp["frames_per_s"] if fps else 0.0
        out.append({"target": f"latentwire {r['setting']} at 1 Mbit/s: >= {OVER_WEBP:g}x WebP's frames/s at equal PSNR",
                    "measured": f"{ratio:.1f}x ({fps:,.0f} vs {webp['frames_per_s']:,.0f} frames/s; "
                                f"{r['psnr_db']:.2f} dB vs WebP {webp['setting'].split(',')[0]} "
                                f"{webp['psnr_db']:.2f} dB)",
                    "pass": ratio >= OVER_WEBP})
    if not any(r["codec"] == "latentwire" for r in at):
        out.append({"target": "latentwire at 1 Mbit/s", "measured": "not measured (no 1000 kbit/s latentwire row)",
                    "pass": None})
    if slow is not None:
        out.append({"target": "a subscriber behind a link slower than the stream keeps the server's memory bounded",
                    "measured": f"{slow['published_mb']:.0f} MB published at {slow['stream_over_link']:.0f}x the "
                                f"{slow['link_kbit']:g} kbit/s link; server RSS +{slow['server_rss_growth_mb']:.1f} MB "
                                f"(bound {slow['bound_mb']:.0f} MB); subscriber {slow['subscriber_frames']} frames, "
                                f"{slow['subscriber_lost']} lost, {slow['subscriber_duplicated']} duplicated",
                    "pass": slow["pass"]})
    return out


def plot(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["frames_per_s"]:
            label = f"{r['codec']} {r['setting'].split(' (')[0]}"
            series.setdefault(label, []).append((r["link_kbit"], r["frames_per_s"]))
    for label, pts in series.items():
        pts.sort()
        style = "-o" if label.startswith("latentwire") else ("--s" if label.startswith("raw") else ":^")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link rate (kbit/s, tbf both directions)")
    ax.set_ylabel("MNIST digits delivered and decoded per second")
    ax.set_title("Frames through a thin link: latentwire (gRPC server) vs baselines (plain TCP)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
