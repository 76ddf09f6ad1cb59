"""Detections drawn on their image with torchvision's drawing utilities: masks, boxes, "label score"."""

from __future__ import annotations

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .coco_eval import MASK_THRESHOLD

# One colour per class (cycled): distinct, readable on dark and light backgrounds.
PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe"]


def keep_confident(output: dict[str, torch.Tensor], score_threshold: float) -> dict[str, torch.Tensor]:
    """The detections scoring at least ``score_threshold`` (torchvision's output dict, filtered)."""
    keep = output["scores"] >= score_threshold
    return {k: v[keep] for k, v in output.items()}


def draw_detections(image: torch.Tensor, output: dict[str, torch.Tensor], class_names: list[str]) -> torch.Tensor:
    """``image`` [3, H, W] uint8 with ``output``'s masks (translucent), boxes and "name 0.97" labels drawn on."""
    labels = output["labels"].tolist()
    colors = [PALETTE[(label - 1) % len(PALETTE)] for label in labels]
    if "masks" in output and len(labels):
        image = draw_segmentation_masks(image, output["masks"][:, 0] > MASK_THRESHOLD, alpha=0.45, colors=colors)
    captions = [f"{class_names[label - 1]} {score:.2f}" for label, score in zip(labels, output["scores"].tolist())]
    return draw_bounding_boxes(image, output["boxes"], labels=captions, colors=colors, width=2)
