"""Image classification data from Hugging Face ``datasets``: ``--data hfds:NAME_OR_PATH`` (extra ``hfds``).

``NAME_OR_PATH`` is a folder written by ``DatasetDict.save_to_disk``, a local dataset folder ``load_dataset``
reads (Parquet, an image folder, a dataset repository), or a dataset name already in the Hugging Face cache;
``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` keep ``datasets`` off the network, as the library documents.
A split is a map-style dataset with one ``Image`` column and one ``ClassLabel`` column, whose names are the
class names. Images are decoded here (from the stored bytes or file), so an unreadable one is named by its row
and skipped with ``--skip-corrupt`` like a file in a folder.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..extras import require
from .datasets import CorruptImageError, DataError, load_rgb, split_names

HF_PREFIX = "hfds:"


def hf_source(data: str) -> str | None:
    """The dataset of an ``hfds:NAME_OR_PATH`` data argument, or ``None`` for anything else."""
    return data[len(HF_PREFIX) :] if data.startswith(HF_PREFIX) else None


class HFImages(Dataset):
    """One split of a Hugging Face dataset as ``(transformed RGB image, class index)`` (``None`` for an unreadable
    image with ``skip_corrupt``); ``classes`` are its ``ClassLabel`` names."""

    def __init__(self, split: Any, name: str, transform: Callable | None = None, skip_corrupt: bool = False) -> None:
        import datasets

        image_column, label_column = image_and_label_columns(split.features, name)
        self.rows = split.cast_column(image_column, datasets.Image(decode=False))  # {"bytes", "path"} per row
        self.image_column, self.label_column, self.name = image_column, label_column, name
        self.classes: list[str] = list(split.features[label_column].names)
        self.transform, self.skip_corrupt = transform, skip_corrupt

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        row = self.rows[index]
        stored = row[self.image_column]
        source = io.BytesIO(stored["bytes"]) if stored.get("bytes") else stored.get("path")
        try:
            picture = load_rgb(source, name=f"row {index} of {self.name}")
        except CorruptImageError:
            if self.skip_corrupt:
                return None
            raise
        return (self.transform(picture) if self.transform else picture), int(row[self.label_column])


def image_and_label_columns(features: Any, name: str) -> tuple[str, str]:
    """The one ``Image`` and the one ``ClassLabel`` column of ``features``, or a one-line ``DataError``."""
    import datasets

    images = [column for column, kind in features.items() if isinstance(kind, datasets.Image)]
    labels = [column for column, kind in features.items() if isinstance(kind, datasets.ClassLabel)]
    if len(images) != 1 or len(labels) != 1:
        raise DataError(
            f"{name} has image columns {images} and class-label columns {labels}; coat trains on datasets with "
            "exactly one of each (cast the label with datasets.ClassLabel(names=...))"
        )
    return images[0], labels[0]


def load_splits(source: str, splits: list[str]) -> list[Any]:
    """``splits`` of the dataset ``source`` (``val`` finds ``validation``), or a one-line ``DataError``."""
    require("hfds")
    import datasets

    path = Path(source)
    try:
        if (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(source)
    except Exception as err:  # datasets raises many kinds (not found, offline, bad files): name the source
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"cannot load the Hugging Face dataset {source} ({first_line}); give a folder written by "
            "save_to_disk, a local dataset folder, or a dataset in the Hugging Face cache"
        ) from None
    return [pick_split(loaded, source, split) for split in splits]


def pick_split(loaded: Any, source: str, split: str) -> Any:
    for candidate in split_names(split):
        if candidate in loaded:
            return loaded[candidate]
    raise DataError(
        f"{source} has no split '{split}' (it has {', '.join(loaded)}); name one with --train-split / --val-split"
    )


def hf_splits(
    source: str,
    train_split: str,
    val_split: str,
    train_transform: Callable | None,
    val_transform: Callable | None,
    skip_corrupt: bool = False,
) -> tuple[HFImages, HFImages]:
    """The training and evaluation splits of ``source``, which must have the same class names."""
    train, val = load_splits(source, [train_split, val_split])
    train_set = HFImages(train, f"{source} [{train_split}]", train_transform, skip_corrupt)
    val_set = HFImages(val, f"{source} [{val_split}]", val_transform, skip_corrupt)
    if train_set.classes != val_set.classes:
        raise DataError(f"{source}: the {train_split} and {val_split} splits have different class names")
    return train_set, val_set
