"""One code path from one process to many nodes: torchrun sets the environment, we read it.

Multi-node launch (run on every node; node_rank 0..N-1)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint $MASTER_HOST:29500 --rdzv-id coat-run \\
        -m coat.cli train --data /data/imagenet --model coat_small --output runs/coat_small --resume auto
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU (one per process on a node, by ``local_rank``), else the CPU."""
    device = torch.device(
        "cuda" if requested == "auto" and torch.cuda.is_available() else "cpu" if requested == "auto" else requested
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"process {local_rank} of this node has no GPU of its own: {torch.cuda.device_count()} "
                "CUDA GPU(s) are visible; start at most that many processes per node "
                "(torchrun --nproc-per-node) or pass --device cpu"
            )
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, Gloo on CPU), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over processes (in place) and return it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics, ...). DDP broadcasts them only at the start
    of each training forward, so after an epoch every other rank holds statistics updated by its own last batch,
    and its evaluation would score a model that no checkpoint holds."""
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def sync_batch_norm(module: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """Under DDP on CUDA, BatchNorm layers normalise over the global batch (``SyncBatchNorm``, as the UperNet and
    Cascade R-CNN recipes train with 2 images per GPU); elsewhere ``module`` is returned as it is (Gloo has no
    SyncBatchNorm). The layers are swapped inside ``module``, keeping the same parameter and buffer tensors, so an
    optimizer built before still holds them and the state dict keys stay the same."""
    if info.enabled and device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """Every process's ``value`` (picklable, from our own code), in rank order."""
    if not info.enabled:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class RepeatedAugSampler(Sampler[int]):
    """Repeated augmentation (Hoffer et al.; used by the authors): each image appears ``repeats``
    times per epoch, on different processes, with different augmentations; every process still
    sees ``ceil(len / world_size)`` samples per epoch. ``repeats=1`` is a plain shuffling
    distributed sampler. The order depends only on (seed, epoch), so a resumed run replays it.
    """

    def __init__(self, size: int, info: DistInfo, repeats: int = 1, shuffle: bool = True, seed: int = 0) -> None:
        self.size, self.info, self.repeats, self.shuffle, self.seed = size, info, repeats, shuffle, seed
        self.num_samples = math.ceil(size / info.world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        order = order.repeat_interleave(self.repeats)  # [size * repeats]
        total = math.ceil(len(order) / self.info.world_size) * self.info.world_size
        order = torch.cat([order, order[: total - len(order)]])  # pad so every process gets as many
        mine = order[self.info.rank :: self.info.world_size]
        return iter(mine[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Evaluation: process r takes indices r, r + world, ... (no padding, so sums are exact)."""

    def __init__(self, size: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, size, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
