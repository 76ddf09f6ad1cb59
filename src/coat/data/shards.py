"""Image classification data in WebDataset shards: tar files of samples, as timm reads and writes them.

A sample is the tar members that share a key (the member name up to its first dot): the image (``KEY.jpg``,
``.jpeg``, ``.png`` or ``.webp``) and its class index as text (``KEY.cls``). A shard folder holds ``_info.json``,
timm's split info (``{"splits": {"train": {"name", "num_samples", "filenames", "shard_lengths"}, "val": ...}}``),
to which ``coat data pack`` adds the class names (``"class_names": [...]``).

``ShardStream`` reads one split: shards split over processes and loader workers without overlap, in an order
and with a sample shuffle buffer drawn from (run seed, epoch) only, and an exact number of batches per epoch on
every process (training), so the lr schedule and DDP agree; tar files are read with the standard library's
``tarfile``, one streaming pass per shard.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..files import atomic_write, write_json
from ..train.distributed import DistInfo
from .datasets import CorruptImageError, DataError, FolderSplit, load_rgb, split_names

SHARD_PREFIX = "wds:"
INFO_FILE = "_info.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
DEFAULT_SHARD_SIZE = 1000  # samples per shard
DEFAULT_SHUFFLE_BUFFER = 2000  # samples held for shuffling in each loader worker


@dataclass(frozen=True)
class ShardSplit:
    """One split of a shard folder: its tar files, how many samples each holds, and the class names."""

    root: Path
    name: str
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]
    class_names: list[str]

    @property
    def num_samples(self) -> int:
        return sum(self.shard_lengths)


def shard_root(data: str) -> Path | None:
    """The folder of a ``wds:DIR`` data argument, or ``None`` for anything else."""
    return Path(data[len(SHARD_PREFIX) :]) if data.startswith(SHARD_PREFIX) else None


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion, as WebDataset shard lists are written: ``{000000..000099}`` (numeric ranges,
    zero-padded to the width written) and ``{a,b,c}``; several groups expand left to right."""
    group = re.search(r"\{([^{}]*)\}", pattern)
    if group is None:
        return [pattern]
    numbers = re.fullmatch(r"(\d+)\.\.(\d+)", group.group(1))
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        items = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        items = group.group(1).split(",")
    head, tail = pattern[: group.start()], pattern[group.end() :]
    return [name for item in items for name in expand_braces(head + item + tail)]


def is_shard_pattern(split: str) -> bool:
    """Whether a split argument names shard files (``train-{0000..0099}.tar``) rather than a split of the info."""
    pattern = split.partition("|")[0]
    return "{" in pattern or pattern.endswith(".tar")


def read_split(root: Path, split: str, num_samples: int | None = None, num_classes: int | None = None) -> ShardSplit:
    """One split of the shard folder ``root``, or a one-line ``DataError``: a split named in its ``_info.json``
    (``val`` also finds timm's ``validation``), or a brace pattern of shard files holding ``num_samples`` samples
    (or timm's ``PATTERN|SAMPLES``; spread evenly over the shards for the readers' shares). Class names come from
    the info (``coat data pack`` writes them) or are the indices of ``num_classes`` classes."""
    info_path = root / INFO_FILE
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{info_path} is not JSON ({err}); rewrite it with `coat data pack`") from None
    if not isinstance(info, dict):
        raise DataError(f"{info_path} is not a split info (a JSON object); rewrite it with `coat data pack`")
    if is_shard_pattern(split):
        pattern, _, count = split.partition("|")  # timm's "PATTERN|SAMPLES" form carries the count
        if count:
            num_samples = int(count) if count.isdigit() else -1
            if num_samples < 1:
                raise DataError(f"the sample count after '|' in {split} must be a positive whole number")
        filenames = tuple(expand_braces(pattern))
        if num_samples is None:
            raise DataError(
                f"the shard pattern {split} needs the number of samples it holds: give --train-samples / "
                "--val-samples, or describe the split in _info.json"
            )
        lengths = tuple(len(range(index, num_samples, len(filenames))) for index in range(len(filenames)))
    else:
        filenames, lengths = info_split(info, info_path, split)
        if num_samples is not None:
            raise DataError(
                f"--train-samples / --val-samples apply to shard patterns; {info_path} counts split '{split}'"
            )
    missing = [name for name in filenames if not (root / name).is_file()]
    if missing or len(filenames) != len(lengths):
        raise DataError(f"{root} lacks shards of split {split} ({missing[:3]}); copy them or re-pack")
    return ShardSplit(root, split, filenames, lengths, class_names(info, info_path, num_classes))


