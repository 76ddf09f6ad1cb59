"""Deformable DETR (transformers' ``DeformableDetrForObjectDetection``) on a CoaT backbone, with the authors'
settings. Needs the ``hf`` extra.

The authors' detector (their Deformable DETR fork, CoaT-Lite Small 47.0 AP and CoaT Small 48.4 AP on COCO
val after 50 epochs) is Deformable DETR's plain variant: four feature levels (backbone scales 2-4 and one
extra strided level), 300 queries, 6 encoder and 6 decoder layers, no box refinement, no two-stage,
auxiliary losses on every decoder layer, Hungarian matching costs class 2 / L1 5 / GIoU 2 and loss weights
class 2 / L1 5 / GIoU 2. transformers fixes the classification loss weight at 1 in ``outputs.loss``:
``authors_losses`` reweighs ``outputs.loss_dict`` with weight 2.

``DeformableDetrDetector`` puts the transformers model behind torchvision's detector interface, so that
``coat detect`` trains, evaluates and predicts with it as with Mask R-CNN: images in 0..1 of any sizes in,
resized (a random short side per image in training, as DETR's multi-scale training does), normalised and padded
by torchvision's ``GeneralizedRCNNTransform``; targets with ``boxes`` (xyxy pixels) and ``labels`` (1..C);
detections as the top 100 (query, class) scores in the input images' pixels.
"""

# ruff: noqa: E402  (the imports of transformers come after the check that names the extra to install)
from __future__ import annotations

import os
import re
from typing import Any

from ..extras import require

require("hf")

import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_convert
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, DeformableDetrImageProcessor

from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..hf import CoaTBackboneConfig
from .builders import DETECTION_DROP_PATH, MAX_SIDE, TRAIN_SHORT_SIDES

BACKBONE_SCALES = [1, 2, 3]  # scales 2-4 (strides 8, 16, 32); Deformable DETR adds a stride-64 level
CLASS_LOSS_WEIGHT = 2.0
AUTHORS_SETTINGS: dict[str, Any] = {
    "num_queries": 300,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "num_feature_levels": 4,
    "with_box_refine": False,
    "two_stage": False,
    "auxiliary_loss": True,
    "class_cost": 2,
    "bbox_cost": 5,
    "giou_cost": 2,
    "bbox_loss_coefficient": 5,
    "giou_loss_coefficient": 2,
}
SIZE_DIVISOR = 32  # the batch is padded to a multiple of the coarsest backbone stride
DETECTIONS_PER_IMAGE = 100  # the authors' evaluation keeps the top 100 (query, class) scores


def deformable_detr_coat(
    variant: str,
    num_classes: int,
    backbone_weights: str | os.PathLike | None = None,
    drop_path_rate: float | None = None,
    **config_overrides: Any,
) -> DeformableDetrForObjectDetection:
    """Deformable DETR on CoaT with the authors' settings for ``num_classes`` object classes (no background
    class: DETR's "no object" is its own). ``backbone_weights``: classification weights of the variant (a
    released weights name or a checkpoint file); ``drop_path_rate``: default the per-variant value of the
    authors' Mask R-CNN configs; ``config_overrides``: any ``DeformableDetrConfig`` field (smaller models for
    tests, ``with_box_refine=True``, ...)."""
    rate = DETECTION_DROP_PATH.get(variant, 0.1) if drop_path_rate is None else drop_path_rate
    backbone = CoaTBackboneConfig(variant=variant, out_indices=BACKBONE_SCALES, drop_path_rate=rate)
    config = DeformableDetrConfig(
        backbone_config=backbone, num_labels=num_classes, **{**AUTHORS_SETTINGS, **config_overrides}
    )
    model = DeformableDetrForObjectDetection(config)
    if backbone_weights is not None:
        model.model.backbone.model.load_coat_weights(backbone_weights)
    return model


