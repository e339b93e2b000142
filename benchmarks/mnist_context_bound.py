"""How much a learned pixel context could save on MNIST's lossless residual (issue 24): a bound,
not a codec.

The shipped digit bundle codes the lossless residual in two checkerboard passes with tables chosen
by the exact prediction's value and the decoded neighbours (residual_checker.py). This trains a
small CNN that sees the same things (the exact prediction around each pixel and the pixels of
earlier passes) and outputs a full 256-way distribution per pixel, then reports its ideal code
length on the 10,000 test digits against the bundle's own residual bytes on the same digits. A
256-way softmax per pixel is no table a receiver can rebuild exactly; what it saves bounds what any
context model of that shape could, before the cost of making it exact.

    python -m benchmarks.mnist_context_bound --passes 2 --minutes 8 --out benchmarks/results/mnist-context-bound.json
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import git_commit, machine_info, write_result

BUNDLE = "codec/assets/mnist-dense"
PACKET = 256


def predictions(bundle: str, data: Path) -> dict[str, Any]:
    """Raw digits, the exact prediction residuals are taken against, the latent's and the lossless
    packets' bytes per digit (packets of 256, as the benchmarks code them)."""
    from benchmarks.residual_coding import _predict
    from latentwire.codec.codec import Codec
    from latentwire.codec.sources import load_source

    codec = Codec.load(bundle, provider="cpu", threads=1)
    lossless = len(codec.manifest.quality_levels) - 1
    if codec.manifest.quality_levels[lossless].max_error != 0:
        raise SystemExit(f"benchmarks.mnist_context_bound: {bundle}'s last level is not lossless")
    out: dict[str, Any] = {}
    for split in ("train", "test"):
        x = load_source(data, split=split).samples
        p, latent, packets = [], 0, 0
        for i in range(0, len(x), PACKET):
            pred, n = _predict(codec, x[i : i + PACKET])
            p.append(pred)
            latent += n
            if split == "test":
                packets += len(codec.encode(x[i : i + PACKET], quality=lossless))
        out[split] = (x[:, 0].astype(np.int64), np.concatenate(p)[:, 0])
        out[split + "_latent"] = latent / len(x)
        out[split + "_packets"] = packets / len(x)
    return out


def masks(passes: int) -> list[np.ndarray]:
    """Which pixels each pass codes: all at once, a checkerboard, or the four 2 x 2 phases."""
    i, j = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    if passes == 1:
        return [np.ones((28, 28), dtype=bool)]
    if passes == 2:
        return [(i + j) % 2 == 0, (i + j) % 2 == 1]
    if passes == 4:
        return [(i % 2 == 0) & (j % 2 == 0), (i % 2 == 1) & (j % 2 == 1),
                (i % 2 == 0) & (j % 2 == 1), (i % 2 == 1) & (j % 2 == 0)]
    raise SystemExit("--passes is 1, 2 or 4")


def train_bound(data: dict[str, Any], passes: int, minutes: float, width: int, seed: int) -> dict[str, Any]:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    coded = [torch.from_numpy(m) for m in masks(passes)]
    known = [torch.zeros(28, 28, dtype=torch.bool)]
    for m in coded[:-1]:
        known.append(known[-1] | m)
    net = nn.Sequential(nn.Conv2d(3 + passes, width, 5, padding=2), nn.GELU(), nn.Conv2d(width, width, 3, padding=1),
                        nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 256, 1))
    x_tr, p_tr = (torch.from_numpy(a) for a in data["train"])
    x_te, p_te = (torch.from_numpy(a) for a in data["test"])

    def bits(p: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
        n = p.shape[0]
        seen = known[k].to(p.dtype).expand(n, 28, 28)
        phase = torch.zeros(n, passes, 28, 28)
        phase[:, k] = 1
        inputs = torch.cat([torch.stack([p / 255, x.to(p.dtype) / 255 * seen, seen], 1), phase], 1)
        ce = nn.functional.cross_entropy(net(inputs), x, reduction="none")
        return (ce * coded[k]).sum() / math.log(2)

    opt = torch.optim.Adam(net.parameters(), 2e-3)
    t0, step, curve = time.perf_counter(), 0, []
    for lr, share in ((2e-3, 1.0), (5e-4, 0.2)):  # then a fifth as long at a lower rate
        for g in opt.param_groups:
            g["lr"] = lr
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < minutes * 60 * share:
            idx = torch.randint(0, len(x_tr), (64,))
            loss = bits(p_tr[idx], x_tr[idx], step % passes) / 64 / 8
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 500 == 0:
                curve.append({"step": step, "seconds": round(time.perf_counter() - t0, 1),
                              "train_bytes_per_digit_this_pass": round(float(loss.detach()), 3)})
                print(f"  step {step}, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    with torch.no_grad():
        per_pass = [sum(float(bits(p_te[i : i + 500], x_te[i : i + 500], k)) for i in range(0, len(x_te), 500))
                    / 8 / len(x_te) for k in range(passes)]
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "curve": curve,
            "test_bytes_per_digit_per_pass": [round(v, 3) for v in per_pass],
            "test_bytes_per_digit": round(sum(per_pass), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=BUNDLE)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mnist"))
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/mnist-context-bound.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    data = predictions(args.bundle, args.data)
    bound = train_bound(data, args.passes, args.minutes, args.width, args.seed)
    shipped = data["test_packets"] - data["test_latent"]
    report = {
        "meta": {"command": "python -m benchmarks.mnist_context_bound "
                            + shlex.join(sys.argv[1:] if argv is None else list(argv)),
                 "bundle": args.bundle, "git_commit": git_commit(), "machine": machine_info()},
        "test_digits": int(len(data["test"][0])),
        "shipped": {"lossless_bytes_per_digit": round(data["test_packets"], 3),
                    "latent_bytes_per_digit": round(data["test_latent"], 3),
                    "residual_and_overhead_bytes_per_digit": round(shipped, 3)},
        "bound": {"passes": args.passes, "width": args.width, **bound},
        # what lossless would cost with the bound's residual: the latent plus it (packet headers not counted)
        "latent_plus_bound_bytes_per_digit": round(data["test_latent"] + bound["test_bytes_per_digit"], 3),
    }
    out = write_result(args.out, report)
    print(f"shipped lossless {data['test_packets']:.2f} B/digit (latent {data['test_latent']:.2f}, residual and "
          f"packet overhead {shipped:.2f}); a {args.passes}-pass CNN's ideal residual "
          f"{bound['test_bytes_per_digit']:.2f} -> {report['latent_plus_bound_bytes_per_digit']:.2f} B/digit with "
          f"the latent; results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
