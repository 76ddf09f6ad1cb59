"""Images per second that one loader worker reads: an image folder against the same images in shards.

Readers, each on the same training images, in this process (one process = one loader worker), alternated over
``--repeats`` rounds (the median is reported):

- ``folder``: ``FolderSplit`` (one file per image), in a shuffled order, each image under its own seed, as
  training reads it;
- ``shards``: ``ShardStream`` on ``coat data pack``'s shards (tar files read by the standard library's
  ``tarfile``), as in training: shuffled shard order and shuffle buffer, exact quota;
- ``webdataset``: the ``webdataset`` library on the same shards (``WebDataset(urls).shuffle(buffer).decode("pil")``),
  when it is installed.

Each reader decodes to an RGB image and applies the same ``--transform``: ``none`` (reading and decoding only) or
``small`` / ``imagenet`` (the training transform of that recipe). Files come from the page cache after the first
round: this measures what a reader costs on the CPU, not what a slow shared file system costs (where shards' large
sequential reads are the point).

    python benchmarks/bench_data.py --folder data/cifar10 --transform none
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from coat.data.datasets import FolderSplit
from coat.data.shards import ShardStream, pack_folder, read_split
from coat.train.classify import per_image_train_transform
from coat.train.config import RECIPES, TrainConfig
from coat.train.loaders import SeededDataset


def recipe_transform(name: str) -> Callable | None:
    """The training transform of recipe ``name`` (``none``: no transform)."""
    if name == "none":
        return None
    return per_image_train_transform(TrainConfig(**RECIPES[name]))


def folder_reader(folder: Path, transform: Callable | None) -> Iterator:
    split = SeededDataset(FolderSplit(folder / "train", transform))  # each image's own seed, as in training
    order = list(range(len(split)))
    random.Random(0).shuffle(order)
    return (split[index, index] for index in order)


def shard_reader(shards: Path, transform: Callable | None) -> Iterator:
    return iter(ShardStream(read_split(shards, "train"), transform, shuffle=True, batch_size=1))


def webdataset_reader(shards: Path, transform: Callable | None) -> Iterator:
    import webdataset as wds

    split = read_split(shards, "train")
    urls = [str(shards / name) for name in split.filenames]
    images = wds.WebDataset(urls, shardshuffle=len(urls), seed=0, empty_check=False).shuffle(2000)
    pairs = images.decode("pil").to_tuple("jpg;jpeg;png;webp", "cls")
    return (
        (transform(picture.convert("RGB")) if transform else picture.convert("RGB"), label) for picture, label in pairs
    )


def images_per_second(reader: Iterator, count: int) -> float:
    start = time.perf_counter()
    read = sum(1 for _ in zip(range(count), reader))
    return read / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="image folder with train/<class>/*, val/<class>/*")
    parser.add_argument("--transform", choices=["none", *RECIPES], default="none")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    transform = recipe_transform(args.transform)
    readers = {"folder": folder_reader, "shards": shard_reader}
    try:
        import webdataset  # noqa: F401

        readers["webdataset"] = webdataset_reader
    except ImportError:
        print("webdataset is not installed: pip install webdataset to compare it")
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        pack_folder(args.folder, shards, args.shard_size)
        count = read_split(shards, "train").num_samples
        rates: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.repeats):
            for name, reader in readers.items():
                rates[name].append(
                    images_per_second(reader(args.folder if name == "folder" else shards, transform), count)
                )
    folder_rate = statistics.median(rates["folder"])
    print(f"{count} training images of {args.folder}, transform {args.transform}, median of {args.repeats} rounds")
    print("| reader | images/s per worker | vs folder |")
    print("|---|---|---|")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.0f} | {rate / folder_rate:.2f}x |")


if __name__ == "__main__":
    main()
