"""The operating points of the rate-distortion benchmark: how latentwire and every baseline are
measured (bytes as sent, decoded again, scored on what the receiver gets) and the job list that
runs them under one progress bar."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import zstandard
from tqdm import tqdm

from latentwire.codec import baselines
from latentwire.codec.bundle import QualityLevel
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.payload import PayloadReader
from latentwire.codec.coding.transform import MODE_ALONE
from latentwire.codec.errors import InputError
from latentwire.codec.normalization import psnr_db

from .. import bdrate
from ..dct import DctCodec
from ..pca import PcaBasis, PcaCodec
from ..wavelet import WaveletCodec


@dataclass
class Point:
    """One operating point of one codec over the whole benchmark set."""

    codec: str
    setting: str
    bytes_per_sample: float
    psnr_db: float
    payload_bytes_per_sample: float | None = None  # latentwire: range-coded payload only (no framing)
    mode: str | None = None  # latentwire/pca: "packet<N>" (N frames per packet) or "frame" (1 per packet)
    quality: int | None = None
    max_error: int | None = None
    max_abs_error: float | None = None
    prd_percent: float | None = None
    prdn_percent: float | None = None
    cr: float | None = None
    bpp: float | None = None
    k: int | None = None
    step: float | None = None
    pareto: bool | None = None
    n_samples: int | None = None
    subset: str | None = None  # set when the point covers part of the benchmark set: says which part
    bits_per_value: float | None = None  # ECG: bits per sample (per lead and time step), all bytes counted
    target_prdn: float | None = None  # latentwire rate control: the per-window PRDN asked for
    seconds: float | None = None
    encode_seconds: float | None = None  # latentwire: of ``seconds``, in Codec.encode / Codec.decode
    decode_seconds: float | None = None
    # latentwire transform levels: windows sent without their latent; max-error levels: frames sent
    # classically (no latent, codec/coding/residual_classic.py)
    alone_share: float | None = None

    @property
    def lossless(self) -> bool:
        return math.isinf(self.psnr_db)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        d = dict(d)
        if d.pop("lossless", False):
            d["psnr_db"] = math.inf
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.lossless:  # JSON has no Infinity: lossless points say so instead
            d["psnr_db"] = None
            d["lossless"] = True
        return d


@dataclass(frozen=True)
class Scorer:
    """How a dataset turns (raw, decoded, bytes) into figures."""

    peak: float
    prd_baseline: float | None = None  # ECG: the ADC zero
    bits_per_value: float | None = None  # ECG: ADC resolution, for CR

    def score(self, raw: np.ndarray, decoded: np.ndarray, total_bytes: int) -> dict[str, Any]:
        n = len(raw)
        out: dict[str, Any] = {
            "bytes_per_sample": total_bytes / n,
            "psnr_db": psnr_db(raw, decoded, self.peak),
            "max_abs_error": float(np.max(np.abs(raw.astype(np.float64) - decoded.astype(np.float64)))),
            "n_samples": n,
        }
        if self.prd_baseline is not None:
            x = raw.astype(np.float64)
            err = float(np.sum((x - decoded.astype(np.float64)) ** 2))
            out["prd_percent"] = 100.0 * math.sqrt(err / float(np.sum((x - self.prd_baseline) ** 2)))
            # PRDN: against each window's own mean, so a DC offset of the record cannot flatter it
            centred = x - x.mean(axis=-1, keepdims=True)
            out["prdn_percent"] = 100.0 * math.sqrt(err / float(np.sum(centred**2)))
        if self.bits_per_value is not None:
            out["cr"] = raw[0].size * self.bits_per_value / (8.0 * total_bytes / n)
            out["bits_per_value"] = 8.0 * total_bytes / raw.size
        return out


# ------------------------------------------------------------------------------ latentwire


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def level_name(level: QualityLevel) -> str:
    """q3 (max_error=8), q0 (latent_step=4), q5 (l2, transform step 8): what the level does."""
    parts = []
    if level.latent_step != 1.0:
        parts.append(f"latent_step={level.latent_step:g}")
    if level.latent_level is not None:
        parts.append(f"l{level.latent_level}")
    if level.max_error is not None:
        parts.append(f"max_error={level.max_error}")
    if level.transform_step is not None:
        parts.append(f"transform step {level.transform_step:g}")
    return level.name + (f" ({', '.join(parts)})" if parts else "")


def latentwire_point(
    codec: Codec, raw: np.ndarray, scorer: Scorer, *, quality: int | None = None, max_error: int | None = None,
    packet_frames: int = 256, target_prdn: float | None = None, subset: str | None = None,
) -> Point:
    """Encode in packets of packet_frames, decode every packet, score what the receiver got."""
    t0 = time.perf_counter()
    decoded = np.empty_like(raw)
    total = payload = alone = 0
    spent = [0.0, 0.0]  # encode, decode
    for sl in _chunks(len(raw), packet_frames):
        t = time.perf_counter()
        packet = codec.encode(raw[sl], quality=quality, max_error=max_error, target_prdn=target_prdn)
        spent[0] += time.perf_counter() - t
        header, body = bitstream.read_packet(packet)
        total += len(packet)
        payload += len(body)
        if header.has_modes:  # windows sent alone (transform levels) or frames sent classically (residual levels)
            modes = PayloadReader(body, codec.tables).modes(header.count, residual=header.has_residual)
            alone += int((modes == MODE_ALONE).sum())
        t = time.perf_counter()
        decoded[sl] = codec.decode(packet)
        spent[1] += time.perf_counter() - t
    if max_error is not None:
        setting = f"max_error={max_error} (per-sample bound)"
    elif target_prdn is not None:
        setting = f"target PRDN {target_prdn:g}%"
    else:
        level = codec.qualities[int(quality or 0)]
        setting = level_name(level)
        max_error = level.max_error
    mode = "frame" if packet_frames == 1 else f"packet{packet_frames}"
    transform = target_prdn is not None or (quality is not None and codec.qualities[quality].transform_step is not None)
    return Point("latentwire", setting, mode=mode, quality=quality, max_error=max_error, target_prdn=target_prdn,
                 payload_bytes_per_sample=payload / len(raw), seconds=time.perf_counter() - t0, subset=subset,
                 encode_seconds=spent[0], decode_seconds=spent[1],
                 alone_share=alone / len(raw) if transform or alone else None,  # residual levels: any sent classically
                 **scorer.score(raw, decoded, total))


# ------------------------------------------------------------------------------ classical codecs


def _from_baseline(bp: baselines.BaselinePoint, raw: np.ndarray, scorer: Scorer, decoded: np.ndarray | None,
                   seconds: float) -> Point:
    if decoded is None:  # lossless
        fig = scorer.score(raw, raw, int(round(bp.bytes_per_sample * len(raw))))
        fig["bytes_per_sample"] = bp.bytes_per_sample
    else:
        fig = scorer.score(raw, decoded, int(round(bp.bytes_per_sample * len(raw))))
        fig["bytes_per_sample"] = bp.bytes_per_sample
    return Point(bp.codec, bp.setting, seconds=seconds, **fig)


def image_codec_point(raw: np.ndarray, fmt: str, quality: int | None, scorer: Scorer) -> Point:
    t0 = time.perf_counter()
    sizes = np.empty(len(raw))
    decoded = np.empty_like(raw)
    for i, sample in enumerate(raw):
        sizes[i], decoded[i] = baselines.image_roundtrip(sample, fmt, quality)
    setting = "lossless" if quality is None else f"q={quality}"
    bp = baselines.BaselinePoint(fmt, setting, float(sizes.mean()), 0.0)
    p = _from_baseline(bp, raw, scorer, decoded, time.perf_counter() - t0)
    if quality is None:
        assert math.isinf(p.psnr_db), f"{fmt} lossless did not round-trip"
    return p


def zstd_point(raw: np.ndarray, scorer: Scorer, level: int = 19) -> Point:
    t0 = time.perf_counter()
    bp = baselines.zstd_point(raw, level)
    return _from_baseline(bp, raw, scorer, None, time.perf_counter() - t0)


def delta_zstd_point(raw: np.ndarray, scorer: Scorer, level: int = 19) -> Point:
    """Lossless: first value + successive differences along time (int16), zstd per window.
    Differencing is the classical lossless ECG predictor; zstd codes what is left."""
    t0 = time.perf_counter()
    cctx = zstandard.ZstdCompressor(level=level)
    x = raw.astype(np.int16)
    deltas = np.concatenate([x[..., :1], np.diff(x, axis=-1)], axis=-1)
    sizes = [len(cctx.compress(np.ascontiguousarray(d).tobytes())) for d in deltas]
    assert np.array_equal(np.cumsum(deltas, axis=-1, dtype=np.int16), x)
    bp = baselines.BaselinePoint("delta+zstd", f"level={level}", float(np.mean(sizes)), float("inf"))
    return _from_baseline(bp, raw, scorer, None, time.perf_counter() - t0)


def raw_point(raw: np.ndarray, scorer: Scorer) -> Point:
    bp = baselines.raw_point(raw)
    return _from_baseline(bp, raw, scorer, None, 0.0)


# ------------------------------------------------------------------------------ PCA


def _packet_round_trip(codec: PcaCodec | DctCodec | WaveletCodec, raw: np.ndarray,
                       packet_frames: int) -> tuple[np.ndarray, int]:
    """A baseline's packets of packet_frames frames, decoded back: (decoded samples, total bytes)."""
    decoded = np.empty_like(raw)
    total = 0
    for sl in _chunks(len(raw), packet_frames):
        packet = codec.encode(raw[sl])
        total += len(packet)
        decoded[sl] = codec.decode(packet, raw.dtype)
    return decoded, total


