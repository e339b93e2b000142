"""Codec throughput: how much of onnxruntime's speed survives the full encode / decode path.

    python -m benchmarks.throughput [--bundle DIR] [--batches 1,64,256,1024] [--repeat 5]
                                    [--quality Q] [--threads T] [--min-time 0.25]
                                    [--single-frames 256] [--out benchmarks/results/throughput.json]

Why ratios: the graphs are the part nobody in this project can make cheaper; everything around
them (validation, normalization, quantization, entropy coding, packet framing, the residual layer)
is ours. So each full path is timed against the bare onnxruntime session on the same inputs, in
the same run, interleaved (bare, full, bare, full, ...) and repeated; the ratio is taken per
repeat and its median reported. On a shared, busy machine the absolute samples/s swing by 2x
between runs; the interleaved ratios hold still.

Rows per batch size:
  * enc_bare   Encoder.encode on model-domain float32 (what onnxruntime alone costs)
  * enc_q0     Codec.encode(raw, quality=L) at the latent-only level L on the trained integer grid
               (latent_step 1; the first latent-only level otherwise): validate + normalize +
               encoder + quantize + code + packet. Named q0 for "no residual", whatever L's index
  * enc_res    Codec.encode(raw, quality=Q) with a residual level: also runs decoder.onnx (the
               sender must compute the receiver's prediction) and codes ~one symbol per raw value
  * dec_bare   Decoder.decode on the integer latents
  * dec_q0     Codec.decode of that latent-only packet
  * dec_res    Codec.decode of the residual packet
  * ort_spin / ort_nospin  encoder.onnx on two raw sessions (no validation), one spin-waiting
               (onnxruntime's default), one with ``session.intra_op.allow_spinning = 0`` as
               runtime.py now sets: what turning spinning off buys (or costs) on this machine
Ratios: full/bare throughput. A residual-level encode is reported against the bare encoder AND
against bare encoder + bare decoder (both graphs are the fair floor, as the sender runs both).

Single frames (benchmarks/single_frame.py): the same ops one frame per call beside WebP, JPEG and
zstd on the same frames; and each batch row's residual-level frames/s over WebP's single-frame
frames/s ("vs_webp": what a sender gains by batching instead of coding each frame as an image).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from benchmarks.common import git_commit, machine_info, version
from benchmarks.single_frame import bench_single, print_single
from latentwire.codec.bundle import DECODER, ENCODER, Bundle
from latentwire.codec.codec import Codec, default_bundle_path
from latentwire.codec.coding.quantize import quantize
from latentwire.codec.errors import InputError

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "throughput.json"
MNIST_SAMPLE = Path(__file__).resolve().parents[1] / "codec" / "assets" / "mnist_test_sample.npz"
ECG_SAMPLE = MNIST_SAMPLE.parent / "ecg_heldout_sample.npz"  # 2-lead MIT-BIH windows never trained on
PHOTO_SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "bsds"  # whole BSDS500 photos
OPS = ("enc_bare", "enc_q0", "enc_res", "dec_bare", "dec_q0", "dec_res", "ort_spin", "ort_nospin")


# ------------------------------------------------------------------------------------ inputs


def fallback_bundle() -> Path:
    """The shipped bundle is produced by a long training run; until it exists, train the same
    architecture (784-512-256-32) briefly on the shipped digits so the graphs cost what the real
    ones cost. Weights quality does not matter for throughput; the shape does."""
    work = Path(tempfile.gettempdir()) / "latentwire-throughput-bundle"
    bundle = work / "bundle"
    if (bundle / "entropy.json").is_file():
        return bundle
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError(
            "no bundle at codec/assets/mnist-dense and torch is not installed to train a stand-in: "
            "pass --bundle DIR or install the [train] extra"
        ) from exc
    from latentwire.codec.calibrate import calibrate
    from latentwire.codec.sources import load_mnist, sample_data_root
    from latentwire.codec.training import export, train

    torch.set_num_threads(1)
    folder = sample_data_root() / "mnist"
    print(f"no shipped bundle: training a stand-in 784-512-256-32 dense bundle in {work}", file=sys.stderr)
    assert train.main([
        "--data", str(folder), "--family", "dense", "--layers", "512,256", "--code-size", "32",
        "--epochs", "3", "--batch-size", "64", "--lr", "3e-3", "--rate-weight", "0.01",
        "--out", str(work / "run"), "--no-progress", "--threads", "1",
    ]) == 0
    assert export.main([str(work / "run"), "--out", str(bundle), "--name", "throughput-standin"]) == 0
    calibrate(bundle, load_mnist(folder, split="train"), threads=1)
    return bundle


def raw_batch(codec: Codec, n: int) -> np.ndarray:
    """n real samples (cycled) when the bundle takes MNIST digits or 2-lead ECG windows (the
    shipped held-out ones), else seeded values in range."""
    shape = tuple(codec.sample_shape)
    for path, fits in ((MNIST_SAMPLE, shape == (1, 28, 28) and codec.raw_dtype == np.uint8),
                       (ECG_SAMPLE, shape == (2, None) and codec.raw_dtype == np.int16)):
        if fits and path.is_file():
            with np.load(path) as z:
                real = z["samples"]
            return np.ascontiguousarray(np.resize(real, (n, *real.shape[1:])))
    if any(d is None for d in shape):
        raise InputError(f"bundle sample shape {shape} has free dims; this benchmark needs fixed ones")
    norm = codec.normalization
    rng = np.random.default_rng(0)
    x = rng.uniform(norm.raw_min, norm.raw_max, size=(n, *(int(d) for d in shape if d is not None)))
    return (np.rint(x) if norm.is_integer else x).astype(codec.raw_dtype)


def single_frames(codec: Codec, n: int) -> list[np.ndarray]:
    """n frames of shape (1, *sample_shape): real samples as raw_batch finds them, or for an
    any-size RGB bundle the whole photos shipped with the tests (each its own size)."""
    if tuple(codec.sample_shape) == (3, None, None) and codec.raw_dtype == np.uint8:
        from PIL import Image

        photos = [np.moveaxis(np.asarray(Image.open(p).convert("RGB")), -1, 0)[None]
                  for p in sorted(PHOTO_SAMPLE.glob("*.png"))]
        return [np.ascontiguousarray(photos[i % len(photos)]) for i in range(min(n, len(photos)))]
    raw = raw_batch(codec, n)
    return [raw[i : i + 1] for i in range(n)]


# ------------------------------------------------------------------------------------ timing


def time_call(fn: Callable[[], Any], min_time: float) -> float:
    """Seconds per call: repeat fn until min_time has passed (at least once)."""
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def raw_session(bundle: Bundle, threads: int | None, spinning: bool, graph: str = ENCODER) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(bundle.file(graph)), sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass
class BatchResult:
    batch: int
    raw_bytes_per_sample: int
    packet_bytes_per_sample: dict[str, float]
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per repeat, per call
    median_s: dict[str, float] = field(default_factory=dict)
    samples_per_s: dict[str, float] = field(default_factory=dict)
    raw_mb_per_s: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # medians of per-repeat ratios
    ratio_spread: dict[str, list[float]] = field(default_factory=dict)  # [min, max] over repeats
    # residual-level frames/s at this batch over WebP's one-frame-per-call frames/s (same run)
    vs_single_webp: dict[str, float] = field(default_factory=dict)


RATIOS: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (full op, bare ops whose times add up to the floor)
    "enc_q0/enc_bare": ("enc_q0", ("enc_bare",)),
    "enc_res/enc_bare": ("enc_res", ("enc_bare",)),
    "enc_res/(enc_bare+dec_bare)": ("enc_res", ("enc_bare", "dec_bare")),
    "dec_q0/dec_bare": ("dec_q0", ("dec_bare",)),
    "dec_res/dec_bare": ("dec_res", ("dec_bare",)),
    "ort_nospin/ort_spin": ("ort_nospin", ("ort_spin",)),
}


def latent_only_level(codec: Codec) -> int:
    """The latent-only level on the trained grid (what every bundle has), else the first latent-only one."""
    levels = codec.qualities
    plain = [q.index for q in levels if q.max_error is None]
    if not plain:
        raise InputError("this bundle has no latent-only quality level")
    return next((i for i in plain if levels[i].latent_step == 1.0 and levels[i].latent_level is None), plain[-1])


def bench_batch(codec: Codec, spin: dict[str, ort.InferenceSession], batch: int, quality: int, repeat: int,
                min_time: float, bar: tqdm, latent: int = 0) -> BatchResult:
    raw = raw_batch(codec, batch)
    x = codec.normalization.to_model(raw)
    y_hat = quantize(codec.encoder.encode(x)).astype(np.float32)
    out_size = codec._out_size(raw.shape[1:])
    p0 = codec.encode(raw, quality=latent)
    pres = codec.encode(raw, quality=quality)
    assert np.array_equal(codec.decode(p0).shape, raw.shape)
    ops: dict[str, Callable[[], Any]] = {
        "enc_bare": lambda: codec.encoder.encode(x),
        "enc_q0": lambda: codec.encode(raw, quality=latent),
        "enc_res": lambda: codec.encode(raw, quality=quality),
        "dec_bare": lambda: codec.decoder.decode(y_hat, out_size=out_size),
        "dec_q0": lambda: codec.decode(p0),
        "dec_res": lambda: codec.decode(pres),
    }
    for name, session in spin.items():
        ops[name] = partial(lambda session: session.run(["y"], {"x": x}), session)
    res = BatchResult(
        batch=batch,
        raw_bytes_per_sample=int(raw[0].nbytes),
        packet_bytes_per_sample={f"q{latent}": len(p0) / batch, f"q{quality}": len(pres) / batch},
        seconds={k: [] for k in ops},
    )
    for fn in ops.values():  # warm-up: first runs allocate arenas and caches
        fn()
    names = list(ops)
    for r in range(repeat):
        # rotate the order each repeat so no op always runs right after the same neighbour
        for name in names[r % len(names):] + names[: r % len(names)]:
            res.seconds[name].append(time_call(ops[name], min_time))
        bar.update(1)
    raw_mb = batch * res.raw_bytes_per_sample / 1e6
    for name, ts in res.seconds.items():
        med = float(np.median(ts))
        res.median_s[name] = med
        res.samples_per_s[name] = batch / med
        res.raw_mb_per_s[name] = raw_mb / med
    for rname, (full, bares) in RATIOS.items():
        if full not in res.seconds:
            continue
        per = [sum(res.seconds[b][i] for b in bares) / res.seconds[full][i] for i in range(repeat)]
        res.ratios[rname] = float(np.median(per))
        res.ratio_spread[rname] = [float(min(per)), float(max(per))]
    return res


# ------------------------------------------------------------------------------------ report


def session_settings(session: ort.InferenceSession) -> dict[str, Any]:
    opts = session.get_session_options()
    try:
        spinning = opts.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # noqa: BLE001 - onnxruntime raises when the entry was never set (its default is spinning on)
        spinning = None
    return {
        "intra_op_num_threads": opts.intra_op_num_threads,  # 0: onnxruntime picks (physical cores)
        "inter_op_num_threads": opts.inter_op_num_threads,
        "allow_spinning": spinning,
        "execution_mode": str(opts.execution_mode),
        "graph_optimization_level": str(opts.graph_optimization_level),
    }


def print_table(results: Sequence[BatchResult], quality: int) -> None:
    print(f"\n{'batch':>6} {'op':<14} {'samples/s':>11} {'raw MB/s':>9} {'ms/call':>9}")
    for r in results:
        for name in r.median_s:
            print(f"{r.batch:>6} {name:<14} {r.samples_per_s[name]:>11.0f} {r.raw_mb_per_s[name]:>9.2f} "
                  f"{r.median_s[name] * 1e3:>9.3f}")
    print(f"\nratios (full/bare throughput, median of per-repeat ratios [min, max]; residual level q{quality}):")
    for r in results:
        for name, v in r.ratios.items():
            lo, hi = r.ratio_spread[name]
            print(f"{r.batch:>6} {name:<28} {v:6.1%}  [{lo:.1%}, {hi:.1%}]")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bundle", default=None, help="bundle dir (default: codec/assets/mnist-dense, else a trained stand-in)"
    )
    p.add_argument("--batches", default="1,64,256,1024", help="comma-separated batch sizes ('' for none)")
    p.add_argument("--single-frames", type=int, default=256,
                   help="distinct frames for the one-frame-per-call rows beside WebP, JPEG and zstd (0: skip)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved repeats per op (median reported)")
    p.add_argument("--min-time", type=float, default=0.25, help="seconds each timed op repeats for, per repeat")
    p.add_argument(
        "--quality", type=int, default=None, help="residual level (default: the bundle's default residual level)"
    )
    p.add_argument("--latent-quality", type=int, default=None,
                   help="latent-only level for the q0 rows (default: the one on the trained grid, latent_step 1)")
    p.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads (default: onnxruntime's choice)"
    )
    p.add_argument("--ort-spinning", choices=["off", "on"], default="off",
                   help="'on' swaps the codec's sessions for spin-waiting ones (onnxruntime's default) "
                        "to measure the full paths as they were before runtime.py turned spinning off")
    p.add_argument("--no-spin-compare", action="store_true", help="skip the raw spin / no-spin session rows")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)

    started = _dt.datetime.now(_dt.timezone.utc)
    if args.bundle is not None:
        bundle_dir = Path(args.bundle)
    elif (default_bundle_path() / "manifest.json").is_file():
        bundle_dir = default_bundle_path()
    else:
        bundle_dir = fallback_bundle()
    codec = Codec.load(bundle_dir, provider="cpu", threads=args.threads)
    if args.ort_spinning == "on":
        codec.encoder.session = raw_session(codec.bundle, args.threads, True)
        codec.decoder.session = raw_session(codec.bundle, args.threads, True, DECODER)
    quality = codec.default_quality if args.quality is None else int(args.quality)
    if codec.qualities[quality].max_error is None:
        raise InputError(f"quality {quality} has no residual layer; pick one of "
                         f"{[q.index for q in codec.qualities if q.max_error is not None]}")
    latent = latent_only_level(codec) if args.latent_quality is None else int(args.latent_quality)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    spin = {} if args.no_spin_compare else {
        f"ort_{'' if on else 'no'}spin": raw_session(codec.bundle, args.threads, on) for on in (True, False)
    }
    machine = machine_info()
    results = []
    single = None
    with tqdm(total=(len(batches) + (args.single_frames > 0)) * args.repeat, desc="throughput", unit="repeat") as bar:
        if args.single_frames > 0:
            bar.set_postfix(batch="single")
            single = bench_single(codec, single_frames(codec, args.single_frames), latent, quality, args.repeat,
                                  args.min_time, lambda: bar.update(1))
        for b in batches:
            bar.set_postfix(batch=b)
            results.append(bench_batch(codec, spin, b, quality, args.repeat, args.min_time, bar, latent))
    if single is not None:
        for r in results:  # batching against coding each frame as an image
            for op, base in (("enc_res", "webp_enc"), ("dec_res", "webp_dec")):
                if base in single.frames_per_s:
                    r.vs_single_webp[op] = r.samples_per_s[op] / single.frames_per_s[base]
    machine["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    report = {
        "benchmark": "throughput",
        "command": "python -m benchmarks.throughput "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "started": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "bundle": {
            "path": str(bundle_dir),
            "model_id": codec.model_id,
            "family": codec.manifest.family,
            "sample_shape": list(codec.sample_shape),
            "latent_shape": list(codec.manifest.latent_shape),
        },
        "quality_residual": {"index": quality, "max_error": codec.qualities[quality].max_error},
        "quality_latent_only": dataclasses.asdict(codec.qualities[latent]),
        "provider": codec.encoder.provider,
        "ort_spinning_in_codec_sessions": args.ort_spinning,
        "session": {
            "threads_arg": args.threads,
            "encoder": session_settings(codec.encoder.session),
            "decoder": session_settings(codec.decoder.session),
            "spin_compare": {k: session_settings(v) for k, v in spin.items()},
        },
        "versions": {k: version(k) for k in ("onnxruntime", "numpy", "constriction")},
        "machine": machine,
        "repeat": args.repeat,
        "min_time_s": args.min_time,
        "cpu": [asdict(r) for r in results],
        "single_frame": None if single is None else asdict(single),
        "cuda": None if not cuda else "CUDAExecutionProvider is available but this run measured CPU only",
        "cuda_note": None if cuda else "not measured: this onnxruntime build / machine has no CUDAExecutionProvider",
    }
    print_table(results, quality)
    if single is not None:
        print_single(single)
        for r in results:
            if r.vs_single_webp:
                print(f"batch {r.batch:>5}: residual q{quality} "
                      + ", ".join(f"{op} {v:.1f}x WebP's single-frame frames/s" for op, v in r.vs_single_webp.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
