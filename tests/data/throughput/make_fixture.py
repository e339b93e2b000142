"""Rebuild tests/data/throughput/regression.npz: coding inputs and the payload bytes the coder
produced for them BEFORE the throughput work (commit c2f2710's entropy/residual/payload code).

Why a fixture and not a re-run: the pinned bytes are the point. Any later change to the coding
hot path must reproduce them exactly, or packets already on the wire would stop decoding.

Inputs come from a tiny dense MNIST bundle trained like tests/conftest.py (784-128-16, 4 epochs on
the shipped 1000 digits): its entropy.json, the latent symbols and decoder output (raw units) of
the first 24 shipped test digits, plus synthetic inputs that force escapes. Only the coding
tables and arrays are stored (no ONNX graphs), so the test needs neither torch nor onnxruntime.

    .venv/bin/python tests/data/throughput/make_fixture.py BUNDLE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from latentwire.codec.codec import Codec
from latentwire.codec.coding.payload import CodingTables, PayloadReader, encode_payload
from latentwire.codec.coding.quantize import quantize
from latentwire.codec.sources import load_mnist, sample_data_root

OUT = Path(__file__).resolve().parent / "regression.npz"
N = 24


def cases() -> list[tuple[str, str, int, int | None]]:
    """(name, input set, frames, max_error)."""
    out = []
    for n in (1, 3, N):
        for d in (None, 0, 3, 16, 32):
            out.append((f"digits-n{n}-d{d}", "digits", n, d))
    out += [("digits-tiled-n96-d0", "tiled", 96, 0), ("digits-tiled-n96-d8", "tiled", 96, 8)]
    out += [("spread-n24-dNone", "spread", N, None), ("spread-n1-dNone", "spread", 1, None)]
    out += [
        ("escapes-n1-dNone", "escapes", 1, None),
        ("escapes-n8-d0", "escapes", 8, 0),
        ("escapes-n8-d2", "escapes", 8, 2),
    ]
    return out


def inputs(data: dict[str, np.ndarray], which: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if which == "digits":
        return data["symbols"][:n], data["x_raw"][:n], data["raw_float"][:n]
    if which == "tiled":
        reps = -(-n // N)
        return tuple(np.concatenate([data[k]] * reps)[:n] for k in ("symbols", "x_raw", "raw_float"))  # type: ignore[return-value]
    if which == "spread":
        return data["spread_symbols"][:n], data["x_raw"][:n], data["raw_float"][:n]
    return data["esc_symbols"][:n], data["esc_x_raw"][:n], data["raw_float"][:n]


def main(bundle_dir: str) -> None:
    codec = Codec.load(bundle_dir, provider="cpu", threads=1)
    raw = load_mnist(sample_data_root() / "mnist", split="test").samples[:N]
    symbols = quantize(codec.encoder.encode(codec.normalization.to_model(raw)))
    raw_float = codec._decode_symbols(symbols, raw.shape[1:]).astype(np.float32)
    rng = np.random.default_rng(20240611)
    esc = symbols.astype(np.int64) * 40
    esc[:, 0] = [2**30, -(2**31), 2**31 - 1, 70000, -70000, 1, 0, -1] * (N // 8)
    esc_x = rng.integers(0, 256, size=raw.shape, dtype=np.uint8)
    tabs = codec.tables.latent
    lo = np.array([t.lo for t in tabs]) - 1
    hi = np.array([t.hi for t in tabs]) + 2
    spread = rng.integers(lo, hi, size=symbols.shape).astype(np.int32)  # every in-range value, some escapes
    data = {
        "spread_symbols": spread,
        "entropy_json": np.frombuffer(codec.tables.dumps(), dtype=np.uint8),
        "channel_axis": np.array(codec.manifest.channel_axis),
        "symbols": symbols,
        "x_raw": raw,
        "raw_float": raw_float,
        "esc_symbols": esc.astype(np.int32),
        "esc_x_raw": esc_x,
    }
    tables = CodingTables.loads(bytes(data["entropy_json"]))
    for name, which, n, d in cases():
        s, x, f = inputs(data, which, n)
        payload, info = encode_payload(tables, s, int(data["channel_axis"]), x_raw=x if d is not None else None,
                                       raw_float=f if d is not None else None, max_error=d)
        reader = PayloadReader(payload, tables)
        got = reader.latents(n, s.shape[1:], int(data["channel_axis"]))
        assert np.array_equal(got, s), name
        if d is not None:
            rec = reader.residual(f, d)
            assert np.array_equal(rec, info.recon), name
            assert np.abs(rec.astype(np.int64) - x).max() <= d, name
            data[f"{name}/recon"] = rec.astype(np.uint8)
        data[f"{name}/payload"] = np.frombuffer(payload, dtype=np.uint8)
        print(f"{name}: {len(payload)} bytes")
    np.savez_compressed(OUT, **data)
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1])
