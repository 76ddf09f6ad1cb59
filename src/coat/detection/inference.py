"""Using a trained detector: COCO evaluation of a checkpoint and drawn predictions (``coat detect eval`` and
``coat detect predict`` as functions).

    from coat.detection.inference import evaluate_detector_checkpoint, predict_detections
    report = evaluate_detector_checkpoint("runs/shapes/best.safetensors", "data/val", "data/val.json")
    report.metrics["box_ap"]
    predictions = predict_detections(["photo.jpg"], "runs/shapes/best.safetensors", "detections")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from ..data.datasets import DataError, load_rgb
from ..errors import UsageError
from ..files import atomic_write, refuse_overwrite, write_json
from ..inference import find_images
from ..train.distributed import pick_device
from .builders import DETECTORS
from .coco_eval import evaluate_detector, to_coco_results
from .data import CocoDetectionSet, collate_detection, detection_transform, read_coco
from .draw import draw_detections, keep_confident
from .weights import load_detector


@dataclass(frozen=True)
class DetectionReport:
    """What ``evaluate_detector_checkpoint`` measured and wrote."""

    metrics: dict[str, Any]  # box (and mask) AP, AP50, AP75, S/M/L in percent; images; skipped
    record: dict[str, Any]  # the contents of results.json
    results_path: Path
    detections_path: Path
    missing_images: int


def evaluate_detector_checkpoint(
    checkpoint: str | os.PathLike,
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    batch_size: int = 1,
    workers: int = 2,
    device: str = "auto",
    skip_corrupt: bool = False,
    overwrite: bool = False,
) -> DetectionReport:
    """COCO box (and mask) AP of a ``coat detect train`` checkpoint on a COCO-format set (pycocotools), with
    ``results.json`` and the detections (COCO results format) written to ``output`` (default: ``eval/`` beside
    the checkpoint). Masks are scored where the detector predicts them and the annotations hold them."""
    output = Path(output) if output is not None else Path(checkpoint).resolve().parent / "eval"
    results_path, detections_path = output / "results.json", output / "detections.json"
    refuse_overwrite([results_path, detections_path], overwrite)
    model, spec = load_detector(checkpoint)
    index = read_coco(annotations, images, skip_corrupt)
    if index.category_ids != spec.category_ids:
        raise DataError(
            f"{annotations} lists categories {index.category_ids} but the checkpoint detects "
            f"{spec.category_ids}; evaluate on data with the training categories"
        )
    with_masks = DETECTORS[spec.detector].masks and index.has_masks  # without ground-truth masks, boxes only
    target = pick_device(device)
    dataset = CocoDetectionSet(
        index,
        detection_transform(0.0),
        with_masks=False,  # COCOeval reads the JSON's
        skip_corrupt=skip_corrupt,
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_detection)
    metrics, detections = evaluate_detector(
        model.to(target), loader, target, index.coco, spec.category_ids, with_masks, progress="eval"
    )
    record = {
        "checkpoint": str(checkpoint),
        "images_folder": str(images),
        "annotations": str(annotations),
        "missing_images": len(index.missing_images),
        "degenerate_boxes_dropped": index.dropped_boxes,
        **metrics,
    }
    write_json(results_path, record)
    write_json(detections_path, detections, indent=None)
    return DetectionReport(metrics, record, results_path, detections_path, len(index.missing_images))


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections above the threshold and the picture they were drawn on."""

    path: Path
    picture: Path
    results: list[dict[str, Any]]  # COCO results entries, with the image's file_name


def predict_detections(
    inputs: Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    score_threshold: float = 0.5,
    device: str = "auto",
    overwrite: bool = False,
) -> tuple[list[ImageDetections], Path]:
    """Detect objects in ``inputs`` (image files, folders or glob patterns): each image drawn with its detections
    scoring at least ``score_threshold`` to ``output/<stem>.png``, and all detections in COCO results format
    to ``output/detections.json`` (returned with the per-image results)."""
    if not 0 <= score_threshold <= 1:
        raise UsageError("--score-threshold must be in [0, 1]")
    output = Path(output)
    paths = find_images([str(i) for i in inputs])
    pictures = [output / f"{path.stem}.png" for path in paths]
    if len(set(pictures)) < len(pictures):
        raise UsageError("two inputs share a file name stem, so their pictures would collide; predict them apart")
    json_path = output / "detections.json"
    refuse_overwrite([json_path, *pictures], overwrite)
    model, spec = load_detector(checkpoint)
    target = pick_device(device)
    model.to(target).eval()
    predictions = []
    with torch.no_grad():
        for image_id, (path, picture) in enumerate(tqdm(list(zip(paths, pictures)), desc="detect", leave=False), 1):
            image = TF.pil_to_tensor(load_rgb(str(path)))  # [3, H, W] uint8
            detected = model([TF.to_dtype(image, torch.float32, scale=True).to(target)])[0]
            detected = {k: v.cpu() for k, v in keep_confident(detected, score_threshold).items()}
            drawn = TF.to_pil_image(draw_detections(image, detected, spec.class_names))
            atomic_write(picture, lambda tmp, drawn=drawn: drawn.save(tmp, format="PNG"))
            results = [{**r, "file_name": str(path)} for r in to_coco_results(detected, image_id, spec.category_ids)]
            predictions.append(ImageDetections(path, picture, results))
    write_json(json_path, [r for p in predictions for r in p.results], indent=None)
    return predictions, json_path
