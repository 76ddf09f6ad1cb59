"""A public set of real photographs with instance masks, written in COCO format for ``coat detect train``.

- ``pennfudan``: the Penn-Fudan pedestrian database (Wang, Shi, Song, Shen; ``PennFudanPed/`` with ``PNGImages/``
  and ``PedMasks/``, as distributed at cis.upenn.edu/~jshi/ped_html and copied in several GitHub repositories):
  170 street photographs with 423 pedestrians, one instance id per pixel in each mask. Every fifth image (by
  sorted name) is held out: 136 train / 34 val. Boxes are the masks' extents; masks are stored as RLE.

    python benchmarks/prepare_detection_sets.py pennfudan PennFudanPed data/pennfudan

writes ``OUT/train``, ``OUT/val`` and ``OUT/annotations/instances_{train,val}.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

PENNFUDAN_VAL_EVERY = 5


def instance_annotations(instances: np.ndarray, image_id: int, first_id: int) -> list[dict]:
    """One COCO annotation (RLE mask, its box and area, category 1) per nonzero id of an ``[H, W]`` id map."""
    annotations = []
    for offset, instance in enumerate(i for i in np.unique(instances) if i != 0):
        mask = np.asfortranarray((instances == instance).astype(np.uint8))
        rle = mask_utils.encode(mask)
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "id": first_id + offset,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [x, y, w, h],
                "area": float(mask_utils.area(rle)),
                "segmentation": rle,
                "iscrowd": 0,
            }
        )
    return annotations


def prepare_pennfudan(source: Path, out: Path) -> None:
    splits: dict[str, dict] = {
        split: {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
        for split in ("train", "val")
    }
    annotation_id = 1
    for number, image in enumerate(sorted((source / "PNGImages").glob("*.png")), start=1):
        split = "val" if number % PENNFUDAN_VAL_EVERY == 0 else "train"
        (out / split).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, out / split / image.name)
        with Image.open(image) as photo, Image.open(source / "PedMasks" / f"{image.stem}_mask.png") as mask:
            width, height = photo.size
            instances = np.asarray(mask)
        splits[split]["images"].append({"id": number, "file_name": image.name, "width": width, "height": height})
        found = instance_annotations(instances, number, annotation_id)
        splits[split]["annotations"] += found
        annotation_id += len(found)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, content in splits.items():
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=("pennfudan",))
    parser.add_argument("source", type=Path, help="the set's folder as distributed (PennFudanPed/)")
    parser.add_argument("out", type=Path, help="folder to write (must not exist)")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    prepare_pennfudan(args.source, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
