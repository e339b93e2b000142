"""`latentwire train`: rate-distortion training of an autoencoder family, with checkpoints.

Loss per sample = distortion + rate_weight * bits, where
  distortion = squared error summed over the sample's elements, in the MODEL domain (mse),
               or binary cross-entropy summed the same way (bce, data in [0, 1]);
  bits       = -sum log2 p(y_tilde) under the learned factorized density.
So rate_weight is "squared model-domain error per bit": at the optimum one more bit buys a drop of
rate_weight in summed squared error. For MNIST ([0, 1] pixels) 0.01 gives a 784-512-256-32 model
of ~20 dB PSNR at ~14 bytes per digit after 12 epochs; larger values give smaller, blurrier codes.
rate_weight 0 trains a plain autoencoder (no quantization noise) and fits the density on the side so the bundle still
gets entropy tables. Validation always rounds the latent, exactly as the codec does, so the
reported PSNR and bytes/sample are what the exported bundle delivers (before entropy-coder overhead).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# torch's OpenMP workers spin while they wait; on a shared machine a busy neighbour then stalls
# every step (measured: 2 threads beside one busy process went from 0.37 to 1.09 s per photo
# batch; passive waiting 0.68 s). Set before torch loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from tqdm import tqdm

from ..normalization import Normalization
from ..sources import SampleSet
from . import distributed, precision, warmstart
from .augment import augment_batch
from .models import Autoencoder, ModelConfig, build_model
from .models.variants import training_loss, warn_if_unregularized
from .options import (
    AUGMENTS,
    TrainOptions,
    _command_line,
    add_train_parser,
    variant_fields,
)
from .validation import distortion, evaluate

CHECKPOINT = "checkpoint.pt"
VAL_BATCH_KEEP = 8  # validation samples stored in the checkpoint for export's parity check


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
    precision: precision.Precision = field(default_factory=precision.Precision)

    def training_summary(self) -> dict[str, Any]:
        """The manifest's "training" block."""
        return {
            "command": self.command,
            "seconds": round(self.seconds, 2),
            "device": self.device,
            "data": self.data,
            "epochs": self.epochs_run,
            "rate_weight": self.rate_weight,
            **self.precision.summary(),
        }

    def metrics(self) -> dict[str, float]:
        return {"val_psnr_db": self.val_psnr_db, "val_bytes_per_sample_estimate": self.val_bytes_per_sample}


def default_threads() -> int:
    """Cores that other processes leave free (cpu count minus the 1-minute load average), at least 1.

    Why: torch's OpenMP workers spin-wait on each other; with more threads than free cores a
    busy neighbour stalls every step (a README run went from 10 s to 5 min per epoch when one
    other process started). One thread per free core degrades gracefully instead."""
    cores = os.cpu_count() or 1
    try:
        busy = int(round(os.getloadavg()[0]))
    except OSError:
        busy = 0
    return max(1, min(cores, 16) - busy)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda")
    return torch.device(device)


