"""Training loaders: per-sample augmentation seeds make batches independent of workers and their lifetimes."""

import os

import torch
from torch.utils.data import Dataset

from coat.train.config import RunConfig
from coat.train.distributed import DistInfo, RepeatedAugSampler
from coat.train.loaders import SeededSampler, run_loaders


class RandomDraws(Dataset):
    """Item i: i and three numbers drawn from the CPU RNG, as a random augmentation draws them."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.rand(3)


def epochs_of_batches(workers: int, epochs: int = 2, rank: int = 0) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    train, _ = run_loaders(
        RandomDraws(),
        RandomDraws(),
        DistInfo(rank=rank, world_size=2),
        RunConfig(seed=7, batch_size=2, workers=workers),
        torch.utils.data.default_collate,
    )
    runs = []
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        runs.append([(indices, draws) for indices, draws in train])
    return runs


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for epoch_a, epoch_b in zip(a, b):
        assert len(epoch_a) == len(epoch_b) == 3
        for (ia, da), (ib, db) in zip(epoch_a, epoch_b):
            assert torch.equal(ia, ib) and torch.equal(da, db)


def test_batches_do_not_depend_on_workers_or_their_lifetime():
    in_main_process = epochs_of_batches(workers=0)
    persistent_workers = epochs_of_batches(workers=2)
    assert_same_batches(in_main_process, persistent_workers)
    # a resumed run builds new loaders and starts at its epoch: it reads what the uninterrupted run read
    resumed = run_loaders(
        RandomDraws(),
        RandomDraws(),
        DistInfo(rank=0, world_size=2),
        RunConfig(seed=7, batch_size=2, workers=2),
        torch.utils.data.default_collate,
    )[0]
    resumed.sampler.set_epoch(1)
    assert_same_batches(in_main_process[1:], [[(i, d) for i, d in resumed]])


def test_draws_differ_between_epochs_ranks_and_repeats():
    epochs = epochs_of_batches(workers=0)
    other_rank = epochs_of_batches(workers=0, epochs=1, rank=1)
    draws = [d for epoch in epochs + other_rank for _, batch in epoch for d in batch]
    assert len({tuple(d.tolist()) for d in draws}) == len(draws)  # 36 samples, 36 different augmentations
    # repeated augmentation: each image three times an epoch, on three processes, each time drawn differently
    pairs = [
        pair for rank in range(3) for pair in SeededSampler(RepeatedAugSampler(4, DistInfo(rank, 3), repeats=3, seed=0))
    ]
    indices = sorted(i for i, _ in pairs)
    assert len(indices) == 6 and indices[:3] == [indices[0]] * 3 and indices[3:] == [indices[3]] * 3
    assert len({s for _, s in pairs}) == 6


def test_reading_leaves_the_callers_rng_as_it_was():
    train, _val = run_loaders(
        RandomDraws(),
        RandomDraws(),
        DistInfo(),
        RunConfig(seed=0, batch_size=4, workers=0),
        torch.utils.data.default_collate,
    )
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    for _ in train:
        pass
    assert torch.equal(torch.rand(5), expected)


class ReaderPid(RandomDraws):
    def __getitem__(self, index: int) -> int:
        return os.getpid()


def test_the_same_worker_processes_serve_every_epoch():
    train, _ = run_loaders(
        ReaderPid(),
        ReaderPid(),
        DistInfo(),
        RunConfig(seed=0, batch_size=4, workers=2),
        torch.utils.data.default_collate,
    )
    readers = []
    for epoch in range(2):
        train.sampler.set_epoch(epoch)
        readers.append({int(pid) for batch in train for pid in batch})
    assert readers[0] == readers[1] and len(readers[0]) == 2 and os.getpid() not in readers[0]
