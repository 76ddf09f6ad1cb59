"""The authors' released detectors (mmdetection 2.x Mask R-CNN and Cascade Mask R-CNN on CoaT, COCO) as our
torchvision models: ``convert_mmdet_detector(path)`` -> (model, spec).

What the conversion does, from the authors' configs and mmdetection 2.x's module names:
- keys: ``backbone.*`` -> CoaT's (``coat.checkpoint.authors_to_coat``); ``neck`` (FPN, ``ConvModule``'s ``.conv``)
  -> torchvision's FPN blocks; ``rpn_head.rpn_conv / rpn_cls / rpn_reg`` -> ``rpn.head``; ``roi_head.bbox_head``
  (Mask R-CNN's ``shared_fcs.0 / 1``, or per cascade stage ``shared_convs.i.conv / .bn`` and ``shared_fcs.0``) and
  ``roi_head.mask_head`` (``convs.i.conv``, ``upsample``, ``conv_logits``) -> the RoI heads.
- classes: mmdetection puts the background last in ``fc_cls`` and has no background rows in the class-specific
  ``fc_reg`` and ``conv_logits``; torchvision puts the background first, so its row moves to the front and zero
  rows stand for the background's (never used) box deltas and mask.
- the model: RoIs pooled as mmcv's RoIAlign does (aligned, adaptive sampling) and RPN anchors without
  torchvision's rounding of the base anchors (mmdetection 2.x does not round), tested at 800 / max 1333.
The images' resize differs by at most a pixel (mmdetection rounds the new size, torchvision floors it); no COCO
evaluation of a converted file could be run here (no download is possible), so the released AP is unverified.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import _COCO_CATEGORIES

from ..checkpoint import CheckpointError, authors_to_coat, is_mmdet_detector, load_state_into, read_torch_state
from ..factory import variant_config
from ..models.coat import CoaT
from ..models.config import VARIANTS
from .weights import DetectorSpec, save_detector

COCO_IDS = [index for index, name in enumerate(_COCO_CATEGORIES) if name not in ("__background__", "N/A")]
COCO_NAMES = [_COCO_CATEGORIES[index] for index in COCO_IDS]
TEST_SHORT_SIDE, TEST_MAX_SIDE = 800, 1333
CONVERTED_OPTIONS = {"aligned_roi_pool": True, "mmdet_anchors": True}

# mmdetection key (regular expression) -> our key; the backbone is mapped separately.
_KEY_RULES = [
    (r"neck\.lateral_convs\.(\d)\.conv\.(.*)", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"neck\.fpn_convs\.(\d)\.conv\.(.*)", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (r"rpn_head\.rpn_conv\.(.*)", r"rpn.head.conv.0.0.\1"),
    (r"rpn_head\.rpn_cls\.(.*)", r"rpn.head.cls_logits.\1"),
    (r"rpn_head\.rpn_reg\.(.*)", r"rpn.head.bbox_pred.\1"),
    # Mask R-CNN: torchvision's TwoMLPHead, predictor and mask head
    (r"roi_head\.bbox_head\.shared_fcs\.0\.(.*)", r"roi_heads.box_head.fc6.\1"),
    (r"roi_head\.bbox_head\.shared_fcs\.1\.(.*)", r"roi_heads.box_head.fc7.\1"),
    (r"roi_head\.bbox_head\.fc_cls\.(.*)", r"roi_heads.box_predictor.cls_score.\1"),
    (r"roi_head\.bbox_head\.fc_reg\.(.*)", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"roi_head\.mask_head\.convs\.(\d)\.conv\.(.*)", r"roi_heads.mask_head.\1.0.\2"),
    (r"roi_head\.mask_head\.upsample\.(.*)", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"roi_head\.mask_head\.conv_logits\.(.*)", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
    # Cascade: one box head (4 conv + BN, then the fc at index 5 after the flatten) and mask head per stage
    (r"roi_head\.bbox_head\.(\d)\.shared_convs\.(\d)\.conv\.(.*)", r"roi_heads.stages.\1.box_head.\2.0.\3"),
    (r"roi_head\.bbox_head\.(\d)\.shared_convs\.(\d)\.bn\.(.*)", r"roi_heads.stages.\1.box_head.\2.1.\3"),
    (r"roi_head\.bbox_head\.(\d)\.shared_fcs\.0\.(.*)", r"roi_heads.stages.\1.box_head.5.\2"),
    (r"roi_head\.bbox_head\.(\d)\.fc_cls\.(.*)", r"roi_heads.stages.\1.box_predictor.cls_score.\2"),
    (r"roi_head\.bbox_head\.(\d)\.fc_reg\.(.*)", r"roi_heads.stages.\1.box_predictor.bbox_pred.\2"),
    (r"roi_head\.mask_head\.(\d)\.convs\.(\d)\.conv\.(.*)", r"roi_heads.stages.\1.mask_head.\2.0.\3"),
    (r"roi_head\.mask_head\.(\d)\.upsample\.(.*)", r"roi_heads.stages.\1.mask_predictor.conv5_mask.\2"),
    (r"roi_head\.mask_head\.(\d)\.conv_logits\.(.*)", r"roi_heads.stages.\1.mask_predictor.mask_fcn_logits.\2"),
]


def backbone_variant(backbone: dict[str, torch.Tensor]) -> str:
    """The CoaT variant whose four-scale body (no classifier) has exactly ``backbone``'s names and shapes."""
    shapes = {k: tuple(v.shape) for k, v in backbone.items()}
    for name in VARIANTS:
        with torch.device("meta"):
            body = CoaT(variant_config(name, num_classes=0))
            body.prune_intermediate_layers([0, 1, 2, 3], prune_norm=True)
        if shapes == {k: tuple(v.shape) for k, v in body.state_dict().items()}:
            return name
    raise CheckpointError(f"the backbone matches none of the CoaT variants ({', '.join(VARIANTS)})")


