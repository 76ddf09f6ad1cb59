"""Deformable DETR (transformers' ``DeformableDetrForObjectDetection``) on a CoaT backbone, with the authors'
settings. Needs the ``hf`` extra.

The authors' detector (their Deformable DETR fork, CoaT-Lite Small 47.0 AP and CoaT Small 48.4 AP on COCO
val after 50 epochs) is Deformable DETR's plain variant: four feature levels (backbone scales 2-4 and one
extra strided level), 300 queries, 6 encoder and 6 decoder layers, no box refinement, no two-stage,
auxiliary losses on every decoder layer, Hungarian matching costs class 2 / L1 5 / GIoU 2 and loss weights
class 2 / L1 5 / GIoU 2. transformers fixes the classification loss weight at 1 in ``outputs.loss``:
``authors_loss`` recombines the total from ``outputs.loss_dict`` with weight 2.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

from ..hf import CoaTBackboneConfig
from .builders import DETECTION_DROP_PATH

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


def authors_loss(loss_dict: dict[str, torch.Tensor], config: DeformableDetrConfig) -> torch.Tensor:
    """The training loss with the authors' weights: classification x2 (transformers' ``outputs.loss`` uses
    x1), L1 and GIoU by the config's coefficients, summed over the last and every auxiliary decoder layer."""
    weights = {
        "loss_ce": CLASS_LOSS_WEIGHT,
        "loss_bbox": config.bbox_loss_coefficient,
        "loss_giou": config.giou_loss_coefficient,
    }
    terms = [(re.sub(r"_\d+$", "", key), value) for key, value in loss_dict.items()]  # loss_ce_3 -> loss_ce
    return sum(weights[name] * value for name, value in terms if name in weights)
