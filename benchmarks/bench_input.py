"""Input pipeline of one loader worker on ImageNet-sized JPEGs (made here), one thread as in a worker.

    python benchmarks/bench_input.py [--images 48] [--repeats 5] [--size 224]

A worker reads a file (``coat.data.datasets.load_rgb``, PIL) and runs the recipe's transform on it.
Printed: images/s per worker for decoding alone, a whole training sample (the authors' ImageNet
transform: RandomResizedCrop, flip, RandAugment m9, normalise, RandomErasing) and a whole
evaluation sample, and what a worker does with ``--pixel-augment-on-device`` (decode, crop, flip;
RandAugment, normalisation and erasing then run on the training device), then the milliseconds of
each training transform step. The cases are interleaved round by round. A GPU that trains at R
images/s needs about R / (training samples/s per worker) workers, i.e. that many CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from coat.bench import interleaved, machine_line
from coat.data.datasets import load_rgb
from coat.data.preprocessing import Preprocessing
from coat.data.transforms import crop_transform, pixel_transform, train_transform
from coat.train.config import TrainConfig

IMAGENET_SIZE = (500, 375)  # the most common ImageNet training image size (width, height)


def write_photo_like_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Smooth colour fields with texture and noise, at quality 90: about ImageNet's 110 KB per JPEG."""
    rng = np.random.default_rng(seed)
    width, height = IMAGENET_SIZE
    paths = []
    for i in range(count):
        coarse = rng.uniform(0, 255, (height // 25, width // 25, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        image += rng.normal(0, 18, (height, width, 3))  # texture and sensor noise: what makes photos big
        path = folder / f"{i}.jpg"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def step_milliseconds(transform, paths: list[Path], repeats: int) -> dict[str, float]:
    """Mean time of each step of a ``v2.Compose`` over the images (RandAugment's ops vary per call)."""
    times: dict[str, list[float]] = {}
    steps = [step for part in transform.transforms for step in getattr(part, "transforms", [part])]
    for _ in range(repeats):
        for path in paths:
            image = load_rgb(str(path))
            for step in steps:
                started = time.perf_counter()
                image = step(image)
                times.setdefault(type(step).__name__, []).append(time.perf_counter() - started)
    return {name: 1000 * statistics.mean(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    torch.manual_seed(0)
    recipe = TrainConfig()  # the authors' ImageNet recipe
    train_tf = train_transform(
        args.size,
        recipe.scale_min,
        recipe.hflip,
        recipe.randaugment_magnitude,
        recipe.random_erasing,
        recipe.mean,
        recipe.std,
    )
    eval_tf = Preprocessing(input_size=args.size, crop_pct=recipe.crop_pct).transforms()
    crop_tf = crop_transform(args.size, recipe.scale_min, recipe.hflip)
    pixel_tf = pixel_transform(recipe.randaugment_magnitude, recipe.random_erasing, recipe.mean, recipe.std)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photo_like_jpegs(Path(tmp), args.images)
        kilobytes = statistics.mean(p.stat().st_size for p in paths) / 1024
        print(
            machine_line(),
            f"| one thread | {args.images} JPEGs of {IMAGENET_SIZE[0]}x{IMAGENET_SIZE[1]}, "
            f"{kilobytes:.0f} KB on average | output {args.size}x{args.size}",
        )
        print("| per worker | images/s |\n|---|---|")
        per_image = {
            "decode (PIL)": lambda p: load_rgb(str(p)),
            "training sample (decode + authors' transform)": lambda p: train_tf(load_rgb(str(p))),
            "evaluation sample (decode + resize, crop, normalise)": lambda p: eval_tf(load_rgb(str(p))),
            "pixel-augment-on-device worker (decode + crop + flip)": lambda p: crop_tf(load_rgb(str(p))),
        }
        over_all_images = {name: lambda fn=fn: [fn(p) for p in paths] for name, fn in per_image.items()}
        for name, timing in interleaved(over_all_images, len(paths), warmup=1, repeats=args.repeats).items():
            print(f"| {name} | {timing.images_per_second:.0f} |")
        crops = [crop_tf(load_rgb(str(p))) for p in paths]
        started = time.perf_counter()
        for crop in crops:
            pixel_tf(crop)
        print(
            f"\nThe pixel half on this CPU (what --pixel-augment-on-device moves to the device): "
            f"{1000 * (time.perf_counter() - started) / len(crops):.2f} ms per image"
        )
        print("\n| training transform step | ms per image |\n|---|---|")
        for name, ms in step_milliseconds(train_tf, paths, args.repeats).items():
            print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
