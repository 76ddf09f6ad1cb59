"""A generated COCO-format instance-segmentation set: coloured circles, squares and triangles.

``make_shapes(root, train_images=300, val_images=60)`` writes::

    root/train/000000.png ...        root/val/000000.png ...
    root/annotations/instances_train.json   root/annotations/instances_val.json

Shapes never overlap, so each mask is exactly the drawn polygon; boxes are the polygons' bounds.
It is the detection counterpart of the embedded digits: small enough to learn on a CPU, real
enough to run the whole pipeline (training, pycocotools evaluation, drawing).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
SPLIT_SEEDS = {"train": 0, "val": 1}


def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a circle (as 32 points), an axis-aligned square or a rotated equilateral triangle."""
    if kind == "circle":
        corners, start = 32, 0.0
    elif kind == "square":
        corners, start = 4, math.pi / 4
    else:
        corners, start = 3, angle
    return [
        (
            cx + radius * math.cos(start + 2 * math.pi * i / corners),
            cy + radius * math.sin(start + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def polygon_area(polygon: list[tuple[float, float]]) -> float:
    """The shoelace formula: what COCO's small/medium/large ranges are measured on."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1]))) / 2


def draw_shapes(rng: random.Random, width: int, height: int, max_shapes: int):
    """One image and its annotations [(category_id, polygon)] with non-overlapping shapes."""
    background = tuple(rng.randint(0, 90) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(30):  # faint clutter lines the detector must ignore
        xy = [rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, height)]
        draw.line(xy, fill=tuple(min(255, c + rng.randint(10, 50)) for c in background), width=1)
    placed: list[tuple[float, float, float]] = []  # (cx, cy, radius) of the shapes drawn so far
    annotations = []
    for _ in range(rng.randint(1, max_shapes)):
        for _attempt in range(20):
            radius = rng.uniform(0.08, 0.22) * min(width, height)
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
                break
        else:
            continue
        placed.append((cx, cy, radius))
        category = rng.choice(CATEGORIES)
        polygon = shape_polygon(category["name"], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        draw.polygon(polygon, fill=tuple(rng.randint(120, 255) for _ in range(3)))
        annotations.append((category["id"], polygon))
    return image, annotations


def make_split(
    folder: Path, annotation_file: Path, count: int, seed: int, size: tuple[int, int] = (128, 160), max_shapes: int = 4
) -> dict:
    """Write ``count`` PNGs into ``folder`` (sides drawn from ``size``) and their COCO instances file."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        width, height = rng.randint(*size), rng.randint(*size)
        image, shapes = draw_shapes(rng, width, height, max_shapes)
        file_name = f"{image_id:06d}.png"
        image.save(folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category_id, polygon in shapes:
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
            w, h = min(float(width), max(xs)) - x0, min(float(height), max(ys)) - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [round(v, 2) for v in (x0, y0, w, h)],
                    "area": round(polygon_area(polygon), 2),
                    "iscrowd": 0,
                    "segmentation": [[round(c, 2) for p in polygon for c in p]],
                }
            )
    dataset = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(dataset))
    return dataset


def make_shapes(root: str | Path, train_images: int = 300, val_images: int = 60) -> dict[str, Path]:
    """Both splits under ``root``; returns the four paths ``coat detect train`` takes."""
    root = Path(root)
    paths = {
        "train_images": root / "train",
        "train_annotations": root / "annotations" / "instances_train.json",
        "val_images": root / "val",
        "val_annotations": root / "annotations" / "instances_val.json",
    }
    for split, count in (("train", train_images), ("val", val_images)):
        make_split(paths[f"{split}_images"], paths[f"{split}_annotations"], count, SPLIT_SEEDS[split])
    return paths