def _batch_loss(model: Any, xb: torch.Tensor,
                rate_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(mean distortion, mean bits, loss to minimise, mean variant penalty) for one batch."""
    terms = training_loss(model, xb, rate_weight, distortion)
    return terms.distortion, terms.bits, terms.loss, float(terms.penalty)


def _check_data(config: ModelConfig, train_set: SampleSet, val_set: SampleSet) -> None:
    for name, s in (("train", train_set), ("validation", val_set)):
        if len(s) == 0:
            raise ValueError(f"the {name} set is empty; load more data or change --val-fraction")
        shape = s.sample_shape
        want = config.sample_shape
        if len(shape) != len(want) or any(w is not None and w != g for w, g in zip(want, shape, strict=True)):
            raise ValueError(f"{name} samples have shape {shape}, the model expects {want}")
    if config.loss == "bce":
        x = train_set.model_domain()
        if float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise ValueError(
                f"loss 'bce' needs model-domain data in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]; "
                "use --loss mse"
            )


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
    if options.augment not in AUGMENTS:
        raise ValueError(f"augment {options.augment!r} is not one of {AUGMENTS}")
    if options.threads or not torch.cuda.is_available():
        torch.set_num_threads(options.threads or default_threads())
    ctx = distributed.from_environment(options.device)  # set when launched by torchrun
    device = distributed.device_for(ctx, resolve_device(options.device))
    main_process = ctx is None or ctx.is_main
    normalization = train_set.normalization
    x_train = train_set.model_domain()
    x_val = val_set.model_domain()
    if options.val_limit is not None and options.val_limit < x_val.shape[0]:
        # evenly spread, so a limit still sees every validation photo or record, not just the first
        x_val = x_val[np.linspace(0, x_val.shape[0] - 1, options.val_limit).round().astype(np.int64)]
    out_dir = Path(options.out) if options.out else None
    ckpt_path = out_dir / CHECKPOINT if out_dir else None

    ckpt: dict[str, Any] = {}
    if options.resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; pass the --out DIR of the earlier run")
        ckpt = load_checkpoint(ckpt_path)
    setting = precision.resolve(options.precision, options.channels_last,
                                ckpt.get("options", {}) if options.resume else None, config.family, device)
    options = replace(options, precision=setting.precision, channels_last=setting.channels_last)  # as recorded
    model = build_model(config).to(device)
    precision.apply(model, setting, device)  # before the optimizer: its state follows the weights' layout
    net = distributed.wrap(model, ctx, config.variant)  # what the loss calls: DDP across processes
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
        if warmstart.is_bundle(options.init_from):  # a shipped bundle: the state that outlives a session
            init_info = warmstart.load_bundle_weights(model, options.init_from)
            warm_bits = warmstart.fit_density(model, x_train, steps=options.density_warmup,
                                              batch_size=options.batch_size, lr=options.lr * options.density_lr_factor,
                                              device=device, seed=options.seed,
                                              progress=options.progress and main_process)
            if main_process:
                print(f"warm start from {options.init_from} ({init_info['bundle']}, {init_info['epochs']} epochs, "
                      f"{init_info['seconds']:.0f} s): density refitted in {options.density_warmup} steps, "
                      f"{warm_bits / 8:.1f} B per sample", file=sys.stderr)
        else:
            init_ckpt = load_checkpoint(options.init_from)
            if ModelConfig.from_dict(init_ckpt["config"]) != config:
                raise ValueError(f"--init-from: {options.init_from} was trained with {init_ckpt['config']}, "
                                 f"not {config.to_dict()}")
            model.load_state_dict(init_ckpt["best_model"] or init_ckpt["model"])
            init_info = {"path": str(options.init_from), "command": init_ckpt.get("command", ""),
                         "seconds": round(float(init_ckpt.get("seconds", 0.0)), 2),
                         "epochs": int(init_ckpt["epoch"]) + 1}
    if options.resume:
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

    next_batch = 0
    if options.resume:
        next_batch = int(ckpt.get("next_batch", 0))  # mid-epoch checkpoints resume at the batch they stopped
        if next_batch:
            start_epoch -= 1
    data_summary = {
        "source": train_set.meta.get("source") or train_set.name,
        "dataset": train_set.meta.get("dataset") or Path(str(train_set.meta.get("folder") or train_set.meta.get("path")
                                                            or train_set.name)).name,
        "name": train_set.name,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "sample_shape": list(train_set.sample_shape),
        "processes": 1 if ctx is None else ctx.world,
    }
    gen = torch.Generator().manual_seed(options.seed)
    aug_gen = torch.Generator().manual_seed(options.seed + 1)
    if options.resume:
        if ckpt.get("augment_rng") is not None:
            aug_gen.set_state(ckpt["augment_rng"])
    else:
        torch.manual_seed(options.seed)
    warn_if_unregularized(model, options.rate_weight)
    t0 = time.perf_counter()
    last_save = time.monotonic()

    def save(epoch_done: int, next_batch: int, run_loss: float = 0.0) -> None:
        """epoch_done: the last whole epoch; next_batch: where the epoch after it stopped (0: not started)."""
        if ckpt_path is None or not main_process:
            return
        out_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        state = {
            "config": config.to_dict(), "model": model.state_dict(), "best_model": best_state,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch_done, "next_batch": next_batch, "run_loss": run_loss, "best_val_loss": best_loss,
            "best_metrics": best_metrics, "history": history, "stale_epochs": stale,
            "seconds": seconds_before + time.perf_counter() - t0, "device": device.type, "data": data_summary,
            "normalization": normalization.to_dict(), "options": asdict(options), "command": options.command,
            "init_from": init_info, "val_batch": x_val[:VAL_BATCH_KEEP].copy(), "torch_rng": torch.get_rng_state(),
            "augment_rng": aug_gen.get_state(),
        }
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)  # a kill mid-write never leaves a torn checkpoint

    epoch = start_epoch - 1
    for epoch in range(start_epoch, options.epochs):
        gen.manual_seed(options.seed * 100003 + epoch)
        order = torch.randperm(x_train.shape[0], generator=gen).numpy()
        model.train()
        steps = distributed.shard(order, options.batch_size, ctx)  # this process's share of each global batch
        bar = tqdm(
            total=len(steps), desc=f"epoch {epoch + 1}/{options.epochs}", initial=next_batch,
            disable=not (options.progress and main_process), leave=True, unit="batch", file=sys.stderr,
        )
        run_loss = float(ckpt.get("run_loss", 0.0)) if next_batch else 0.0
        t_steps = time.perf_counter()  # the steps alone, without validation: what --precision changes
        first_step = 0.0
        for k in range(next_batch, len(steps)):
            xb = torch.from_numpy(x_train[steps[k]]).to(device)
            xb = precision.batch_layout(augment_batch(xb, options.augment, aug_gen), setting)
            # the variant (plain, denoising, sparse, contractive, vae) decides the loss; for plain
            # models it is distortion + rate_weight * bits, and with rate_weight 0 `bits` only
            # reaches the density (latents detached in forward).
            d, bits, loss, penalty = _batch_loss(net, xb, options.rate_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.network_parameters(), options.clip_grad)
            optimizer.step()
            if k == next_batch:
                first_step = time.perf_counter() - t_steps  # oneDNN builds its kernels here; apart in the history
            step_loss = (float(loss.detach()) if model.levels
                         else float(d.detach() + options.rate_weight * bits.detach() + penalty))
            run_loss = 0.9 * run_loss + 0.1 * step_loss if k else step_loss
            bar.update(1)
            if k % 10 == 0:
                bar.set_postfix(loss=f"{run_loss:.3f}", B=f"{float(bits.detach()) / 8:.1f}")
            if options.checkpoint_minutes > 0 and time.monotonic() - last_save > 60.0 * options.checkpoint_minutes:
                save(epoch - 1, k + 1, run_loss)
                last_save = time.monotonic()
        step_seconds = time.perf_counter() - t_steps
        steps_run = len(steps) - next_batch
        next_batch = 0
        metrics = evaluate(model, x_val, normalization, config.loss, options.rate_weight, device,
                           batch_size=32 if model.spatial_dims else 256, corruption=config.corruption)
        bar.set_postfix(loss=f"{run_loss:.3f}", val_psnr=f"{metrics['val_psnr_db']:.2f}dB",
                        B_per_sample=f"{metrics['val_bytes_per_sample']:.1f}")
        bar.close()
        if model.levels and options.progress and main_process:
            tqdm.write("  validation: " + ", ".join(
                f"q{lv} {metrics[f'val_psnr_db_q{lv}']:.2f} dB {metrics[f'val_bytes_per_sample_q{lv}']:.0f} B"
                for lv in range(model.levels)), file=sys.stderr)
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics["val_loss"])
            else:
                scheduler.step()
        history.append({"epoch": epoch, "train_loss": run_loss, "seconds": seconds_before + time.perf_counter() - t0,
                        "train_steps": steps_run, "train_step_seconds": step_seconds,
                        "first_step_seconds": first_step, **metrics})
        if metrics["val_loss"] < best_loss:
            best_loss, stale = metrics["val_loss"], 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_metrics = metrics
        else:
            stale += 1
        save(epoch, 0)
        last_save = time.monotonic()
        if options.patience and stale >= options.patience:
            break
    seconds = seconds_before + time.perf_counter() - t0
    distributed.barrier(ctx)  # rank 0's last checkpoint is on disk before anyone returns
    if best_state is None:
        raise ValueError(f"no epoch ran (epochs={options.epochs}, resumed at {start_epoch}); raise --epochs")
    best = build_model(config)
    best.load_state_dict(best_state)
    best.eval()
    return TrainResult(
        model=best, config=config, normalization=normalization, best_val_loss=best_loss,
        val_psnr_db=float(best_metrics["val_psnr_db"]),
        val_bytes_per_sample=float(best_metrics["val_bytes_per_sample"]),
        epochs_run=epoch + 1, seconds=seconds, device=device.type, history=history, checkpoint=ckpt_path,
        val_batch=x_val[:VAL_BATCH_KEEP].copy(), data=data_summary, rate_weight=options.rate_weight,
        command=options.command, precision=setting,
    )


# -- CLI ------------------------------------------------------------------------------------------

def config_and_options(args: argparse.Namespace, data_shape: list[int]) -> tuple[ModelConfig, TrainOptions]:
    """What `latentwire train ARGS` trains (benchmarks/train_speed.py runs the recipes' loops through it)."""
    sample_shape: list[int | None] = list(data_shape)
    if args.family != "dense":
        sample_shape = [sample_shape[0]] + [None] * (len(sample_shape) - 1)  # fully convolutional: any size
    photo = [128, 128, 128]
    default_layers = {"dense": [512, 256], "gdn2d": photo, "hyper2d": photo}.get(args.family, [32, 64])
    layers = args.layers if args.layers is not None else default_layers
    config = ModelConfig(
        family=args.family, sample_shape=sample_shape, code_size=args.code_size, layers=layers,
        activation="linear" if args.linear else args.activation, loss=args.loss, kernel_size=args.kernel_size,
        blocks=args.blocks,
        output_activation="none" if args.linear else args.output_activation, seed=args.seed,
        rate_levels=args.rate_levels, **variant_fields(args),
    )
    options = TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        rate_weight=args.rate_weight, schedule=args.schedule, patience=args.patience, seed=args.seed,
        device=args.device, threads=args.threads, out=args.out, resume=args.resume, init_from=args.init_from,
        density_warmup=args.density_warmup, precision=args.precision, channels_last=args.channels_last,
        augment=args.augment, val_limit=args.val_limit, clip_grad=args.clip_grad,
        checkpoint_minutes=args.checkpoint_minutes, progress=not args.no_progress,
        command=getattr(args, "command_line", None) or _command_line(),
    )
    return config, options


def run(args: argparse.Namespace) -> int:
    from ..sources import load_source

    source = load_source(args.data, **dict(args.source_option))
    train_set, val_set = source.split(args.val_fraction, seed=args.seed)
    config, options = config_and_options(args, list(source.sample_shape))
    try:
        result = train(config, train_set, val_set, options)
    finally:
        distributed.finish()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports; the others trained their share
    print(
        f"trained {result.epochs_run} epochs in {result.seconds:.1f}s on {result.device}: "
        f"val PSNR {result.val_psnr_db:.2f} dB, ~{result.val_bytes_per_sample:.1f} bytes/sample; "
        f"checkpoint {result.checkpoint}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentwire")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["train", *argv])
    args.command_line = shlex.join(["latentwire", "train", *argv])
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
