"""What `latentwire train` and `latentwire export` accept: options, defaults and parsers, without torch.

Why apart from train.py and export.py: their parsers must answer --help (and reject a bad option)
on a machine without the [train] extra, and the vocabulary below (families, variants, activations)
is shared by the CLI, the model registry and the tests. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from ..sources import source_option

FAMILIES = ("conv1d", "conv2d", "dense", "gdn2d", "hyper2d")  # the model registry's keys (models/registry.py)
ACTIVATIONS = ("relu", "gelu", "leaky_relu", "tanh", "linear")
LOSSES = ("mse", "bce")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "none")
VARIANTS = ("plain", "denoising", "sparse", "contractive", "vae")
AUGMENTS = ("", "flip", "ecg")
SCHEDULES = ("cosine", "plateau", "none")
PRECISIONS = ("fp32", "bf16")  # training/precision.py: the transforms' arithmetic while training
PARITY_TOLERANCE = 1e-4  # export: max |torch - onnxruntime| over latents and reconstructions

TRAIN_DESCRIPTION = """`latentwire train`: rate-distortion training of an autoencoder family, with checkpoints.

Loss per sample = distortion + rate_weight * bits, where
  distortion = squared error summed over the sample's elements, in the MODEL domain (mse),
               or binary cross-entropy summed the same way (bce, data in [0, 1]);
  bits       = -sum log2 p(y_tilde) under the learned factorized density.
So rate_weight is "squared model-domain error per bit": at the optimum one more bit buys a drop of
rate_weight in summed squared error. For MNIST ([0, 1] pixels) 0.01 gives a 784-512-256-32 model
of ~20 dB PSNR at ~14 bytes per digit after 12 epochs; larger values give smaller, blurrier codes.
rate_weight 0 trains a plain autoencoder (no quantization noise) and fits the density on the side so the bundle still
gets entropy tables. Validation always rounds the latent, exactly as the codec does, so the
reported PSNR and bytes/sample are what the exported bundle delivers (before entropy-coder overhead)."""

EXPORT_DESCRIPTION = """`latentwire export`: a trained model -> a codec bundle (two ONNX graphs + manifest.json).

