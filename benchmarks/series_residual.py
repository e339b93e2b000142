"""Max-error residual levels of the ECG bundle before and after a change of its residual coding
(series-context, then its classical windows), on the held-out MIT-BIH records 117-124: whole
packets of `--packet` windows (bytes as sent, header, latents and CRC included; every packet
decoded whole and its max error checked) in bits per sample, how many windows went classical,
the latent mode's residual stage's own encode/decode time, and FLAC on the same windows.

The two bundles share the encoder and exact network (only entropy.json differs), so the exact
prediction of every window is computed once and both code against it. Usage:

    python -m benchmarks.series_residual --before /tmp/ecg-before/codec/assets/ecg-conv1d \\
        --after codec/assets/ecg-conv1d --data ../shared/data/mitdb --out benchmarks/results/ecg-residual-heldout.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info, write_result
from benchmarks.exact import ECG_HELDOUT
from benchmarks.rd.codecs import flac_points
from benchmarks.rd.points import Scorer
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.coder import StreamDecoder, StreamEncoder
from latentwire.codec.coding.payload import PayloadReader
from latentwire.codec.coding.residual_classic import MODE_CLASSIC
from latentwire.codec.residual_levels import encode_residual_packet
from latentwire.codec.sources import load_ecg_windows

MAX_ERRORS = (0, 1, 2, 4)


def _residual_seconds(codec: Codec, x: np.ndarray, pred: np.ndarray, d: int) -> tuple[float, float, bool]:
    """The residual stage alone (the bundle's choice of coding for d): encode and decode seconds,
    and whether it decoded the encoder's reconstruction."""
    t = codec.tables
    assert t.residual is not None
    coding = t.residual_coding if t.residual_coding is not None and t.residual_coding.covers(d) else None
    ctx = t.residual_context if coding is None else None
    enc = StreamEncoder()
    t0 = time.perf_counter()
    if coding is not None:
        info = coding.write(enc, t.residual, x, pred, d)
    elif ctx is not None:
        info = ctx.write(enc, t.residual, x, pred, d)
    else:
        info = t.residual.write(enc, x, pred, d)
    data = enc.finish()
    t1 = time.perf_counter()
    dec = StreamDecoder(data)
    if coding is not None:
        back = coding.read(dec, t.residual, pred, d)
    elif ctx is not None:
        back = ctx.read(dec, t.residual, pred, d)
    else:
        back = t.residual.read(dec, pred, d)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, bool(np.array_equal(back, info.recon))


def _flac_bits(x: np.ndarray, groups: np.ndarray, fs: int, peak: float) -> dict[str, float]:
    """FLAC on the same windows, bits per sample, as benchmarks.rd measures it: each record's
    selected windows joined in order (whole records when the stride is 1) and each window alone."""
    points = flac_points(x, groups, Scorer(peak=peak, bits_per_value=11.0), fs)
    assert all(pt.lossless and pt.bits_per_value is not None for pt in points)
    joined, alone = (round(float(pt.bits_per_value or 0.0), 4) for pt in points)
    return {"records_joined": joined, "per_window": alone}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--packet", type=int, default=256)
    ap.add_argument("--stride", type=int, default=1, help="every k-th window only (a shared machine)")
    ap.add_argument("--limit", type=int, default=0, help="first N windows only (0: all)")
    ap.add_argument("--max-errors", default=",".join(map(str, MAX_ERRORS)))
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    windows = load_ecg_windows(Path(args.data), records=ECG_HELDOUT)
    assert windows.groups is not None  # load_ecg_windows groups by record
    x, groups = windows.samples[:: args.stride], windows.groups[:: args.stride]
    x, groups = (x[: args.limit], groups[: args.limit]) if args.limit else (x, groups)
    flac = _flac_bits(x, groups, int(windows.meta["fs"]), float(windows.normalization.peak))
    print(f"FLAC in the same run: {flac}", flush=True)
    codecs = {name: Codec.load(path, threads=1) for name, path in (("before", args.before), ("after", args.after))}
    ref = codecs["after"]
    t0 = time.perf_counter()
    _, _, grid = ref._level(None, 0)
    parts = []
    for i in range(0, len(x), args.packet):
        raw = x[i : i + args.packet]
        sym = ref.quantize_latents(ref._encode_model(ref.normalization.to_model(raw)), grid)
        parts.append((raw, sym, ref._residual_prediction(sym, grid, raw.shape[1:])))
    print(f"{len(x)} windows, latents and exact prediction in {time.perf_counter() - t0:.0f} s", flush=True)
    samples = x[0].size
    rows = []
    for d in (int(v) for v in args.max_errors.split(",")):
        row: dict[str, object] = {"max_error": d}
        for name, codec in codecs.items():
            q, bound, g = codec._level(None, d)
            n_bytes, classical, worst = 0, 0, 0
            for raw, sym, pred in parts:
                assert isinstance(sym, np.ndarray)
                packet = encode_residual_packet(codec, raw, sym, pred, q, int(bound or 0), g, True)
                n_bytes += len(packet)
                worst = max(worst, int(np.abs(codec.decode(packet).astype(np.int64) - raw).max()))
                if codec.header(packet).has_modes:  # what the packet says it sent, not a second choice
                    modes = PayloadReader(bitstream.read_packet(packet)[1], codec.tables).modes(len(raw), residual=True)
                    classical += int((modes == MODE_CLASSIC).sum())
            if worst > d:
                raise AssertionError(f"{name}: max error {d} broken ({worst}) by a whole packet's decode")
            enc_s = dec_s = 0.0
            ok = True
            for raw, _, pred in parts:
                e, dd, same = _residual_seconds(codec, raw, pred, d)
                enc_s, dec_s, ok = enc_s + e, dec_s + dd, ok and same
            row[name] = {"bits_per_sample": round(8 * n_bytes / (len(x) * samples), 4),
                         "bytes_per_window": round(n_bytes / len(x), 2),
                         "residual_encode_ms_per_window": round(1000 * enc_s / len(x), 3),
                         "residual_decode_ms_per_window": round(1000 * dec_s / len(x), 3), "decodes": ok,
                         "classical_windows": classical}
        print(row, flush=True)
        rows.append(row)
    if args.out:
        write_result(args.out, {"benchmark": "series_residual", "records": ECG_HELDOUT, "windows": len(x),
                                "stride": args.stride, "packet": args.packet, "samples_per_window": samples,
                                "levels": rows, "flac_bits_per_sample": flac,
                                "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