def background_first(key: str, value: torch.Tensor) -> torch.Tensor:
    """mmdetection's class-indexed rows in torchvision's order (background first)."""
    if ".box_predictor.cls_score." in key:  # [K + 1, ...], background last
        return torch.cat([value[-1:], value[:-1]])
    if ".box_predictor.bbox_pred." in key:  # [4K, ...] class-specific deltas: zero deltas for the background
        return torch.cat([value.new_zeros(4, *value.shape[1:]), value])
    if ".mask_fcn_logits." in key:  # [K, ...] masks: a zero background mask
        return torch.cat([value.new_zeros(1, *value.shape[1:]), value])
    return value


def map_mmdet_state(state: dict[str, torch.Tensor]) -> tuple[str, str, int, dict[str, torch.Tensor]]:
    """(detector name, CoaT variant, classes without the background, our state dict) of an mmdetection state
    dict; a one-line ``CheckpointError`` naming the keys that have no place."""
    backbone, ours, unknown = {}, {}, []
    for key, value in state.items():
        if key.startswith("backbone."):
            backbone[key.removeprefix("backbone.")] = value
            continue
        target = next((re.sub(p, r, key) for p, r in _KEY_RULES if re.fullmatch(p, key)), None)
        if target is None:
            unknown.append(key)
        else:
            ours[target] = background_first(target, value)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise CheckpointError(
            f"keys with no place in our Mask R-CNN / Cascade Mask R-CNN: {', '.join(unknown[:3])}{more}; only the "
            "authors' CoaT Mask R-CNN and Cascade Mask R-CNN (mmdetection 2.x) convert"
        )
    coat_state, _ = authors_to_coat(backbone)
    variant = backbone_variant(coat_state)
    ours.update({f"backbone.body.body.{k}": v for k, v in coat_state.items()})
    cascade = any(k.startswith("roi_heads.stages.") for k in ours)
    masks = any(".mask_predictor." in k for k in ours)
    detector = {(True, True): "cascade-mask", (True, False): "cascade", (False, True): "maskrcnn"}.get(
        (cascade, masks), "fasterrcnn"
    )
    classifier = next(v for k, v in ours.items() if k.endswith("cls_score.weight"))
    return detector, variant, len(classifier) - 1, ours


def convert_mmdet_detector(path: str | os.PathLike) -> tuple[nn.Module, DetectorSpec]:
    """The detector in the authors' mmdetection checkpoint at ``path`` (weights_only read), in eval mode, and the
    spec that saves it as our detector checkpoint; every key of the file is placed and every parameter set."""
    state = read_torch_state(Path(path))
    if not is_mmdet_detector(state):
        raise CheckpointError(f"{path} is not an mmdetection detector (no rpn_head / roi_head keys)")
    detector, variant, classes, ours = map_mmdet_state(state)
    if classes != len(COCO_NAMES):
        raise CheckpointError(f"{path} detects {classes} classes; only COCO's 80 (the authors' files) are known")
    spec = DetectorSpec(
        detector, variant, COCO_NAMES, COCO_IDS, (TEST_SHORT_SIDE,), TEST_MAX_SIDE, dict(CONVERTED_OPTIONS)
    )
    model = spec.build()
    load_state_into(model, ours, source=str(path))
    return model.eval(), spec


def save_converted_detector(src: str | os.PathLike, dst: str | os.PathLike) -> DetectorSpec:
    """Convert the authors' mmdetection file ``src`` and write it as our detector checkpoint ``dst``."""
    model, spec = convert_mmdet_detector(src)
    save_detector(model, spec, dst, {"converted_from": Path(src).name})
    return spec