def info_split(info: dict[str, Any], info_path: Path, split: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(file names, samples per file) of ``split`` in the split info ``info`` read from ``info_path``."""
    if not info:
        raise DataError(
            f"{info_path} does not exist; write shards with `coat data pack FOLDER {info_path.parent}`, or name "
            "shard files with --train-split / --val-split PATTERN"
        )
    try:
        splits = info["splits"]
        entry = next((splits[name] for name in split_names(split) if name in splits), None)
        return tuple(entry["filenames"]), tuple(int(n) for n in entry["shard_lengths"])
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{info_path} has no usable '{split}' split with filenames and shard_lengths "
            f"({type(err).__name__}: {err}); rewrite it with `coat data pack`"
        ) from None


def class_names(info: dict[str, Any], info_path: Path, num_classes: int | None) -> list[str]:
    """The class names of the info, else ``num_classes`` indices as names; they must agree when both are given."""
    names = info.get("class_names")
    if names is None and num_classes is None:
        raise DataError(
            f"the shards in {info_path.parent} name no classes (no class_names in {INFO_FILE}); give --num-classes"
        )
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise DataError(f"{info_path} names {len(names)} classes, not {num_classes}")
    return [str(name) for name in names] if names is not None else [str(index) for index in range(num_classes)]


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike, shard_size: int = DEFAULT_SHARD_SIZE) -> dict:
    """Write ``folder/train`` and ``folder/val`` (class folders) as shards of ``shard_size`` samples in ``out``
    (a new folder) with ``_info.json``; returns the info. Images are stored as their files' bytes."""
    folder, out = Path(folder), Path(out)
    if shard_size < 1:
        raise DataError("--shard-size must be at least 1")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty; choose a new folder")
    splits = {name: FolderSplit(folder / name) for name in ("train", "val")}
    if splits["train"].classes != splits["val"].classes:
        raise DataError(f"{folder}/train and {folder}/val have different class folders; give both the same classes")
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"name": folder.name, "class_names": splits["train"].classes, "splits": {}}
    for name, split in splits.items():
        samples = split.folder.samples  # (path, class index), sorted by class then file
        filenames, lengths = [], []
        for index, start in enumerate(range(0, len(samples), shard_size)):
            filename = f"{name}-{index:06d}.tar"
            chunk = samples[start : start + shard_size]
            atomic_write(out / filename, lambda tmp, chunk=chunk, start=start: write_shard(tmp, chunk, start))
            filenames.append(filename)
            lengths.append(len(chunk))
        entry = {"name": name, "num_samples": len(samples), "filenames": filenames, "shard_lengths": lengths}
        info["splits"][name] = entry
    write_json(out / INFO_FILE, info)
    return info


def write_shard(path: Path, samples: list[tuple[str, int]], first_index: int) -> None:
    """A tar of ``KEY.<image extension>`` (the file's bytes) and ``KEY.cls`` per sample, keys numbered from
    ``first_index``."""
    with tarfile.open(path, "w") as tar:
        for offset, (image_path, label) in enumerate(samples):
            key = f"{first_index + offset:09d}"
            extension = Path(image_path).suffix.lower().lstrip(".") or "jpg"
            members = {f"{key}.{extension}": Path(image_path).read_bytes(), f"{key}.cls": str(label).encode()}
            for member, data in members.items():
                entry = tarfile.TarInfo(member)
                entry.size, entry.mode = len(data), 0o644
                tar.addfile(entry, io.BytesIO(data))


