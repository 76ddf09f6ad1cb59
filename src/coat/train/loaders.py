"""The training and evaluation loaders of a run (classification and detection alike).

Each training image's augmentation is drawn from its own seed, a function of (run seed, epoch,
rank, position in the epoch) only. Augmentations then do not depend on how many workers decode
the images or how long those live: workers persist across epochs (no start-up cost per epoch)
and ``--resume`` still replays a run exactly, with any ``--workers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from .config import RunConfig
from .distributed import DistInfo, RepeatedAugSampler, ShardSampler


class SeededSampler(Sampler[tuple[int, int]]):
    """``sampler``'s indices, each paired with the seed of that sample's augmentation."""

    def __init__(self, sampler: RepeatedAugSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.sampler)
        entropy = [self.sampler.seed, self.sampler.epoch, self.sampler.info.rank]
        seeds = np.random.SeedSequence(entropy).generate_state(len(indices))  # uint32 [len(indices)]
        return zip(indices, seeds.tolist())

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
    """Item ``(index, seed)`` is ``dataset[index]`` drawn with the CPU RNG seeded by ``seed``; the RNG of the
    process that reads it (the main process when there are no workers) is left as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def loader_options(config: RunConfig, collate_fn: Callable) -> dict[str, Any]:
    """The DataLoader options every loader of a run shares: workers (persistent), collation, pinning, seed."""
    return {
        "num_workers": config.workers,
        "collate_fn": collate_fn,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": config.workers > 0,
        # The workers' base seed comes from here, not from the main process's RNG, so the main process draws
        # the same numbers (mixing, drop path) whether its workers are new or persistent.
        "generator": torch.Generator().manual_seed(config.seed),
    }


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader which epoch starts: its sampler (map-style data) or its data set (streamed shards)."""
    (loader.dataset if isinstance(loader.dataset, IterableDataset) else loader.sampler).set_epoch(epoch)


def stream_loaders(
    train_set: IterableDataset, val_set: IterableDataset, config: RunConfig, collate_fn: Callable
) -> tuple[DataLoader, DataLoader]:
    """Loaders of streamed data sets (``coat.data.shards.ShardStream``) that split and shuffle themselves."""
    common = loader_options(config, collate_fn)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, drop_last=True, **common)
    return train_loader, DataLoader(val_set, batch_size=config.batch_size, **common)


def run_loaders(
    train_set: Dataset,
    val_set: Dataset,
    info: DistInfo,
    config: RunConfig,
    collate_fn: Callable,
    repeats: int = 1,
    val_batch_size: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled, sharded training batches (each image ``repeats`` times an epoch) and sharded evaluation ones
    (``val_batch_size`` per batch; default: the training batch), with the run's seed, batch size and workers."""
    seed, batch_size = config.seed, config.batch_size
    common = loader_options(config, collate_fn)
    sampler = SeededSampler(RepeatedAugSampler(len(train_set), info, repeats, shuffle=True, seed=seed))
    train_loader = DataLoader(
        SeededDataset(train_set), batch_size=batch_size, sampler=sampler, drop_last=True, **common
    )
    val_sampler = ShardSampler(len(val_set), info)
    val_loader = DataLoader(val_set, batch_size=val_batch_size or batch_size, sampler=val_sampler, **common)
    return train_loader, val_loader
