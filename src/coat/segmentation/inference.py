"""Using a trained segmenter: mIoU of a checkpoint on a data folder and drawn predictions (``coat segment eval`` and
``coat segment predict`` as functions).

    from coat.segmentation.inference import evaluate_segmenter_checkpoint, predict_segmentation
    report = evaluate_segmenter_checkpoint("runs/segment/best.safetensors", "data/shapes")
    report.metrics["miou"]
    predictions = predict_segmentation(["photo.jpg"], "runs/segment/best.safetensors", "masks")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_segmentation_masks
from tqdm import tqdm

from ..data.datasets import DataError, load_rgb
from ..errors import UsageError
from ..files import atomic_write, refuse_overwrite, write_json
from ..inference import find_images
from ..train.distributed import pick_device
from .config import EVAL_MODES
from .data import read_split
from .dataset import SegmentationSet, eval_transform
from .evaluate import default_stride, evaluate_segmenter, predict_classes
from .task import collate_segmentation
from .weights import load_segmenter

OVERLAY_ALPHA = 0.5
# One colour per class (cycled), PASCAL VOC's palette rule: the bits of the class index spread over R, G, B.
PALETTE_SIZE = 256


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """VOC's colour map: class 0 black, then distinct colours from the index's bits."""
    colours = []
    for index in range(count):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


@dataclass(frozen=True)
class SegmentationReport:
    """What ``evaluate_segmenter_checkpoint`` measured and wrote."""

    metrics: dict[str, Any]  # miou, pixel_accuracy, mean_accuracy (percent), class_iou, images
    results_path: Path


def evaluate_segmenter_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    mode: str = "whole",
    stride: int | None = None,
    workers: int = 2,
    device: str = "auto",
    overwrite: bool = False,
) -> SegmentationReport:
    """mIoU, per-class IoU and accuracies of a ``coat segment train`` checkpoint on ``data``'s validation split (a
    folder without one: all of it), whole images or sliding windows of the training crop size (``stride``
    default two thirds of it); ``results.json`` written to ``output`` (default: ``eval/`` beside the checkpoint)."""
    if mode not in EVAL_MODES:
        raise UsageError(f"--mode must be one of {', '.join(EVAL_MODES)}")
    output = Path(output) if output is not None else Path(checkpoint).resolve().parent / "eval"
    results_path = output / "results.json"
    refuse_overwrite([results_path], overwrite)
    model, spec = load_segmenter(checkpoint)
    split = read_split(data, "val", spec.class_names) or read_split(data, "train", spec.class_names)
    if split.class_names != spec.class_names:
        raise DataError(
            f"{data} has the classes {split.class_names} but the checkpoint segments {spec.class_names}; evaluate "
            "on data with the training classes"
        )
    target = pick_device(device)
    dataset = SegmentationSet.for_evaluation(split, spec.base_scale)
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_segmentation)
    window = spec.input_size
    metrics = evaluate_segmenter(
        model.to(target),
        loader,
        target,
        spec.class_names,
        progress="eval",
        mode=mode,
        window=window,
        stride=stride or default_stride(window),
    )
    write_json(results_path, {"checkpoint": str(checkpoint), "data": str(data), "mode": mode, **metrics})
    return SegmentationReport(metrics, results_path)


@dataclass(frozen=True)
class ImageSegmentation:
    """One image's predicted classes: the index mask and the overlay written for it."""

    path: Path
    mask: Path  # PNG of class indices (palette: the overlay's colours)
    overlay: Path
    class_pixels: dict[str, int]  # pixels per predicted class


def predict_segmentation(
    inputs: Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    mode: str = "whole",
    device: str = "auto",
    overwrite: bool = False,
) -> list[ImageSegmentation]:
    """Segment ``inputs`` (image files, folders or glob patterns): per image ``output/<stem>_mask.png`` (class
    indices, with the overlay's palette) and ``output/<stem>_overlay.png`` (the image with translucent class
    colours)."""
    if mode not in EVAL_MODES:
        raise UsageError(f"--mode must be one of {', '.join(EVAL_MODES)}")
    output = Path(output)
    paths = find_images([str(i) for i in inputs])
    names = [(output / f"{p.stem}_mask.png", output / f"{p.stem}_overlay.png") for p in paths]
    if len({mask for mask, _ in names}) < len(names):
        raise UsageError("two inputs share a file name stem, so their outputs would collide; predict them apart")
    refuse_overwrite([f for pair in names for f in pair], overwrite)
    model, spec = load_segmenter(checkpoint)
    target = pick_device(device)
    model.to(target).eval()
    transform = eval_transform(spec.base_scale)
    colours = class_colours(len(spec.class_names))
    palette = [c for colour in class_colours(PALETTE_SIZE) for c in colour]
    results = []
    with torch.no_grad():
        for path, (mask_path, overlay_path) in tqdm(list(zip(paths, names)), desc="segment", leave=False):
            picture = TF.pil_to_tensor(load_rgb(str(path)))  # [3, H, W] uint8
            image = transform(TF.to_image(picture))[None].to(target)
            window = spec.input_size
            classes = predict_classes(
                model, image, tuple(picture.shape[-2:]), mode=mode, window=window, stride=default_stride(window)
            )[0].cpu()  # [H, W]
            mask = Image.fromarray(classes.to(torch.uint8).numpy(), mode="P")
            mask.putpalette(palette)
            atomic_write(mask_path, lambda tmp, mask=mask: mask.save(tmp, format="PNG"))
            present = classes.unique().tolist()
            layers = torch.stack([classes == c for c in present])  # [K, H, W]
            drawn = draw_segmentation_masks(picture, layers, alpha=OVERLAY_ALPHA, colors=[colours[c] for c in present])
            overlay = TF.to_pil_image(drawn)
            atomic_write(overlay_path, lambda tmp, overlay=overlay: overlay.save(tmp, format="PNG"))
            pixels = {spec.class_names[c]: int((classes == c).sum()) for c in present}
            results.append(ImageSegmentation(path, mask_path, overlay_path, pixels))
    return results
