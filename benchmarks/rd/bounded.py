"""The lossless and near-lossless table of the rate-distortion benchmark: for each error bound (0 =
lossless, then the NEAR bounds), every codec's bytes, bits per pixel / sample and the max abs error
measured on what it decoded, next to latentwire's levels at the same bound; and issue 24's targets
against the baselines that ran."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from latentwire.codec.codec import Codec

from .codecs import NEAR_LOSSLESS
from .points import Point, measured_levels


@dataclass(frozen=True)
class BoundedRow:
    """One codec at one error bound over the whole benchmark set."""

    bound: int  # max abs error allowed per sample (channel); 0 = lossless
    codec: str
    setting: str
    bytes_per_sample: float
    bits: float  # photos: bits per pixel (all channels); digits: per pixel; ECG: per sample of one lead
    max_abs_error: float  # measured on the decoded samples

    @property
    def within_bound(self) -> bool:
        return self.max_abs_error <= self.bound

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_bound": self.within_bound}


def latentwire_bounds(codec: Codec, max_errors: Sequence[int], bounds: Sequence[int],
                      levels: Sequence[int] | None = None) -> list[int]:
    """max_errors plus the bounds (0: lossless, then ``bounds``) that neither they nor a measured ladder
    level cover: the table needs latentwire at every bound."""
    have = set(max_errors) | {q.max_error for q in measured_levels(codec, levels) if q.max_error is not None}
    return list(max_errors) + [b for b in (0, *bounds) if b not in have]


def bounded_rows(points: list[Point], bounds: Sequence[int], values_per_sample: int | None,
                 lw_mode: str | None) -> list[BoundedRow]:
    """Lossless rows, then each bound's: every baseline row coded at that bound, and latentwire's
    cheapest point that asked for it (a ladder level or a max_error point) in the measured mode.
    Bits: the point's bits per pixel (photos), else 8 * bytes / values_per_sample."""

    def row(p: Point, bound: int) -> BoundedRow:
        if p.bpp is not None:
            bits = p.bpp
        elif values_per_sample:
            bits = 8.0 * p.bytes_per_sample / values_per_sample
        else:
            raise ValueError(f"{p.codec} {p.setting}: no bits per pixel and no values_per_sample to derive them")
        return BoundedRow(bound, p.codec, p.setting, p.bytes_per_sample, bits, float(p.max_abs_error or 0.0))

    def lw(p: Point) -> bool:
        return (p.codec == "latentwire" and p.subset is None and p.target_prdn is None
                and (lw_mode is None or p.mode == lw_mode))

    rows: list[BoundedRow] = []
    for bound in (0, *bounds):
        at = [p for p in points if (p.lossless if bound == 0 else p.max_error == bound and not p.lossless)]
        mine = min((p for p in at if lw(p)), key=lambda p: p.bytes_per_sample, default=None)
        if mine is not None:
            rows.append(row(mine, bound))
        theirs = [p for p in at if p.codec not in ("latentwire", "raw") and (bound == 0 or p.mode == NEAR_LOSSLESS)]
        rows += sorted((row(p, bound) for p in theirs), key=lambda r: r.bits)
    return rows


def format_bounded(rows: list[BoundedRow], unit: str) -> str:
    head = f"{'bound':>5} {'codec':<11} {'setting':<44} {'B/sample':>10} {unit:>11} {'max err':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        flag = "" if r.within_bound else "   OVER THE BOUND"
        lines.append(f"{r.bound:>5} {r.codec:<11} {r.setting[:44]:<44} {r.bytes_per_sample:>10.2f} {r.bits:>11.3f} "
                     f"{r.max_abs_error:>7g}{flag}")
    return "\n".join(lines)


def _find(rows: list[BoundedRow], bound: int, codec: str, setting: str | None = None) -> BoundedRow | None:
    return next((r for r in rows if r.bound == bound and r.codec == codec
                 and (setting is None or r.setting.startswith(setting))), None)


def _vs(target: str, mine: BoundedRow | None, theirs: BoundedRow | None, ratio: float, unit: str) -> dict[str, Any]:
    if mine is None or theirs is None:
        why = "no latentwire row" if mine is None else "baseline did not run"
        return {"target": target, "measured": f"n/a ({why})", "met": False}
    return {"target": target,
            "measured": f"latentwire {mine.bits:.3f} {unit} ({mine.setting}) vs {theirs.codec} {theirs.setting} "
                        f"{theirs.bits:.3f}: {mine.bits / theirs.bits:.3f}x",
            "met": mine.bits <= ratio * theirs.bits and mine.within_bound}


def targets_bounded(dataset: str, rows: list[BoundedRow], bounds: Sequence[int]) -> list[dict[str, Any]]:
    """Issue 24's targets, each against a baseline of the same run (n/a, not met, when one did not run)."""
    out = []
    if dataset == "bsds":
        mine = _find(rows, 0, "latentwire")
        out.append(_vs("lossless <= WebP lossless", mine, _find(rows, 0, "webp"), 1.0, "bpp"))
        out.append(_vs("lossless <= JPEG XL lossless (stretch)", mine, _find(rows, 0, "jpegxl"), 1.0, "bpp"))
        for b in bounds:
            out.append(_vs(f"max error {b} <= JPEG-LS NEAR={b}", _find(rows, b, "latentwire"),
                           _find(rows, b, "jpeg-ls"), 1.0, "bpp"))
    elif dataset == "mnist":
        out.append(_vs("lossless <= 0.8x xz on the same batches", _find(rows, 0, "latentwire"),
                       _find(rows, 0, "xz"), 0.8, "bits/pixel"))
    elif dataset == "ecg":
        mine = _find(rows, 0, "latentwire")
        out.append(_vs("lossless <= 0.85x FLAC on the same whole records", mine,
                       _find(rows, 0, "flac", "whole records"), 0.85, "bits/sample"))
        out.append({"target": "lossless <= 3.5 bits/sample",
                    "measured": "no latentwire lossless row" if mine is None else f"{mine.bits:.3f} bits/sample",
                    "met": mine is not None and mine.bits <= 3.5 and mine.within_bound})
    return out