def pca_points(basis: PcaBasis, train_raw: np.ndarray, raw: np.ndarray, scorer: Scorer, ks: Sequence[int],
               steps: Sequence[float], packet_frames: int) -> list[Point]:
    """Every (k, step) pair, packets of packet_frames, decoded back; the Pareto front is flagged."""
    kmax = max(ks)
    train_coef = basis.project(train_raw, kmax)
    points = []
    for k in ks:
        for step in steps:
            t0 = time.perf_counter()
            decoded, total = _packet_round_trip(PcaCodec(basis, k, step, train_coef), raw, packet_frames)
            points.append(Point("pca", f"k={k} step={step:g}", mode=f"packet{packet_frames}", k=k, step=step,
                                seconds=time.perf_counter() - t0, **scorer.score(raw, decoded, total)))
    fr, fp = bdrate.pareto_front([p.bytes_per_sample for p in points], [p.psnr_db for p in points])
    front = set(zip(fr.tolist(), fp.tolist(), strict=True))
    for p in points:
        p.pareto = (p.bytes_per_sample, p.psnr_db) in front
    return points


def dct_points(train_raw: np.ndarray, raw: np.ndarray, scorer: Scorer, steps: Sequence[float], offset: float,
               raw_min: float, raw_max: float, packet_frames: int) -> list[Point]:
    """DCT transform coding at every step (tables fit on train_raw), packets of packet_frames."""
    points = []
    for step in steps:
        t0 = time.perf_counter()
        dc = DctCodec(raw.shape[-1], step, train_raw, offset, raw_min, raw_max)
        decoded, total = _packet_round_trip(dc, raw, packet_frames)
        points.append(Point("dct", f"step={step:g}", mode=f"packet{packet_frames}", step=step,
                            seconds=time.perf_counter() - t0, **scorer.score(raw, decoded, total)))
    return points


