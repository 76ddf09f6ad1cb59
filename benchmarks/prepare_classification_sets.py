"""Small public image sets written as class folders for ``coat train --data OUT`` (the ``small`` recipe's checks).

- ``notmnist``: notMNIST (Bulatov, 2011), 28x28 grayscale glyphs of the letters A-J in many fonts, from the
  MNIST-format sample of 10,000 images (``t10k-images-idx3-ubyte.gz`` / ``t10k-labels-idx1-ubyte.gz``, as
  copied in several GitHub repositories): the first 500 of each letter train, the last 100 are held out.
- ``cifar10``: CIFAR-10 (Krizhevsky, 2009), 32x32 colour photographs of 10 kinds of object, from a folder of its
  JPEG images (``train/<class>/*.jpg`` and ``test/<class>/*.jpg``): the first 500 training images of each class
  (by file name) train, the first 100 test images of each class are held out.

- ``shapes``: generated (no source: give ``-``), 32x32 colour images of 10 kinds of shape (circle, ring, square,
  frame, triangle, cross, star, hexagon, crescent, bar) in random colours and sizes, upright within 15 degrees,
  on noisy two-colour gradients with 0-5 coloured blobs as clutter; a fixed seed per split.

Each comes to 5,000 training and 1,000 held-out images, the size of set the ``small`` recipe is meant for.

    python benchmarks/prepare_classification_sets.py notmnist NOTMNIST_DIR data/notmnist
    python benchmarks/prepare_classification_sets.py cifar10 CIFAR10_DIR data/cifar10
    python benchmarks/prepare_classification_sets.py shapes - data/shapes
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TRAIN_PER_CLASS = 500
VAL_PER_CLASS = 100
NOTMNIST_CLASSES = "ABCDEFGHIJ"


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-format (IDX) array: big-endian dimension sizes after a 4-byte magic number, then uint8 data."""
    with gzip.open(path) as file:
        data = file.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def prepare_notmnist(source: Path, out: Path) -> None:
    images = read_idx(source / "t10k-images-idx3-ubyte.gz")  # [N, 28, 28]
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")  # [N]
    for label, letter in enumerate(NOTMNIST_CLASSES):
        indices = np.flatnonzero(labels == label)
        splits = {"train": indices[:TRAIN_PER_CLASS], "val": indices[-VAL_PER_CLASS:]}
        for split, chosen in splits.items():
            folder = out / split / letter
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                Image.fromarray(images[index]).save(folder / f"{index:05d}.png")


def prepare_cifar10(source: Path, out: Path) -> None:
    for split, source_split, count in (("train", "train", TRAIN_PER_CLASS), ("val", "test", VAL_PER_CLASS)):
        for class_folder in sorted(p for p in (source / source_split).iterdir() if p.is_dir()):
            folder = out / split / class_folder.name
            folder.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_folder.glob("*.jpg"))[:count]:
                shutil.copyfile(image, folder / image.name)


SHAPE_CLASSES = ("circle", "ring", "square", "frame", "triangle", "cross", "star", "hexagon", "crescent", "bar")
SHAPE_CANVAS = 96  # drawn at 3x, then reduced to 32x32 with antialiasing
SHAPE_SEEDS = {"train": 0, "val": 1}


def regular_polygon(sides: int, radius: float, angle: float, inner: float = 1.0) -> np.ndarray:
    """Vertices ``[2 * sides or sides, 2]`` of a regular polygon (a star when ``inner`` < 1) around the origin."""
    count = sides * (2 if inner < 1 else 1)
    theta = angle + np.pi * 2 * np.arange(count) / count - np.pi / 2
    radii = np.where(np.arange(count) % 2 == 1, radius * inner, radius) if inner < 1 else np.full(count, radius)
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def shape_parts(kind: str, radius: float, angle: float) -> list[tuple[np.ndarray, bool]]:
    """The polygons (vertices around the origin) that draw ``kind``, in order, each with whether it is a hole
    (drawn in the background colour)."""
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    box = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    shift = np.array([radius * 0.45, 0])
    parts = {
        "circle": [(regular_polygon(48, radius, 0), False)],
        "ring": [(regular_polygon(48, radius, 0), False), (regular_polygon(48, radius * 0.55, 0), True)],
        "square": [(box * radius * 0.8 @ rotate.T, False)],
        "frame": [(box * radius * 0.8 @ rotate.T, False), (box * radius * 0.45 @ rotate.T, True)],
        "triangle": [(regular_polygon(3, radius, angle), False)],
        "cross": [(box * [radius, radius * 0.3] @ rotate.T, False), (box * [radius * 0.3, radius] @ rotate.T, False)],
        "star": [(regular_polygon(5, radius, angle, inner=0.45), False)],
        "hexagon": [(regular_polygon(6, radius, angle), False)],
        "crescent": [(regular_polygon(48, radius, 0), False), (regular_polygon(48, radius * 0.85, 0) + shift, True)],
        "bar": [(box * [radius, radius * 0.35] @ rotate.T, False)],
    }
    return parts[kind]


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def draw_shape_image(kind: str, rng: np.random.Generator) -> Image.Image:
    size = SHAPE_CANVAS
    start, end = rng.integers(0, 256, (2, 3))
    ramp = np.linspace(0, 1, size)[:, None, None]
    background = start + (end - start) * ramp  # [size, 1, 3]: a vertical two-colour gradient
    pixels = np.broadcast_to(background, (size, size, 3)) + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 6)):  # clutter
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(4, 16)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=random_colour(rng))
    colour = random_colour(rng)
    while np.abs(np.array(colour) - background.mean(axis=(0, 1))).sum() < 120:  # keep the shape visible
        colour = random_colour(rng)
    radius = rng.uniform(0.22, 0.42) * size
    centre = rng.uniform(radius, size - radius, 2)
    angle = np.deg2rad(rng.uniform(-15, 15))
    hole_colour = tuple(int(v) for v in background[int(centre[1]), 0])
    for polygon, hole in shape_parts(kind, radius, angle):
        draw.polygon([tuple(p) for p in polygon + centre], fill=hole_colour if hole else colour)
    return image.resize((32, 32), Image.Resampling.LANCZOS)


def prepare_shapes(source: Path, out: Path) -> None:
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        rng = np.random.default_rng(SHAPE_SEEDS[split])
        for kind in SHAPE_CLASSES:
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                draw_shape_image(kind, rng).save(folder / f"{index:04d}.png")


PREPARE = {"notmnist": prepare_notmnist, "cifar10": prepare_cifar10, "shapes": prepare_shapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", choices=sorted(PREPARE))
    parser.add_argument("source", type=Path, help="the downloaded set (see above)")
    parser.add_argument("out", type=Path, help="a new folder: OUT/train/<class>, OUT/val/<class>")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    PREPARE[args.set](args.source, args.out)
    print(f"wrote {args.out}/train and {args.out}/val")


if __name__ == "__main__":
    main()