def authors_losses(loss_dict: dict[str, torch.Tensor], config: DeformableDetrConfig) -> dict[str, torch.Tensor]:
    """The training losses with the authors' weights, each summed over the last and every auxiliary decoder
    layer: ``loss_ce`` x2 (transformers' ``outputs.loss`` uses x1), ``loss_bbox`` and ``loss_giou`` by the config's
    coefficients. Their sum is the authors' training loss."""
    weights = {
        "loss_ce": CLASS_LOSS_WEIGHT,
        "loss_bbox": config.bbox_loss_coefficient,
        "loss_giou": config.giou_loss_coefficient,
    }
    weighted: dict[str, torch.Tensor] = {}
    for key, value in loss_dict.items():
        name = re.sub(r"_\d+$", "", key)  # loss_ce_3 (decoder layer 3's auxiliary loss) -> loss_ce
        if name in weights:
            weighted[name] = weighted.get(name, 0) + weights[name] * value
    return weighted


def detr_targets(targets: list[dict[str, torch.Tensor]], image_sizes: list[tuple[int, int]]) -> list[dict]:
    """torchvision targets (``boxes`` xyxy in pixels of the resized image, ``labels`` 1..C) -> DETR's
    (``class_labels`` 0..C-1, ``boxes`` centre x, centre y, width, height relative to the image before padding)."""
    converted = []
    for target, (height, width) in zip(targets, image_sizes):
        scale = target["boxes"].new_tensor([width, height, width, height])
        boxes = box_convert(target["boxes"], "xyxy", "cxcywh") / scale  # [K, 4] in 0..1
        converted.append({"class_labels": target["labels"] - 1, "boxes": boxes})
    return converted


def image_mask(batch: torch.Tensor, image_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """``[B, H, W]`` 1 on each image's pixels and 0 on the padding around it (DETR's ``pixel_mask``)."""
    mask = torch.zeros(batch.shape[0], *batch.shape[-2:], dtype=torch.long, device=batch.device)
    for row, (height, width) in zip(mask, image_sizes):
        row[:height, :width] = 1
    return mask


class DeformableDetrDetector(nn.Module):
    """A ``DeformableDetrForObjectDetection`` (``detr``) with torchvision's detector interface:
    ``model(images, targets)`` -> the authors' weighted losses (train mode), ``model(images)`` -> per image
    ``{"boxes": [K, 4] xyxy in the image's pixels, "labels": [K] in 1..C, "scores": [K]}`` (eval mode).
    ``min_size`` / ``max_size``: the short sides (one drawn per image in training, the last in evaluation)
    and the longest side the images are resized to."""

    def __init__(
        self,
        detr: DeformableDetrForObjectDetection,
        min_size: int | tuple[int, ...] = TRAIN_SHORT_SIDES,
        max_size: int = MAX_SIDE,
    ) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(
            min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=SIZE_DIVISOR
        )
        self.detr = detr
        self.postprocessor = DeformableDetrImageProcessor()

    @classmethod
    def build(
        cls,
        variant: str,
        num_classes: int,
        backbone_weights: str | os.PathLike | None = None,
        min_size: int | tuple[int, ...] = TRAIN_SHORT_SIDES,
        max_size: int = MAX_SIDE,
        drop_path_rate: float | None = None,
        **config_overrides: Any,
    ) -> DeformableDetrDetector:
        """``deformable_detr_coat`` for ``num_classes - 1`` object classes (``num_classes`` counts the background,
        as torchvision's detectors do), behind the torchvision interface."""
        detr = deformable_detr_coat(variant, num_classes - 1, backbone_weights, drop_path_rate, **config_overrides)
        return cls(detr, min_size, max_size)

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, targets = self.transform(images, targets)  # [B, 3, H, W] normalised, zero-padded to /32
        pixel_mask = image_mask(batch.tensors, batch.image_sizes)
        if self.training:
            labels = detr_targets(targets, batch.image_sizes)
            outputs = self.detr(pixel_values=batch.tensors, pixel_mask=pixel_mask, labels=labels)
            return authors_losses(outputs.loss_dict, self.detr.config)
        outputs = self.detr(pixel_values=batch.tensors, pixel_mask=pixel_mask)
        detections = self.postprocessor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=batch.image_sizes, top_k=DETECTIONS_PER_IMAGE
        )  # boxes in the resized images' pixels
        detections = [
            {"boxes": found["boxes"].float(), "labels": found["labels"] + 1, "scores": found["scores"].float()}
            for found in detections
        ]
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)
