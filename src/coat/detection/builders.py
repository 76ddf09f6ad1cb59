"""Mask R-CNN / Faster R-CNN / Cascade (Mask) R-CNN with a CoaT + FPN backbone and the authors' detection defaults,
and the detectors ``coat detect`` trains (``DETECTORS``).

Defaults follow the authors' Mask R-CNN setup: multi-scale training with the short side in
480-800 (max side 1333; torchvision picks one per image in training, tests at 800) and drop-path
per variant. Their optimiser settings for a training loop: AdamW lr 1e-4, weight decay 0.05,
1x = 12 epochs with lr steps at 8 and 11, 500-iteration linear warm-up, horizontal flip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN

from .anchors import mmdet_anchor_generator
from .backbone import coat_fpn_backbone
from .cascade import CascadeMaskRCNN, CascadeRCNN
from .poolers import AlignedMultiScaleRoIAlign

# Drop-path of the authors' Mask R-CNN configurations.
DETECTION_DROP_PATH = {"coat_lite_mini": 0.1, "coat_lite_small": 0.2, "coat_mini": 0.1, "coat_small": 0.2}
TRAIN_SHORT_SIDES = tuple(range(480, 801, 32))  # multi-scale training
MAX_SIDE = 1333
# Deformable DETR's sampling offsets and reference points, trained at a tenth of the lr by the authors.
SAMPLING_PARAMETERS = r"\.(sampling_offsets|reference_points)\."
MASK_DETECTORS = (MaskRCNN, CascadeMaskRCNN)


def rcnn_coat(
    detector: type[FasterRCNN],
    variant: str,
    num_classes: int = 91,
    backbone_weights: str | os.PathLike | None = None,
    drop_path_rate: float | None = None,
    frozen_stages: int = 0,
    frozen_norms: bool = False,
    aligned_roi_pool: bool = False,
    mmdet_anchors: bool = False,
    **detector_kwargs: Any,
) -> FasterRCNN:
    """An R-CNN (torchvision's ``FasterRCNN`` or one of its subclasses: ``MaskRCNN``, ``CascadeRCNN``,
    ``CascadeMaskRCNN``) on CoaT + FPN with the authors' sizes.

    ``num_classes`` counts the background class; ``backbone_weights``: classification weights of the variant
    (a released weights name, any checkpoint the library reads); ``drop_path_rate``: default per variant, as in
    the authors' configs; ``frozen_stages`` / ``frozen_norms``: ``coat_fpn_backbone``'s; ``aligned_roi_pool``:
    pool RoIs as mmdetection does (``coat.detection.poolers``: half-pixel aligned, adaptive sampling), as the
    authors' released detectors were trained; ``mmdet_anchors``: RPN anchors without torchvision's rounding, as
    mmdetection makes them (``coat.detection.anchors``); ``detector_kwargs`` go to torchvision's detector (``min_size``,
    ``max_size``, thresholds, ...).
    """
    rate = DETECTION_DROP_PATH.get(variant, 0.1) if drop_path_rate is None else drop_path_rate
    backbone = coat_fpn_backbone(
        variant, backbone_weights, frozen_stages=frozen_stages, frozen_norms=frozen_norms, drop_path_rate=rate
    )
    defaults: dict[str, Any] = {"min_size": TRAIN_SHORT_SIDES, "max_size": MAX_SIDE}
    if mmdet_anchors:
        defaults["rpn_anchor_generator"] = mmdet_anchor_generator()
    if aligned_roi_pool:
        levels = ["0", "1", "2", "3"]  # FPN levels at strides 4-32, as torchvision's own poolers use
        defaults["box_roi_pool"] = AlignedMultiScaleRoIAlign(levels, 7)
        if issubclass(detector, MASK_DETECTORS):
            defaults["mask_roi_pool"] = AlignedMultiScaleRoIAlign(levels, 14)
    return detector(backbone, num_classes=num_classes, **{**defaults, **detector_kwargs})


def maskrcnn_coat(variant: str, num_classes: int = 91, **options: Any) -> MaskRCNN:
    """torchvision Mask R-CNN on CoaT + FPN; ``options`` as ``rcnn_coat``'s."""
    return rcnn_coat(MaskRCNN, variant, num_classes, **options)


def fasterrcnn_coat(variant: str, num_classes: int = 91, **options: Any) -> FasterRCNN:
    """torchvision Faster R-CNN on CoaT + FPN; ``options`` as ``rcnn_coat``'s."""
    return rcnn_coat(FasterRCNN, variant, num_classes, **options)


def cascade_maskrcnn_coat(
    variant: str, num_classes: int = 91, aligned_roi_pool: bool = True, **options: Any
) -> CascadeMaskRCNN:
    """Cascade Mask R-CNN on CoaT + FPN with the authors' cascade (``coat.detection.cascade``); RoIs pooled as
    mmdetection pools them unless ``aligned_roi_pool=False``; ``options`` as ``rcnn_coat``'s."""
    return rcnn_coat(CascadeMaskRCNN, variant, num_classes, aligned_roi_pool=aligned_roi_pool, **options)


def cascade_rcnn_coat(
    variant: str, num_classes: int = 91, aligned_roi_pool: bool = True, **options: Any
) -> CascadeRCNN:
    """Cascade R-CNN (boxes only) on CoaT + FPN; options as ``cascade_maskrcnn_coat``'s."""
    return rcnn_coat(CascadeRCNN, variant, num_classes, aligned_roi_pool=aligned_roi_pool, **options)


def deformable_detr_detector(variant: str, num_classes: int, **options: Any) -> nn.Module:
    """Deformable DETR on CoaT behind torchvision's detector interface (``num_classes`` counts the background, as
    for the R-CNNs); ``options`` as ``coat.detection.deformable_detr.DeformableDetrDetector.build``'s. Needs the
    ``hf`` extra."""
    from .deformable_detr import DeformableDetrDetector

    return DeformableDetrDetector.build(variant, num_classes, **options)


@dataclass(frozen=True)
class DetectorKind:
    """A detector ``coat detect`` trains: its builder ``(variant, num_classes counting the background, **options)``
    with torchvision's interface (``model(images, targets)`` -> losses, ``model(images)`` -> detections), whether it
    predicts masks, and its family ("rcnn" or "detr": which recipe values and options apply)."""

    build: Callable[..., nn.Module]
    masks: bool
    family: str


DETECTORS = {
    "maskrcnn": DetectorKind(maskrcnn_coat, masks=True, family="rcnn"),
    "fasterrcnn": DetectorKind(fasterrcnn_coat, masks=False, family="rcnn"),
    "cascade-mask": DetectorKind(cascade_maskrcnn_coat, masks=True, family="rcnn"),
    "cascade": DetectorKind(cascade_rcnn_coat, masks=False, family="rcnn"),
    "deformable-detr": DetectorKind(deformable_detr_detector, masks=False, family="detr"),
}