def wavelet_points(train_raw: np.ndarray, raw: np.ndarray, scorer: Scorer, steps: Sequence[float], offset: float,
                   raw_min: float, raw_max: float, packet_frames: int) -> list[Point]:
    """CDF 9/7 wavelet coding at every step (tables fit on train_raw), packets of packet_frames."""
    points = []
    for step in steps:
        t0 = time.perf_counter()
        wc = WaveletCodec(raw.shape[-1], step, train_raw, offset, raw_min, raw_max)
        decoded, total = _packet_round_trip(wc, raw, packet_frames)
        points.append(Point("wavelet", f"bior4.4 step={step:g}", mode=f"packet{packet_frames}", step=step,
                            seconds=time.perf_counter() - t0, **scorer.score(raw, decoded, total)))
    return points


# ------------------------------------------------------------------------------ jobs


@dataclass
class Job:
    label: str
    run: Callable[[], list[Point]]
    weight: int = 1


def run_jobs(jobs: list[Job], show: bool = True) -> list[Point]:
    """Run the work under one progress bar (weighted by rough cost)."""
    points: list[Point] = []
    with tqdm(total=sum(j.weight for j in jobs), unit="step", disable=not show, file=sys.stderr) as bar:
        for job in jobs:
            bar.set_description(job.label)
            points.extend(job.run())
            bar.update(job.weight)
    return points


def measured_levels(codec: Codec, levels: Sequence[int] | None) -> list[QualityLevel]:
    """The ladder levels a run measures: all of them, or the indices asked for (--levels)."""
    if levels is None:
        return list(codec.qualities)
    if any(not 0 <= i < len(codec.qualities) for i in levels):
        raise InputError(f"--levels {','.join(map(str, levels))}: the ladder has levels 0..{len(codec.qualities) - 1}")
    return [codec.qualities[i] for i in levels]


def latentwire_jobs(codec: Codec, raw: np.ndarray, scorer: Scorer, batch: int, max_errors: Sequence[int],
                    compact_levels: int, compact_limit: int | None,
                    target_prdns: Sequence[float] = (), levels: Sequence[int] | None = None) -> list[Job]:
    jobs = []
    for q in measured_levels(codec, levels):
        jobs.append(Job(f"latentwire {q.name}", partial(lambda q: [latentwire_point(
            codec, raw, scorer, quality=q.index, packet_frames=batch)], q), 2))
    if codec.tables.residual is not None:
        for e in max_errors:
            jobs.append(Job(f"latentwire max_error={e}", partial(lambda e: [latentwire_point(
                codec, raw, scorer, max_error=e, packet_frames=batch)], e), 2))
    if codec.tables.transform is not None:
        for t in target_prdns:
            jobs.append(Job(f"latentwire target PRDN {t:g}%", partial(lambda t: [latentwire_point(
                codec, raw, scorer, target_prdn=t, packet_frames=batch)], t), 3))
    sub = raw if compact_limit is None else raw[:compact_limit]
    subset = None if len(sub) == len(raw) else f"first {len(sub)} of {len(raw)} samples"
    for q in codec.qualities[:compact_levels]:
        jobs.append(Job(f"latentwire {q.name} per-frame", partial(lambda q: [latentwire_point(
            codec, sub, scorer, quality=q.index, packet_frames=1, subset=subset)], q), 4))
    return jobs
