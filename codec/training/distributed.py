"""Training across processes: `torchrun --nproc-per-node N -m latentwire.codec.training.train ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; each process then trains one replica of the model
on its own share of every global batch, and DistributedDataParallel averages the gradients, so
the replicas stay identical. gloo on CPUs, nccl on GPUs (one GPU per process, LOCAL_RANK).
Every replica validates on the whole validation set and reaches the same numbers, so early
stopping and best-model choices agree without extra messages; only rank 0 writes checkpoints
(and the caller only exports from rank 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

# variants whose loss reaches every parameter through the model's own forward (what DDP needs);
# a VAE decodes from encode_distribution and a contractive model differentiates twice
DDP_VARIANTS = ("plain", "denoising", "sparse")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment(device: str) -> DistContext | None:
    """The process group torchrun describes, initialised; None when run as one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank, world, local, backend)


def device_for(ctx: DistContext | None, device: torch.device) -> torch.device:
    if ctx is not None and ctx.backend == "nccl":
        return torch.device("cuda", ctx.local_rank)
    return device


class ReplicaView:
    """The model as the training loss sees it: calls go through DDP (so gradients are averaged),
    attributes (config, density, levels...) come from the wrapped model."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel) -> None:
        self._ddp = ddp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddp.module, name)


def wrap(model: nn.Module, ctx: DistContext | None, variant: str) -> Any:
    """The model or, across processes, a ReplicaView of it in DistributedDataParallel."""
    if ctx is None:
        return model
    if variant not in DDP_VARIANTS:
        raise ValueError(f"training variant {variant!r} across processes is not supported (DDP needs the loss to go "
                         f"through the model's forward): use one of {DDP_VARIANTS}, or train it in one process")
    ids = [ctx.local_rank] if ctx.backend == "nccl" else None
    return ReplicaView(nn.parallel.DistributedDataParallel(model, device_ids=ids))


def shard(order: np.ndarray, batch_size: int, ctx: DistContext | None) -> list[np.ndarray]:
    """This process's sample indices for each step: the global batch is batch_size x world samples
    of the shared (seeded) order, and process r takes the r-th slice of it."""
    if ctx is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    step = batch_size * ctx.world
    # whole global batches only: every process must take the same number of steps, or DDP waits forever
    return [order[s + ctx.rank * batch_size : s + (ctx.rank + 1) * batch_size]
            for s in range(0, len(order) - step + 1, step)]


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None:
        dist.barrier()


def finish() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def batches(x: np.ndarray, steps: list[np.ndarray], device: torch.device) -> Iterator[torch.Tensor]:
    for idx in steps:
        yield torch.from_numpy(x[idx]).to(device)
