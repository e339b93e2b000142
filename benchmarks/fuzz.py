"""Long fuzz run of the parsers and the codec (>= 100,000 inputs): crashes and hangs must be 0.

tests/test_fuzz.py runs the same properties with hypothesis for a few hundred examples; this
script is the long run, a seeded mutation fuzzer (no extra dependency; atheris is not needed):

  packet      read_packet on random bytes and on real packets with random edits
  decode      Codec.decode on real packets with random edits AND a recomputed CRC (the payload
              decoder meets the damage, not the checksum)
  manifest    Manifest.from_dict on the real manifest with fields replaced/removed (values include
              NaN, Infinity, huge ints, wrong types), and read_manifest on mutated manifest bytes
  roundtrip   encode -> decode on random/real frames at random levels: |x - y| <= max_error

An input "crashes" when it raises anything but the documented exceptions (codec/errors.py), and
"hangs" when it takes longer than --hang-s (SIGALRM). Results: benchmarks/results/fuzz.json.

    .venv/bin/python -m benchmarks.fuzz                       # 100,000 inputs
    .venv/bin/python -m benchmarks.fuzz --inputs 2000000 --seed 7
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latentwire.codec.bundle import Manifest, read_manifest
from latentwire.codec.codec import Codec, default_bundle_path
from latentwire.codec.coding import bitstream as B
from latentwire.codec.errors import LatentwireError

RESULTS = Path(__file__).resolve().parent / "results"
# share of the inputs per target (the slow decode/roundtrip targets get fewer)
SHARES = {"packet": 0.55, "decode": 0.2, "manifest": 0.22, "roundtrip": 0.03}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


@dataclass
class TargetReport:
    inputs: int = 0
    documented_errors: int = 0
    ok: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    slowest_ms: float = 0.0
    crash_kinds: dict[str, int] = field(default_factory=dict)
    first_crash: str | None = None

    @property
    def per_s(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def _recrc(pkt: bytearray) -> bytes:
    body = bytes(pkt[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def _edit(rng: np.random.Generator, data: bytes, lo: int = 0) -> bytearray:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = rng.integers(0, 4)
        if not b:
            b += bytes(rng.integers(0, 256, 4, dtype=np.uint8))
        pos = int(rng.integers(min(lo, len(b) - 1), len(b)))
        if op == 0:
            b[pos] = int(rng.integers(0, 256))
        elif op == 1:
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 2:
            del b[pos : pos + int(rng.integers(1, 9))]
        else:
            b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8))
    return b


class Targets:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.codec = Codec.load("default", provider="cpu", threads=1)
        from latentwire.codec.sources import load_source, sample_data_root

        self.samples = load_source(sample_data_root() / "mnist").samples[:256]
        self.packets = [self.codec.encode(self.samples[i : i + n], quality=q)
                        for i, n, q in ((0, 1, 0), (1, 4, 2), (5, 8, 5), (13, 3, 10), (16, 2, 7))]
        self.packets.append(self.codec.encode_lossless(self.samples[20:24]))
        self.manifest = read_manifest(default_bundle_path())
        self.manifest_json = json.dumps(self.manifest)
        self.manifest_bytes = (default_bundle_path() / "manifest.json").read_bytes()
        self.tmp = Path(tempfile.mkdtemp(prefix="lw-fuzz-"))

    def packet(self) -> None:
        r = self.rng
        if r.random() < 0.3:
            data = bytes(r.integers(0, 256, int(r.integers(0, 64)), dtype=np.uint8))
            if r.random() < 0.5:
                data = b"LW\x01" + data
        else:
            data = bytes(_edit(r, self.packets[int(r.integers(0, len(self.packets)))]))
        try:
            h, payload = B.read_packet(data, self.codec.model_id if r.random() < 0.5 else None)
            assert len(payload) == h.payload_length and h.packet_length == len(data)
        except LatentwireError:
            raise
        try:
            list(B.iter_packets(data + data))
        except LatentwireError:
            pass

    def decode(self) -> None:
        r = self.rng
        pkt = self.packets[int(r.integers(0, len(self.packets)))]
        h = B.peek_header(pkt)
        b = _edit(r, pkt, lo=h.header_length if r.random() < 0.7 else 4)
        if len(b) < 5:
            b += b"\0" * 5
        data = _recrc(b)
        out = self.codec.decode(data)
        h2 = B.peek_header(data)
        assert out.shape == (h2.count, *self.codec.sample_shape) and out.dtype == np.uint8

    _WILD = [None, True, -1, 0, 2**70, -2**70, 1.5, math.nan, math.inf, -math.inf, "", "x", "uint8", "bogus",
             [], [1], [-1, 28], ["a"], {}, {"a": 1}, [[1, 2]], "Infinity"]
    _PATHS = [["format_version"], ["family"], ["config"], ["input"], ["input", "sample_shape"],
              ["input", "normalization"], ["input", "normalization", "scale"],
              ["input", "normalization", "raw_dtype"], ["input", "normalization", "raw_min"], ["latent"],
              ["latent", "shape"], ["latent", "stride"], ["latent", "channels"], ["latent", "channel_axis"],
              ["quality_levels"], ["model_id"], ["name"]]

    def manifest_target(self) -> None:
        r = self.rng
        if r.random() < 0.25:  # the file level: mutated bytes through read_manifest
            path = self.tmp / "manifest.json"
            path.write_bytes(bytes(_edit(r, self.manifest_bytes)))
            raw = read_manifest(self.tmp)
        else:
            raw = json.loads(self.manifest_json)
            for _ in range(int(r.integers(1, 4))):
                keys = self._PATHS[int(r.integers(0, len(self._PATHS)))]
                obj = raw
                for k in keys[:-1]:
                    obj = obj.get(k) if isinstance(obj.get(k), dict) else {}
                if r.random() < 0.2:
                    obj.pop(keys[-1], None)
                else:
                    obj[keys[-1]] = self._WILD[int(r.integers(0, len(self._WILD)))]
        Manifest.from_dict(raw)

    def roundtrip(self) -> None:
        r = self.rng
        n = int(r.integers(1, 9))
        x = self.samples[r.integers(0, len(self.samples), n)].copy()
        if r.random() < 0.4:
            x = r.integers(0, 256, x.shape, dtype=np.uint8)
        custom = int(r.integers(0, 80)) if r.random() < 0.3 else None
        q = None if custom is not None else int(r.integers(0, len(self.codec.qualities)))
        y = self.codec.decode(self.codec.encode(x, quality=q, max_error=custom))
        bound = custom if q is None else self.codec.qualities[q].max_error
        assert y.shape == x.shape and y.dtype == x.dtype
        if bound is not None:
            err = int(np.abs(x.astype(np.int32) - y.astype(np.int32)).max())
            assert err <= bound, f"max error {err} > bound {bound}"


def run(inputs: int, seed: int, hang_s: float, log_every: float = 10.0) -> dict:
    t = Targets(seed)
    fns: dict[str, Callable[[], None]] = {"packet": t.packet, "decode": t.decode, "manifest": t.manifest_target,
                                          "roundtrip": t.roundtrip}
    reports = {k: TargetReport() for k in fns}
    plan = {k: max(1, int(inputs * s)) for k, s in SHARES.items()}
    plan["packet"] += inputs - sum(plan.values())
    signal.signal(signal.SIGALRM, _alarm)
    t_all = time.perf_counter()
    last = t_all
    for name, count in plan.items():
        rep, fn = reports[name], fns[name]
        for _ in range(count):
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, hang_s)
            try:
                fn()
                rep.ok += 1
            except LatentwireError:
                rep.documented_errors += 1
            except Hang:
                rep.hangs += 1
            except Exception as e:  # noqa: BLE001 - that is the finding
                rep.crashes += 1
                kind = f"{type(e).__name__}: {str(e)[:80]}"
                rep.crash_kinds[kind] = rep.crash_kinds.get(kind, 0) + 1
                if rep.first_crash is None:
                    rep.first_crash = traceback.format_exc(limit=6)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.perf_counter() - t0
            rep.inputs += 1
            rep.seconds += dt
            rep.slowest_ms = max(rep.slowest_ms, dt * 1000)
            if time.perf_counter() - last > log_every:
                last = time.perf_counter()
                done = sum(x.inputs for x in reports.values())
                print(f"  {done}/{inputs} inputs, {time.perf_counter() - t_all:.0f}s", file=sys.stderr, flush=True)
    total_s = time.perf_counter() - t_all
    out = {
        "command": " ".join(["python -m benchmarks.fuzz", *sys.argv[1:]]),
        "seed": seed,
        "inputs": sum(r.inputs for r in reports.values()),
        "crashes": sum(r.crashes for r in reports.values()),
        "hangs": sum(r.hangs for r in reports.values()),
        "hang_threshold_s": hang_s,
        "seconds": round(total_s, 1),
        "inputs_per_s": round(sum(r.inputs for r in reports.values()) / total_s, 1),
        "targets": {k: {**asdict(r), "inputs_per_s": round(r.per_s, 1), "seconds": round(r.seconds, 2),
                        "slowest_ms": round(r.slowest_ms, 2)} for k, r in reports.items()},
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                    "platform": platform.platform()},
        "bundle": t.codec.model_id[:12],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hang-s", type=float, default=5.0, help="an input taking longer than this is a hang")
    p.add_argument("--out", default=str(RESULTS / "fuzz.json"))
    args = p.parse_args(argv)
    result = run(args.inputs, args.seed, args.hang_s)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['inputs']} inputs in {result['seconds']}s ({result['inputs_per_s']}/s): "
          f"crashes {result['crashes']}, hangs {result['hangs']}")
    for k, r in result["targets"].items():
        print(f"  {k:9s} {r['inputs']:7d} inputs {r['inputs_per_s']:9.1f}/s  ok {r['ok']:6d}  documented errors "
              f"{r['documented_errors']:6d}  crashes {r['crashes']}  hangs {r['hangs']}  slowest {r['slowest_ms']} ms")
        for kind, n in r["crash_kinds"].items():
            print(f"      {n} x {kind}")
    return 1 if result["crashes"] or result["hangs"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