def read_samples(path: Path) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, class index) of each sample of the tar ``path``, in order, in one streaming pass."""
    key, members = None, {}
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            member_key, _, extension = name.partition(".")
            if member_key != key and key is not None:
                yield sample_of(path, key, members)
                members = {}
            key = member_key
            members[extension.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield sample_of(path, key, members)


def sample_of(path: Path, key: str, members: dict[str, bytes]) -> tuple[str, bytes, int]:
    image = next((members[k] for k in IMAGE_KEYS if k in members), None)
    if image is None or "cls" not in members:
        raise DataError(f"sample {key} of {path} lacks an image ({'/'.join(IMAGE_KEYS)}) or a .cls; re-pack it")
    return key, image, int(members["cls"])


class ShardStream(IterableDataset):
    """One split's samples as ``(transformed image, class index)`` (``None`` for a corrupt image with
    ``skip_corrupt``).

    Training (``shuffle``): each (process, worker) reads its share of the shards, ordered by (seed, epoch), through
    a shuffle buffer, and yields exactly its quota of whole batches; every process yields ``len(self)`` samples
    per epoch (``num_samples // world_size`` rounded down to whole batches), split over its workers in proportion
    to what they read, re-reading its shards if its share falls short. Each sample's augmentation is drawn from
    its own seed. ``repeats`` > 1 is repeated augmentation (DeiT's recipe): each image read enters the shuffle
    buffer that many times, so an epoch of the same length holds 1 / repeats as many distinct images (DeiT's
    sampler puts the copies on different processes; here they stay in one, spread by the buffer). Evaluation:
    every sample exactly once, shards (or, with fewer shards than readers, samples) split over processes and
    workers, in order. ``set_epoch`` reaches persistent workers (a shared value).
    """

    def __init__(
        self,
        split: ShardSplit,
        transform: Callable | None,
        *,
        shuffle: bool,
        info: DistInfo = DistInfo(),
        batch_size: int = 1,
        seed: int = 0,
        repeats: int = 1,
        buffer: int = DEFAULT_SHUFFLE_BUFFER,
        skip_corrupt: bool = False,
    ) -> None:
        self.split, self.transform, self.info = split, transform, info
        self.batch_size, self.shuffle, self.repeats = batch_size, shuffle, repeats
        self.seed, self.buffer, self.skip_corrupt = seed, buffer, skip_corrupt
        self.classes = split.class_names
        self._epoch = multiprocessing.Value("q", 0, lock=False)  # read by persistent workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def __len__(self) -> int:
        if self.shuffle:
            return self.split.num_samples // self.info.world_size // self.batch_size * self.batch_size
        return math.ceil(self.split.num_samples / self.info.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int] | None]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        slot = self.info.rank * workers + worker_id  # this reader among all processes' loader workers
        readers = self.info.world_size * workers
        order = list(range(len(self.split.filenames)))
        if not self.shuffle:
            yield from (self.decode(*sample) for sample in self.one_pass(order, slot, readers))
            return
        epoch = self._epoch.value
        random.Random(f"{self.seed}-{epoch}").shuffle(order)  # the same order in every process and worker
        shares = self.reader_shares(order, readers)[self.info.rank * workers : (self.info.rank + 1) * workers]
        quota = split_in_proportion(len(self) // self.batch_size, shares)[worker_id] * self.batch_size
        entropy = [self.seed, epoch, self.info.rank, worker_id]
        rng = random.Random(str(entropy))
        sample_seeds = np.random.SeedSequence(entropy).generate_state(quota).tolist()  # one per sample
        stream = self.shuffled(self.passes(order, slot, readers), rng, min(self.buffer, quota))
        for position, sample in enumerate(stream):
            if position == quota:
                return
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seeds[position])
                yield self.decode(*sample)

    def reader_shares(self, order: list[int], readers: int) -> list[int]:
        """How many samples each reader (process x worker slot) reads in one pass (``one_pass``)."""
        lengths, total = self.split.shard_lengths, self.split.num_samples
        if len(order) >= readers:
            return [sum(lengths[index] for index in order[slot::readers]) for slot in range(readers)]
        return [len(range(slot, total, readers)) for slot in range(readers)]

    def one_pass(self, order: list[int], slot: int, readers: int) -> Iterator[tuple[str, bytes, int]]:
        """This reader's share of the shards in ``order`` as (sample name, image bytes, class index): whole shards
        when there are at least as many shards as readers, otherwise every ``readers``-th sample (no sample is read
        by two readers either way)."""
        by_shard = len(order) >= readers
        shards = [
            self.split.root / self.split.filenames[index] for index in (order[slot::readers] if by_shard else order)
        ]
        samples = (
            (f"sample {key} of {shard}", image, label) for shard in shards for key, image, label in read_samples(shard)
        )
        for position, sample in enumerate(samples):
            if by_shard or position % readers == slot:
                yield sample

    def passes(self, order: list[int], slot: int, readers: int) -> Iterator[tuple[str, bytes, int]]:
        """``one_pass`` over and over (the caller stops at its quota)."""
        while True:
            read = 0
            for read, item in enumerate(self.one_pass(order, slot, readers), start=1):  # noqa: B007
                yield from [item] * self.repeats
            if not read:
                raise DataError(
                    f"{self.split.root} has {self.split.num_samples} {self.split.name} samples, too few to give each "
                    f"of {readers} readers (processes x --workers) one; use fewer workers"
                )

    @staticmethod
    def shuffled(items: Iterator[Any], rng: random.Random, buffer: int) -> Iterator[Any]:
        """``items`` through a buffer of ``buffer`` items: each output is a random pick of what the buffer holds."""
        held: list[Any] = []
        for item in items:
            held.append(item)
            if len(held) >= buffer:
                index = rng.randrange(len(held))
                held[index], held[-1] = held[-1], held[index]
                yield held.pop()
        rng.shuffle(held)
        yield from held

    def decode(self, name: str, image: bytes, label: int) -> tuple[Any, int] | None:
        try:
            picture = load_rgb(io.BytesIO(image), name=name)
        except CorruptImageError:
            if self.skip_corrupt:
                return None
            raise
        return (self.transform(picture) if self.transform else picture), label


def split_in_proportion(total: int, shares: list[int]) -> list[int]:
    """``total`` split into whole parts in proportion to ``shares`` (largest remainders first, ties to the
    earlier part); equal parts when every share is 0."""
    weights = shares if sum(shares) else [1] * len(shares)
    exact = [total * weight / sum(weights) for weight in weights]
    parts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(parts)), key=lambda i: (parts[i] - exact[i], i))
    for index in by_remainder[: total - sum(parts)]:
        parts[index] += 1
    return parts
