"""`latentwire train`: rate-distortion training of an autoencoder family, with checkpoints.

Loss per sample = distortion + rate_weight * bits, where
  distortion = squared error summed over the sample's elements, in the MODEL domain (mse),
               or binary cross-entropy summed the same way (bce, data in [0, 1]);
  bits       = -sum log2 p(y_tilde) under the learned factorized density.
So rate_weight is "squared model-domain error per bit": at the optimum one more bit buys a drop of
rate_weight in summed squared error. For MNIST ([0, 1] pixels) 0.01 gives a 784-512-256-32 model
of ~20 dB PSNR at ~14 bytes per digit after 12 epochs; larger values give smaller, blurrier codes. rate_weight 0 trains a
plain autoencoder (no quantization noise) and fits the density on the side so the bundle still
gets entropy tables. Validation always rounds the latent, exactly as the codec does, so the
reported PSNR and bytes/sample are what the exported bundle delivers (before entropy-coder overhead).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .models import Autoencoder, ModelConfig, build_model
from .models.variants import VARIANTS, Corruption, training_loss, warn_if_unregularized
from .normalization import Normalization, psnr_db
from .sources import SampleSet, source_option

CHECKPOINT = "checkpoint.pt"
VAL_BATCH_KEEP = 8  # validation samples stored in the checkpoint for export's parity check


@dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    density_lr_factor: float = 10.0  # density params learn ~10x faster: their gradient is scaled by rate_weight
    rate_weight: float = 0.01
    schedule: str = "cosine"  # "cosine" | "plateau" | "none"
    patience: int = 5  # epochs without val-loss improvement before stopping (0: never stop early)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    threads: int | None = None  # torch CPU threads (default: min(2, cpu count))
    out: str | None = None  # directory for checkpoint.pt
    resume: bool = False  # continue from out/checkpoint.pt
    init_from: str | None = None  # warm start: weights of an earlier run's best model, fresh optimizer and schedule
    progress: bool = True
    command: str = ""  # the command line recorded in the checkpoint and manifest


@dataclass
class TrainResult:
    model: Autoencoder  # best (lowest val loss) weights, eval mode, on CPU
    config: ModelConfig
    normalization: Normalization
    best_val_loss: float
    val_psnr_db: float
    val_bytes_per_sample: float
    epochs_run: int
    seconds: float
    device: str
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    val_batch: np.ndarray | None = None  # model-domain validation samples for export's parity check
    data: dict[str, Any] = field(default_factory=dict)
    rate_weight: float = 0.0
    command: str = ""

    def training_summary(self) -> dict[str, Any]:
        """The manifest's "training" block."""
        return {
            "command": self.command,
            "seconds": round(self.seconds, 2),
            "device": self.device,
            "data": self.data,
            "epochs": self.epochs_run,
            "rate_weight": self.rate_weight,
        }

    def metrics(self) -> dict[str, float]:
        return {"val_psnr_db": self.val_psnr_db, "val_bytes_per_sample_estimate": self.val_bytes_per_sample}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda")
    return torch.device(device)


