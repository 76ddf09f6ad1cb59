"""A generated semantic-segmentation set in any of the three layouts ``coat.segmentation.data`` reads: the
detection shapes (``coat.detection.shapes``: circles, squares and triangles on cluttered backgrounds) with one
class-index mask per image (0 background, 1 circle, 2 square, 3 triangle).

``make_segmentation_shapes(root, layout="voc", train_images=200, val_images=50)`` writes, for ``voc``::

    root/JPEGImages/*.png  root/SegmentationClassPNG/*.png  root/class_names.txt
    root/ImageSets/Segmentation/train.txt  root/ImageSets/Segmentation/val.txt

for ``ade20k`` ``root/images/{training,validation}`` and ``root/annotations/...`` with the labels shifted up by
one (0 = "other"), and for ``plain`` ``root/images``, ``root/masks`` and ``root/val/{images,masks}``.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from ..detection.shapes import CATEGORIES, SPLIT_SEEDS, draw_shapes

CLASS_NAMES = ["background", *(c["name"] for c in CATEGORIES)]
LAYOUTS = ("voc", "ade20k", "plain")


def _folders(root: Path, layout: str, split: str) -> tuple[Path, Path]:
    """(images folder, masks folder) of ``split`` in ``layout``."""
    if layout == "voc":
        return root / "JPEGImages", root / "SegmentationClassPNG"
    if layout == "ade20k":
        name = {"train": "training", "val": "validation"}[split]
        return root / "images" / name, root / "annotations" / name
    base = root if split == "train" else root / "val"
    return base / "images", base / "masks"


def make_segmentation_shapes(
    root: str | Path,
    layout: str = "voc",
    train_images: int = 200,
    val_images: int = 50,
    size: tuple[int, int] = (96, 128),
) -> Path:
    """Write both splits into ``root`` in ``layout``; returns ``root``."""
    root = Path(root)
    offset = 1 if layout == "ade20k" else 0  # ADE20K keeps 0 for "other"
    for split, count in (("train", train_images), ("val", val_images)):
        images, masks = _folders(root, layout, split)
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        rng = random.Random(SPLIT_SEEDS[split])
        stems = []
        for index in range(count):
            width, height = rng.randint(*size), rng.randint(*size)
            image, shapes = draw_shapes(rng, width, height, max_shapes=4)
            mask = Image.new("L", (width, height), offset)
            draw = ImageDraw.Draw(mask)
            for category_id, polygon in shapes:
                draw.polygon(polygon, fill=category_id + offset)
            stem = f"{split}_{index:05d}"
            image.save(images / f"{stem}.png")
            mask.save(masks / f"{stem}.png")
            stems.append(stem)
        if layout == "voc":
            lists = root / "ImageSets" / "Segmentation"
            lists.mkdir(parents=True, exist_ok=True)
            (lists / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    if layout == "ade20k":  # the challenge's object table, tab-separated; "other" (0) is not a class
        rows = [f"{i + 1}\t0\t0\t0\t{name}\n" for i, name in enumerate(CLASS_NAMES)]
        (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + "".join(rows))
    else:
        (root / "class_names.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    return root