The encoder and decoder are separate graphs because senders and receivers each need only one.
Export is only trusted after a parity check: onnxruntime must reproduce torch's latents and
reconstructions on real validation samples (and, for conv families, at a second size that
exercises the pad/crop path), otherwise the export fails loudly with the measured difference."""


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
    threads: int | None = None  # torch CPU threads (default: default_threads(), the cores other processes leave free)
    augment: str = ""  # "flip": random horizontal and vertical flips per sample (photos)
    val_limit: int | None = None  # validate on N samples spread evenly over the validation set (each epoch pays for it)
    clip_grad: float = 0.0  # clip the network's gradient norm to this (0: off); GDN models train steadier with 1.0
    checkpoint_minutes: float = 0.0  # also checkpoint mid-epoch this often (0: at epoch ends only); resumes mid-epoch
    out: str | None = None  # directory for checkpoint.pt
    resume: bool = False  # continue from out/checkpoint.pt
    init_from: str | None = (
        None  # warm start: an earlier run's best weights, or a bundle's; fresh optimizer and schedule
    )
    density_warmup: int = 2000  # --init-from BUNDLE: steps fitting the density to the frozen network first
    precision: str | None = None  # "fp32" | "bf16" (None: a resumed checkpoint's, else the family's default)
    channels_last: bool | None = None  # NHWC weights and batches (None: a resumed checkpoint's, else the family's)
    progress: bool = True
    command: str = ""  # the command line recorded in the checkpoint and manifest


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1000,500,250, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.026,0.013, got {text!r}") from None


def add_train_parser(subparsers: Any, name: str = "train") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="train an autoencoder", description=TRAIN_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data source (MNIST folder, .npy/.npz, image folder, WFDB folder)")
    p.add_argument("--source-option", action="append", type=source_option, default=[], metavar="KEY=VALUE",
                   help="option for the data loader, e.g. limit=5000, size=64,64 (repeatable)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--family", default="dense", choices=list(FAMILIES),
                   help="dense, conv2d (images), conv1d (series), gdn2d (photos: Balle et al.'s GDN transform), "
                   "hyper2d (gdn2d with a mean-scale hyperprior)")
    p.add_argument(
        "--layers",
        type=_int_list,
        default=None,
        help="dense: nodes per encoder layer (default 512,256); conv: channels per stride-2 stage (default 32,64); "
        "gdn2d, hyper2d: channels of the stages before the latent's (default 128,128,128: 4 downsamplings)",
    )
    p.add_argument("--code-size", type=int, default=32, help="dense: latent dims; conv: latent channels")
    p.add_argument("--activation", default="relu", choices=list(ACTIVATIONS))
    v = p.add_argument_group(
        "autoencoder variant (codec/models/variants.py; weights add to the per-sample summed distortion)"
    )
    v.add_argument("--variant", default=None, choices=list(VARIANTS),
                   help="plain (default), denoising, sparse, contractive or vae; implied by the options below")
    v.add_argument("--linear", action="store_true",
                   help="no nonlinearity anywhere (activation and output 'linear'): the autoencoder PCA solves")
    v.add_argument("--corruption", default=None, metavar="mask:P|gaussian:SIGMA",
                   help="denoising: zero a fraction P of inputs, or add model-domain noise of std SIGMA "
                        "(default mask:0.3)")
    v.add_argument("--sparsity", default=None, metavar="l1:W|kl:RHO[:W]",
                   help="sparse: W * sum|code|, or W * KL(RHO || mean activity) with activity = code symbol != 0 "
                        "(default kl:0.05)")
    v.add_argument("--contractive-weight", type=float, default=None,
                   help="contractive: weight of the encoder Jacobian's squared Frobenius norm (default 0.1)")
    v.add_argument("--beta", type=float, default=None, help="vae: weight of the KL term in nats (default 1)")
    p.add_argument("--loss", default="mse", choices=list(LOSSES))
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--blocks", type=int, default=0,
                   help="conv: residual blocks after every stride-2 stage (encoder and decoder)")
    p.add_argument("--output-activation", default="auto", choices=list(OUTPUT_ACTIVATIONS))
    p.add_argument("--rate-weight", type=float, default=TrainOptions.rate_weight,
                   help="lambda in loss = summed squared error + lambda * bits per sample (0: plain autoencoder)")
    p.add_argument("--rate-levels", type=_float_list, default=[], metavar="W0,W1,...",
                   help="variable rate: one --rate-weight per quality level, cheapest first (e.g. 0.026,0.013,0.0064); "
                        "each level learns per-channel gains, one network serves all")
    p.add_argument("--augment", default="", choices=list(AUGMENTS),
                   help="flip: random flips of each training sample (photos); ecg: amplitude scaling, baseline wander "
                        "and noise per window and lead (series in mV)")
    p.add_argument("--val-limit", type=int, default=None,
                   help="validate on N samples spread evenly over the validation set (each epoch pays for validation)")
    p.add_argument("--clip-grad", type=float, default=0.0, help="clip the gradient norm (0: off)")
    p.add_argument("--checkpoint-minutes", type=float, default=0.0,
                   help="also checkpoint mid-epoch this often; --resume continues at that batch (long photo runs)")
    p.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    p.add_argument("--batch-size", type=int, default=TrainOptions.batch_size)
    p.add_argument("--lr", type=float, default=TrainOptions.lr)
    p.add_argument("--weight-decay", type=float, default=TrainOptions.weight_decay)
    p.add_argument("--schedule", default="cosine", choices=list(SCHEDULES))
    p.add_argument("--patience", type=int, default=TrainOptions.patience, help="early stopping (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: cores not busy at start, i.e. cpu count minus the 1-minute "
                        "load average, at least 1). More threads than free cores makes every step wait on a busy "
                        "neighbour; pass 1 on a shared machine")
    p.add_argument("--out", required=True, help="directory for checkpoint.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", default=None, metavar="RUN|BUNDLE",
                   help="warm start from an earlier run's best weights, or from a bundle directory's graphs (e.g. "
                        "codec/assets/bsds-gdn2d: how a long run continues in a later session; the density is "
                        "refitted first). Same config; fresh optimizer and schedule")
    p.add_argument(
        "--density-warmup",
        type=int,
        default=TrainOptions.density_warmup,
        metavar="STEPS",
        help="with --init-from BUNDLE: batches that fit the density alone before training (default %(default)s)",
    )
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="the transforms' convolutions while training: fp32, or bf16 autocast (density, rate, loss, "
                        "GDN's normalizer and the optimizer stay float32; export is float32 either way). Default: "
                        "a resumed run's, else the family's measured best: gdn2d bf16 where the CPU (AVX-512 BF16, "
                        "AMX) or GPU has native bf16, other families fp32")
    p.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction,
                   help="2-D families: channels-last (NHWC) weights and batches, faster convolutions on CPU. "
                        "Default: a resumed run's, else on for gdn2d, off for the others")
    p.add_argument("--no-progress", action="store_true")
    return p


def add_export_parser(subparsers: Any, name: str = "export") -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="export a checkpoint as a codec bundle", description=EXPORT_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.pt or the training --out directory")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--name", default=None, help="human name recorded in the manifest")
    p.add_argument("--calibrate-data", default=None,
                   help="data source to calibrate the entropy tables and quality levels on right after export")
    p.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE, help="parity tolerance (max abs diff)")
    return p


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