def distortion(x_hat: torch.Tensor, x: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample distortion (N,), summed over the sample's elements (see module docstring)."""
    if loss == "bce":
        per = F.binary_cross_entropy(x_hat.clamp(0.0, 1.0), x.clamp(0.0, 1.0), reduction="none")
    else:
        per = (x_hat - x) ** 2
    return per.flatten(1).sum(dim=1)


def _batch_loss(model: Autoencoder, xb: torch.Tensor, rate_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(mean distortion, mean bits, loss to minimise, mean variant penalty) for one batch."""
    terms = training_loss(model, xb, rate_weight, distortion)
    return terms.distortion, terms.bits, terms.loss, float(terms.penalty)


def _check_data(config: ModelConfig, train_set: SampleSet, val_set: SampleSet) -> None:
    for name, s in (("train", train_set), ("validation", val_set)):
        if len(s) == 0:
            raise ValueError(f"the {name} set is empty; load more data or change --val-fraction")
        shape = s.sample_shape
        want = config.sample_shape
        if len(shape) != len(want) or any(w is not None and w != g for w, g in zip(want, shape)):
            raise ValueError(f"{name} samples have shape {shape}, the model expects {want}")
    if config.loss == "bce":
        x = train_set.model_domain()
        if float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise ValueError(
                f"loss 'bce' needs model-domain data in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]; use --loss mse"
            )


@torch.no_grad()
def evaluate(
    model: Autoencoder, x: np.ndarray, normalization: Normalization, loss: str, rate_weight: float,
    device: torch.device, batch_size: int = 256, corruption: str = "",
) -> dict[str, float]:
    """Codec-faithful validation: rounded latents; PSNR in the raw domain (normalization peak).

    A denoising model is selected on what it is for: val_loss then scores the reconstruction of
    CORRUPTED validation samples (fixed seed) against the clean ones; PSNR and bytes stay clean.
    """
    model.eval()
    tot_loss = tot_bits = tot_se = 0.0
    n = x.shape[0]
    corrupt = Corruption.parse(corruption) if corruption else None
    gen = torch.Generator().manual_seed(0)
    for i in range(0, n, batch_size):
        xb = torch.from_numpy(x[i : i + batch_size]).to(device)
        out = model(xb, quantize="round")
        d = distortion(out.x_hat, xb, loss)
        if corrupt is not None:
            d = distortion(model(corrupt.apply(xb, gen), quantize="round").x_hat, xb, loss)
        tot_loss += float((d + rate_weight * out.bits).sum())
        tot_bits += float(out.bits.sum())
        raw_ref = normalization.to_raw_float(xb.cpu().numpy())
        raw_hat = normalization.to_raw_float(out.x_hat.cpu().numpy())
        tot_se += float(np.sum((raw_ref.astype(np.float64) - raw_hat) ** 2))
    mse = tot_se / x.size
    psnr = float("inf") if mse == 0 else 10.0 * math.log10(normalization.peak**2 / mse)
    return {"val_loss": tot_loss / n, "val_psnr_db": psnr, "val_bytes_per_sample": tot_bits / n / 8.0}


def _make_optimizer(model: Autoencoder, options: TrainOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [
            {"params": model.network_parameters(), "lr": options.lr, "weight_decay": options.weight_decay},
            {"params": model.density_parameters(), "lr": options.lr * options.density_lr_factor, "weight_decay": 0.0},
        ]
    )


def _make_scheduler(optimizer: torch.optim.Optimizer, options: TrainOptions) -> Any:
    if options.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, options.epochs), eta_min=0.0)
    if options.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=max(1, options.patience // 2))
    if options.schedule == "none":
        return None
    raise ValueError(f"schedule {options.schedule!r} is not one of cosine, plateau, none")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (a directory means DIR/checkpoint.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p}; train with --out DIR first")
    return torch.load(p, map_location="cpu", weights_only=False)


def model_from_checkpoint(ckpt: dict[str, Any], which: str = "best_model") -> Autoencoder:
    model = build_model(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt[which])
    return model.eval()


def train(config: ModelConfig, train_set: SampleSet, val_set: SampleSet, options: TrainOptions) -> TrainResult:
    """Train (or resume) and return the best-on-validation model; checkpoints every epoch if out is set."""
    _check_data(config, train_set, val_set)
    if options.threads or not torch.cuda.is_available():
        torch.set_num_threads(options.threads or max(1, min(2, os.cpu_count() or 1)))
    device = resolve_device(options.device)
    normalization = train_set.normalization
    x_train = train_set.model_domain()
    x_val = val_set.model_domain()
    out_dir = Path(options.out) if options.out else None
    ckpt_path = out_dir / CHECKPOINT if out_dir else None

    model = build_model(config).to(device)
    optimizer = _make_optimizer(model, options)
    scheduler = _make_scheduler(optimizer, options)
    start_epoch, best_loss, best_state, best_metrics = 0, float("inf"), None, {}
    history: list[dict[str, float]] = []
    seconds_before = 0.0
    stale = 0
    init_info: dict[str, Any] | None = None
    if options.init_from and not options.resume:
        # Why: CPU time is scarce; a longer schedule over more (overlapping) windows can start where a
        # finished run stopped instead of from scratch. The earlier run's command and seconds travel along.
        init_ckpt = load_checkpoint(options.init_from)
        if ModelConfig.from_dict(init_ckpt["config"]) != config:
            raise ValueError(f"--init-from: {options.init_from} was trained with {init_ckpt['config']}, not {config.to_dict()}")
        model.load_state_dict(init_ckpt["best_model"] or init_ckpt["model"])
        init_info = {"path": str(options.init_from), "command": init_ckpt.get("command", ""),
                     "seconds": round(float(init_ckpt.get("seconds", 0.0)), 2), "epochs": int(init_ckpt["epoch"]) + 1}
    if options.resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; pass the --out DIR of the earlier run")
        ckpt = load_checkpoint(ckpt_path)
        if ModelConfig.from_dict(ckpt["config"]) != config:
            raise ValueError(f"--resume: {ckpt_path} was trained with {ckpt['config']}, not {config.to_dict()}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"]) + 1
        best_loss = float(ckpt["best_val_loss"])
        best_state = ckpt["best_model"]
        best_metrics = dict(ckpt["best_metrics"])
        history = list(ckpt["history"])
        seconds_before = float(ckpt.get("seconds", 0.0))
        stale = int(ckpt.get("stale_epochs", 0))
        init_info = ckpt.get("init_from")
        torch.set_rng_state(ckpt["torch_rng"])

    data_summary = {
        "source": train_set.meta.get("source") or train_set.name,
        "name": train_set.name,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "sample_shape": list(train_set.sample_shape),
    }
    gen = torch.Generator().manual_seed(options.seed)
    if not options.resume:
        torch.manual_seed(options.seed)
    warn_if_unregularized(model, options.rate_weight)
    t0 = time.perf_counter()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, options.epochs):
        gen.manual_seed(options.seed * 100003 + epoch)
        order = torch.randperm(x_train.shape[0], generator=gen).numpy()
        model.train()
        bar = tqdm(
            range(0, len(order), options.batch_size), desc=f"epoch {epoch + 1}/{options.epochs}",
            disable=not options.progress, leave=True, unit="batch", file=sys.stderr,
        )
        run_loss = 0.0
        for k, i in enumerate(bar):
            xb = torch.from_numpy(x_train[order[i : i + options.batch_size]]).to(device)
            # the variant (plain, denoising, sparse, contractive, vae) decides the loss; for plain
            # models it is distortion + rate_weight * bits, and with rate_weight 0 `bits` only
            # reaches the density (latents detached in forward).
            d, bits, loss, penalty = _batch_loss(model, xb, options.rate_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_loss = float(d.detach() + options.rate_weight * bits.detach() + penalty)
            run_loss = 0.9 * run_loss + 0.1 * step_loss if k else step_loss
            if k % 10 == 0:
                bar.set_postfix(loss=f"{run_loss:.3f}", B=f"{float(bits.detach()) / 8:.1f}")
        metrics = evaluate(model, x_val, normalization, config.loss, options.rate_weight, device,
                           corruption=config.corruption)
        bar.set_postfix(loss=f"{run_loss:.3f}", val_psnr=f"{metrics['val_psnr_db']:.2f}dB",
                        B_per_sample=f"{metrics['val_bytes_per_sample']:.1f}")
        bar.close()
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics["val_loss"])
            else:
                scheduler.step()
        history.append({"epoch": epoch, "train_loss": run_loss, "seconds": seconds_before + time.perf_counter() - t0, **metrics})
        if metrics["val_loss"] < best_loss:
            best_loss, stale = metrics["val_loss"], 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_metrics = metrics
        else:
            stale += 1
        if ckpt_path is not None:
            out_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            torch.save(
                {
                    "config": config.to_dict(),
                    "model": model.state_dict(),
                    "best_model": best_state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch,
                    "best_val_loss": best_loss,
                    "best_metrics": best_metrics,
                    "history": history,
                    "stale_epochs": stale,
                    "seconds": seconds_before + time.perf_counter() - t0,
                    "device": device.type,
                    "data": data_summary,
                    "normalization": normalization.to_dict(),
                    "options": asdict(options),
                    "command": options.command,
                    "init_from": init_info,
                    "val_batch": x_val[:VAL_BATCH_KEEP].copy(),
                    "torch_rng": torch.get_rng_state(),
                },
                ckpt_path,
            )
        if options.patience and stale >= options.patience:
            break
    seconds = seconds_before + time.perf_counter() - t0
    if best_state is None:
        raise ValueError(f"no epoch ran (epochs={options.epochs}, resumed at {start_epoch}); raise --epochs")
    best = build_model(config)
    best.load_state_dict(best_state)
    best.eval()
    return TrainResult(
        model=best, config=config, normalization=normalization, best_val_loss=best_loss,
        val_psnr_db=float(best_metrics["val_psnr_db"]), val_bytes_per_sample=float(best_metrics["val_bytes_per_sample"]),
        epochs_run=epoch + 1, seconds=seconds, device=device.type, history=history, checkpoint=ckpt_path,
        val_batch=x_val[:VAL_BATCH_KEEP].copy(), data=data_summary, rate_weight=options.rate_weight,
        command=options.command,
    )


# -- CLI ------------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1000,500,250, got {text!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train an autoencoder", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data source (MNIST folder, .npy/.npz, image folder, WFDB folder)")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE",
                   help="option for the data loader, e.g. limit=5000, size=64,64 (repeatable)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--family", default="dense", choices=["dense", "conv2d", "conv1d"])
    p.add_argument("--layers", type=_int_list, default=None,
                   help="dense: nodes per encoder layer (default 512,256); conv: channels per stride-2 stage (default 32,64)")
    p.add_argument("--code-size", type=int, default=32, help="dense: latent dims; conv: latent channels")
    p.add_argument("--activation", default="relu", choices=["relu", "gelu", "leaky_relu", "tanh", "linear"])
    v = p.add_argument_group("autoencoder variant (codec/models/variants.py; weights add to the per-sample summed distortion)")
    v.add_argument("--variant", default=None, choices=list(VARIANTS),
                   help="plain (default), denoising, sparse, contractive or vae; implied by the options below")
    v.add_argument("--linear", action="store_true",
                   help="no nonlinearity anywhere (activation and output 'linear'): the autoencoder PCA solves")
    v.add_argument("--corruption", default=None, metavar="mask:P|gaussian:SIGMA",
                   help="denoising: zero a fraction P of inputs, or add model-domain noise of std SIGMA (default mask:0.3)")
    v.add_argument("--sparsity", default=None, metavar="l1:W|kl:RHO[:W]",
                   help="sparse: W * sum|code|, or W * KL(RHO || mean activity) with activity = code symbol != 0 (default kl:0.05)")
    v.add_argument("--contractive-weight", type=float, default=None,
                   help="contractive: weight of the encoder Jacobian's squared Frobenius norm (default 0.1)")
    v.add_argument("--beta", type=float, default=None, help="vae: weight of the KL term in nats (default 1)")
    p.add_argument("--loss", default="mse", choices=["mse", "bce"])
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--blocks", type=int, default=0,
                   help="conv: residual blocks after every stride-2 stage (encoder and decoder)")
    p.add_argument("--output-activation", default="auto", choices=["auto", "sigmoid", "none"])
    p.add_argument("--rate-weight", type=float, default=TrainOptions.rate_weight,
                   help="lambda in loss = summed squared error + lambda * bits per sample (0: plain autoencoder)")
    p.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    p.add_argument("--batch-size", type=int, default=TrainOptions.batch_size)
    p.add_argument("--lr", type=float, default=TrainOptions.lr)
    p.add_argument("--weight-decay", type=float, default=TrainOptions.weight_decay)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "plateau", "none"])
    p.add_argument("--patience", type=int, default=TrainOptions.patience, help="early stopping (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="directory for checkpoint.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="warm start from an earlier run's best weights (same config; fresh optimizer and schedule)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from .sources import load_source

    source = load_source(args.data, **dict(args.source_option))
    train_set, val_set = source.split(args.val_fraction, seed=args.seed)
    sample_shape: list[int | None] = list(source.sample_shape)
    if args.family != "dense":
        sample_shape = [sample_shape[0]] + [None] * (len(sample_shape) - 1)  # fully convolutional: any size
    layers = args.layers if args.layers is not None else ([512, 256] if args.family == "dense" else [32, 64])
    config = ModelConfig(
        family=args.family, sample_shape=sample_shape, code_size=args.code_size, layers=layers,
        activation="linear" if args.linear else args.activation, loss=args.loss, kernel_size=args.kernel_size, blocks=args.blocks,
        output_activation="none" if args.linear else args.output_activation, seed=args.seed,
        **variant_fields(args),
    )
    options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        rate_weight=args.rate_weight, schedule=args.schedule, patience=args.patience, seed=args.seed,
        device=args.device, threads=args.threads, out=args.out, resume=args.resume, init_from=args.init_from,
        progress=not args.no_progress, command=getattr(args, "command_line", None) or _command_line(),
    )
    result = train(config, train_set, val_set, options)
    print(
        f"trained {result.epochs_run} epochs in {result.seconds:.1f}s on {result.device}: "
        f"val PSNR {result.val_psnr_db:.2f} dB, ~{result.val_bytes_per_sample:.1f} bytes/sample; "
        f"checkpoint {result.checkpoint}"
    )
    return 0


def variant_fields(args: argparse.Namespace) -> dict[str, Any]:
    """ModelConfig's variant fields from the CLI: --variant, or the variant its option implies."""
    given = {
        "denoising": ("corruption", args.corruption), "sparse": ("sparsity", args.sparsity),
        "contractive": ("contractive_weight", args.contractive_weight), "vae": ("beta", args.beta),
    }
    implied = [name for name, (_, value) in given.items() if value is not None]
    variant = args.variant or (implied[0] if len(implied) == 1 else "plain")
    if len(implied) > 1 or (implied and implied != [variant]):
        options = ", ".join(f"--{given[n][0].replace('_', '-')}" for n in implied)
        raise ValueError(f"{options} do(es) not belong to --variant {variant}; one variant per model")
    fields: dict[str, Any] = {"variant": variant}
    if variant in given and given[variant][1] is not None:
        fields[given[variant][0]] = given[variant][1]
    return fields


def _command_line() -> str:
    argv = sys.argv[:]
    if argv and argv[0].endswith(("latentwire", "cli.py")):
        argv[0] = "latentwire"
    return shlex.join(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentwire")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["train", *argv])
    args.command_line = shlex.join(["latentwire", "train", *argv])
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
