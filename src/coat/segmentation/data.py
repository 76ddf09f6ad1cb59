"""Semantic segmentation data: three folder layouts, detected from the folder and checked before training.

- **VOC**, as labelme2voc and most annotation tools export it: ``JPEGImages/``, masks in
  ``SegmentationClassPNG/`` or ``SegmentationClass/`` (palette or index PNGs, one per image stem),
  ``class_names.txt`` (one name per line; without it, the 21 PASCAL VOC classes), optional
  ``ImageSets/Segmentation/{train,val}.txt``; without split lists the folder is the training set.
- **ADE20K** (``ADEChallengeData2016``): ``images/{training,validation}/``, ``annotations/{training,validation}/``;
  label 0 ("other") is ignored and classes 1..N become 0..N-1; names from ``objectInfo150.txt`` when present.
- **plain**: ``images/`` and ``masks/`` (a PNG per image with the same stem), ``class_names.txt`` optional
  (without it the classes are 0..the largest label found); ``val/`` beside them, with the same two folders,
  is the validation split.

Masks hold class indices; ``IGNORE_INDEX`` (255) marks pixels no loss or metric counts. ``read_split`` checks
every pair once (an image without a mask, a mask whose size differs from its image, labels outside the classes)
and raises ``DataError`` naming the file and the fix.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.datasets import DataError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
ADE_SPLITS = {"train": "training", "val": "validation"}


@dataclass(frozen=True)
class SegmentationSplit:
    """One checked split: its (image, mask) files, the class names and how mask values map to classes."""

    root: Path
    layout: str  # "voc", "ade20k" or "plain"
    pairs: list[tuple[Path, Path]]  # (image file, mask file)
    class_names: list[str]
    reduce_zero_label: bool = False  # ADE20K: mask value 0 is ignored, value v is class v - 1

    def to_classes(self, mask: np.ndarray) -> np.ndarray:
        """Mask values (``[H, W]`` uint8) -> class indices with ``IGNORE_INDEX`` for ignored pixels."""
        if not self.reduce_zero_label:
            return mask
        ignored = (mask == 0) | (mask == IGNORE_INDEX)
        return np.where(ignored, IGNORE_INDEX, mask.astype(np.int64) - 1).astype(np.uint8)


def detect_layout(root: Path) -> str:
    """Which layout ``root`` holds, or a ``DataError`` listing what each layout needs."""
    if (root / "JPEGImages").is_dir():
        return "voc"
    if (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir():
        return "ade20k"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "plain"
    raise DataError(
        f"{root} holds no segmentation data set this library reads: expected JPEGImages/ with "
        "SegmentationClassPNG/ (VOC, as labelme2voc writes it), images/training/ with annotations/training/ "
        "(ADE20K), or images/ with masks/"
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _names_file(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [n for n in names if n != "__ignore__"]  # labelme's ignore entry is the value 255, not a class


def _voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]] | None:
    masks = next(
        (root / name for name in ("SegmentationClassPNG", "SegmentationClass") if (root / name).is_dir()), None
    )
    if masks is None:
        raise DataError(
            f"{root} has JPEGImages/ but no SegmentationClassPNG/ or SegmentationClass/ with the masks; export the "
            "class masks as well (labelme2voc does)"
        )
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if listing.is_file():
        stems = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        images = {p.stem: p for p in _images_in(root / "JPEGImages")}
        missing = [s for s in stems if s not in images]
        if missing:
            raise DataError(f"{listing} names {len(missing)} images not in {root / 'JPEGImages'} (first: {missing[0]})")
        return [(images[s], masks / f"{s}.png") for s in stems]
    if split == "val":
        return None  # without split lists the folder is the training set
    return [(image, masks / f"{image.stem}.png") for image in _images_in(root / "JPEGImages")]


def _ade_names(root: Path) -> list[str] | None:
    """Class names from ADE20K's object table (``Name`` column, first synonym), as the challenge zip ships it
    (tab-separated ``objectInfo150.txt``) or as a CSV."""
    for name, delimiter in (("objectInfo150.txt", "\t"), ("objectInfo150.csv", ","), ("object150_info.csv", ",")):
        if (root / name).is_file():
            with (root / name).open(newline="") as f:
                return [row["Name"].split(";")[0].strip() for row in csv.DictReader(f, delimiter=delimiter)]
    return None


def _split_pairs(root: Path, layout: str, split: str) -> list[tuple[Path, Path]] | None:
    if layout == "voc":
        return _voc_pairs(root, split)
    if layout == "ade20k":
        images = root / "images" / ADE_SPLITS[split]
        if not images.is_dir():
            return None
        return [(i, root / "annotations" / ADE_SPLITS[split] / f"{i.stem}.png") for i in _images_in(images)]
    base = root if split == "train" else root / "val"
    if not (base / "images").is_dir():
        return None
    return [(i, base / "masks" / f"{i.stem}.png") for i in _images_in(base / "images")]


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("P", "L", "I", "I;16"):
                raise DataError(
                    f"mask {path} is a {mask.mode} image; masks hold one class index per pixel (palette or "
                    "grayscale PNG), not colours"
                )
            return np.asarray(mask)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"cannot read mask {path} ({type(err).__name__}); fix or re-export it") from None


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DataError(f"cannot read image {path} ({type(err).__name__}); fix or delete it") from None


def read_split(
    root: str | Path, split: str = "train", class_names: list[str] | None = None
) -> SegmentationSplit | None:
    """The ``split`` ("train" or "val") of the data set in ``root``, checked; ``None`` when the folder has no such
    split. ``class_names``: the training split's, for a validation split (its labels must fit them)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass the folder of a segmentation data set")
    layout = detect_layout(root)
    pairs = _split_pairs(root, layout, split)
    if pairs is None:
        return None
    if not pairs:
        raise DataError(f"the {split} split of {root} ({layout} layout) has no images")
    missing = [(image, mask) for image, mask in pairs if not mask.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} images in {root} have no mask (first: {missing[0][0].name}, expected "
            f"{missing[0][1]}); add the masks or remove the images"
        )
    reduce_zero_label = layout == "ade20k"
    named = class_names or (_ade_names(root) if layout == "ade20k" else _names_file(root / "class_names.txt"))
    if named is None and layout == "voc":
        named = list(VOC_CLASSES)
    largest = -1
    for image, mask_path in pairs:
        mask = _read_mask(mask_path)
        if _image_size(image) != (mask.shape[1], mask.shape[0]):
            raise DataError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image} is "
                f"{'x'.join(map(str, _image_size(image)))}; masks must have their image's size"
            )
        values = np.unique(mask)
        values = values[values != IGNORE_INDEX] - (1 if reduce_zero_label else 0)
        values = values[values >= 0]
        top = int(values.max()) if values.size else -1
        if named is not None and top >= len(named):
            raise DataError(
                f"mask {mask_path} has label {top + (1 if reduce_zero_label else 0)}, outside the {len(named)} "
                f"classes of {root} (0..{len(named) - 1}, {IGNORE_INDEX} = ignore); fix the mask or list every class "
                "in class_names.txt"
            )
        largest = max(largest, top)
    if named is None:
        if largest < 0:
            raise DataError(f"every mask of {root} is empty (only the ignore value); label the images first")
        named = [str(i) for i in range(largest + 1)]
    return SegmentationSplit(root, layout, pairs, named, reduce_zero_label)
