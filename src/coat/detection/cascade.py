"""Cascade R-CNN (Cai and Vasconcelos, 2018) on torchvision's detection parts, as the CoaT authors configured their
Cascade Mask R-CNN ("4conv1f, GIoU", mmdetection 2.x).

A cascade runs three box heads one after another, each trained on the previous head's refined boxes with a stricter
IoU threshold for positives (0.5, 0.6, 0.7) and a finer box coder. Per stage, as the authors' config says: a
4-conv (256 channels, BatchNorm) + 1-fc (1024) box head, class-specific box regression trained with GIoU x10 on the
decoded boxes and cross-entropy x1, 512 sampled RoIs per image (25% positives, ground truth added as proposals),
stage losses weighted 1 / 0.5 / 0.25, and, for masks, a 4-conv mask head per stage. At inference the stages'
class logits are averaged, the last stage regresses the boxes, and the mask probabilities of all stages are
averaged. torchvision supplies the RPN, the transform, the pooling, the heads' layers and the losses' pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss

Boxes = list[torch.Tensor]  # one [N_i, 4] tensor (x1, y1, x2, y2) per image


@dataclass(frozen=True)
class StageSettings:
    """What differs between the stages: the IoU that makes a RoI positive, the box coder's weights (the inverse of
    mmdetection's target standard deviations) and the weight of the stage's losses."""

    iou_threshold: float
    coder_weights: tuple[float, float, float, float]
    loss_weight: float


# The authors' stages: target stds (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067).
AUTHORS_STAGES = (
    StageSettings(0.5, (10.0, 10.0, 5.0, 5.0), 1.0),
    StageSettings(0.6, (20.0, 20.0, 10.0, 10.0), 0.5),
    StageSettings(0.7, (1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067), 0.25),
)
GIOU_LOSS_WEIGHT = 10.0
HEAD_CONVS = (256, 256, 256, 256)
HEAD_FC = 1024
# Faster R-CNN's box_* options that the cascade heads take, with torchvision's (and the authors') defaults, and
# those that the stages' settings replace.
HEAD_DEFAULTS: dict[str, Any] = {
    "batch_size_per_image": 512,
    "positive_fraction": 0.25,
    "score_thresh": 0.05,
    "nms_thresh": 0.5,
    "detections_per_img": 100,
}
PER_STAGE_OPTIONS = ("box_fg_iou_thresh", "box_bg_iou_thresh", "bbox_reg_weights", "box_head", "box_predictor")


@dataclass
class SampledRoIs:
    """The RoIs one stage trains on, per image: boxes ``[R_i, 4]``, class labels ``[R_i]`` (0: background), the
    matched ground-truth index ``[R_i]`` and box ``[R_i, 4]``, and whether the RoI is a ground-truth box that was
    added as a proposal ``[R_i]`` (such RoIs are not passed on to the next stage)."""

    boxes: Boxes
    labels: list[torch.Tensor]
    matched: list[torch.Tensor]
    target_boxes: Boxes
    from_ground_truth: list[torch.Tensor]

    @property
    def positives(self) -> list[torch.Tensor]:
        return [torch.where(labels > 0)[0] for labels in self.labels]


def sample_rois(
    proposals: Boxes,
    targets: list[dict[str, torch.Tensor]],
    matcher: Matcher,
    sampler: BalancedPositiveNegativeSampler,
) -> SampledRoIs:
    """Add each image's ground-truth boxes to its proposals, label every box by its best ground-truth match
    (background below the matcher's threshold) and keep a balanced random subset."""
    sampled = SampledRoIs([], [], [], [], [])
    for boxes, target in zip(proposals, targets, strict=True):
        gt_boxes, gt_labels = target["boxes"].to(boxes.dtype), target["labels"]
        candidates = torch.cat([boxes, gt_boxes])  # [N + G, 4]
        if len(gt_boxes):
            matched = matcher(box_iou(gt_boxes, candidates))  # [N + G]: index, or -1 below the threshold
            labels = torch.where(matched >= 0, gt_labels[matched.clamp(min=0)], 0)
        else:
            matched = labels = candidates.new_zeros(len(candidates), dtype=torch.int64)
        (positive,), (negative,) = sampler([labels])
        keep = torch.where(positive | negative)[0]  # [R]
        matched = matched.clamp(min=0)[keep]
        sampled.boxes.append(candidates[keep])
        sampled.labels.append(labels[keep])
        sampled.matched.append(matched)
        sampled.target_boxes.append((gt_boxes if len(gt_boxes) else candidates.new_zeros(1, 4))[matched])
        sampled.from_ground_truth.append(keep >= len(boxes))
    return sampled


class CascadeStage(nn.Module):
    """One stage: a 4-conv 1-fc box head with its classifier and class-specific regressor, its box coder and
    matcher, and optionally a 4-conv mask head with its predictor."""

    def __init__(
        self, settings: StageSettings, num_classes: int, channels: int, box_pool_size: int, with_masks: bool
    ) -> None:
        super().__init__()
        self.settings = settings
        self.box_coder = BoxCoder(settings.coder_weights)
        self.matcher = Matcher(settings.iou_threshold, settings.iou_threshold, allow_low_quality_matches=False)
        self.box_head = FastRCNNConvFCHead(
            (channels, box_pool_size, box_pool_size), list(HEAD_CONVS), [HEAD_FC], norm_layer=nn.BatchNorm2d
        )
        self.box_predictor = FastRCNNPredictor(HEAD_FC, num_classes)  # logits [R, K], deltas [R, 4K]
        self.mask_head = MaskRCNNHeads(channels, HEAD_CONVS, dilation=1) if with_masks else None
        self.mask_predictor = MaskRCNNPredictor(HEAD_CONVS[-1], HEAD_CONVS[-1], num_classes) if with_masks else None

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[R, C, 7, 7]`` pooled features -> class logits ``[R, K]`` and box deltas ``[R, 4K]``, in float32 also
        under autocast (torchvision's box coder decodes in the deltas' dtype: bf16 would round coordinates of
        a few hundred pixels to 2 px; mmdetection forces float32 here too)."""
        logits, deltas = self.box_predictor(self.box_head(pooled))
        return logits.float(), deltas.float()

    def mask_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[R, C, 14, 14]`` pooled features -> mask logits ``[R, K, 28, 28]``."""
        return self.mask_predictor(self.mask_head(pooled))

    def boxes_of_class(self, deltas: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Decode each RoI's deltas ``[R, 4K]`` for its class ``labels [R]`` relative to ``boxes [R, 4]``."""
        rows = torch.arange(len(boxes), device=boxes.device)
        chosen = deltas.reshape(len(boxes), -1, 4)[rows, labels]  # [R, 4]
        return self.box_coder.decode_single(chosen, boxes)

    def losses(self, logits: torch.Tensor, deltas: torch.Tensor, rois: SampledRoIs) -> dict[str, torch.Tensor]:
        """Cross-entropy over all sampled RoIs and GIoU x10 between the decoded boxes of the positives (for their
        ground-truth class) and their ground-truth boxes, summed and divided by the number of sampled RoIs."""
        labels = torch.cat(rois.labels)
        boxes, target_boxes = torch.cat(rois.boxes), torch.cat(rois.target_boxes)
        positive = torch.where(labels > 0)[0]
        predicted = self.boxes_of_class(deltas[positive], boxes[positive], labels[positive])  # [P, 4]
        giou = generalized_box_iou_loss(predicted, target_boxes[positive], reduction="sum") / max(len(labels), 1)
        return {"loss_classifier": F.cross_entropy(logits, labels), "loss_box_giou": GIOU_LOSS_WEIGHT * giou}

    def refine(
        self, logits: torch.Tensor, deltas: torch.Tensor, rois: SampledRoIs, image_shapes: list[tuple[int, int]]
    ) -> Boxes:
        """The next stage's proposals: every sampled RoI but the added ground truth, moved by its deltas for its
        ground-truth class (positives) or its best-scoring foreground class (the rest), clipped to the image."""
        predicted_class = logits[:, 1:].argmax(dim=1) + 1
        counts = [len(boxes) for boxes in rois.boxes]
        refined = []
        for boxes, labels, guess, image_deltas, from_gt, shape in zip(
            rois.boxes, rois.labels, predicted_class.split(counts), deltas.split(counts), rois.from_ground_truth,
            image_shapes, strict=True,
        ):  # fmt: skip
            moved = self.boxes_of_class(image_deltas, boxes, torch.where(labels > 0, labels, guess))
            refined.append(clip_boxes_to_image(moved, shape)[~from_gt].detach())
        return refined


class CascadeRoIHeads(nn.Module):
    """The RoI heads of Cascade (Mask) R-CNN with torchvision's RoIHeads interface:
    ``forward(features, proposals, image_shapes, targets)`` -> (detections, losses). Its ``score_thresh``,
    ``nms_thresh`` and ``detections_per_img`` are torchvision's attributes of the same names."""

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        stages: list[CascadeStage],
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_roi_pool: MultiScaleRoIAlign | None = None,
    ) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.mask_roi_pool = mask_roi_pool
        self.stages = nn.ModuleList(stages)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def with_masks(self) -> bool:
        return self.mask_roi_pool is not None

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: Boxes,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            return [], self.training_losses(features, proposals, image_shapes, targets)
        return self.detect(features, proposals, image_shapes), {}

    def training_losses(
        self,
        features: dict[str, torch.Tensor],
        proposals: Boxes,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Every stage's losses (``loss_classifier_0``, ``loss_box_giou_0``, ``loss_mask_0``, ...), each weighted
        by its stage's weight; stage i + 1 trains on stage i's refined (detached) boxes."""
        losses = {}
        boxes = [p.detach() for p in proposals]
        for index, stage in enumerate(self.stages):
            rois = sample_rois(boxes, targets, stage.matcher, self.fg_bg_sampler)
            logits, deltas = stage(self.box_roi_pool(features, rois.boxes, image_shapes))
            stage_losses = stage.losses(logits, deltas, rois)
            if self.with_masks:
                stage_losses["loss_mask"] = self.mask_loss(stage, features, rois, image_shapes, targets)
            losses.update({f"{name}_{index}": stage.settings.loss_weight * v for name, v in stage_losses.items()})
            if index < len(self.stages) - 1:
                with torch.no_grad():
                    boxes = stage.refine(logits, deltas, rois, image_shapes)
        return losses

    def mask_loss(
        self,
        stage: CascadeStage,
        features: dict[str, torch.Tensor],
        rois: SampledRoIs,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """Binary cross-entropy of the stage's masks on its positive RoIs (torchvision's Mask R-CNN loss)."""
        positives = rois.positives
        boxes = [b[p] for b, p in zip(rois.boxes, positives, strict=True)]
        matched = [m[p] for m, p in zip(rois.matched, positives, strict=True)]
        logits = stage.mask_logits(self.mask_roi_pool(features, boxes, image_shapes))
        return maskrcnn_loss(logits, boxes, [t["masks"] for t in targets], [t["labels"] for t in targets], matched)

    def detect(
        self, features: dict[str, torch.Tensor], proposals: Boxes, image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """Run the stages in turn, each on the boxes the one before refined (by its best foreground class); score
        with the softmax of the stages' mean logits and box with the last stage's class-specific regression."""
        counts = [len(p) for p in proposals]
        boxes = torch.cat(proposals)  # [R, 4] over all images
        logit_sum = 0
        for index, stage in enumerate(self.stages):
            logits, deltas = stage(self.box_roi_pool(features, boxes.split(counts), image_shapes))
            logit_sum = logit_sum + logits
            if index < len(self.stages) - 1:
                best = logits[:, 1:].argmax(dim=1) + 1
                moved = stage.boxes_of_class(deltas, boxes, best).split(counts)
                boxes = torch.cat([clip_boxes_to_image(b, s) for b, s in zip(moved, image_shapes, strict=True)])
        scores = F.softmax(logit_sum / len(self.stages), dim=-1)  # [R, K]
        per_class = self.stages[-1].box_coder.decode_single(deltas, boxes).reshape(len(boxes), -1, 4)  # [R, K, 4]
        detections = [
            self.select(image_boxes, image_scores, shape)
            for image_boxes, image_scores, shape in zip(
                per_class.split(counts), scores.split(counts), image_shapes, strict=True
            )
        ]
        if self.with_masks:
            self.add_masks(features, detections, image_shapes)
        return detections

    def select(
        self, boxes: torch.Tensor, scores: torch.Tensor, image_shape: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """One image's detections from its ``[R, K, 4]`` boxes and ``[R, K]`` probabilities: every foreground
        (RoI, class) pair above ``score_thresh``, non-maximum suppression per class, the best
        ``detections_per_img``."""
        classes = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
        boxes = clip_boxes_to_image(boxes[:, 1:].reshape(-1, 4), image_shape)  # background dropped
        scores, classes = scores[:, 1:].reshape(-1), classes[:, 1:].reshape(-1)
        confident = torch.where(scores > self.score_thresh)[0]
        boxes, scores, classes = boxes[confident], scores[confident], classes[confident]
        keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "labels": classes[keep], "scores": scores[keep]}

    def add_masks(
        self, features: dict[str, torch.Tensor], detections: list[dict[str, torch.Tensor]], image_shapes: list
    ) -> None:
        """Set each detection's ``masks`` ``[D, 1, 28, 28]``: the stages' mask probabilities for its class, averaged
        (torchvision's transform pastes them into the image)."""
        pooled = self.mask_roi_pool(features, [d["boxes"] for d in detections], image_shapes)
        probabilities = sum(stage.mask_logits(pooled).sigmoid() for stage in self.stages) / len(self.stages)
        labels = torch.cat([d["labels"] for d in detections])
        chosen = probabilities[torch.arange(len(labels), device=labels.device), labels][:, None]
        for detection, masks in zip(detections, chosen.split([len(d["labels"]) for d in detections]), strict=True):
            detection["masks"] = masks


class CascadeRCNN(FasterRCNN):
    """torchvision's Faster R-CNN (transform, backbone, RPN) with Cascade RoI heads: boxes only. ``kwargs`` are
    Faster R-CNN's (``min_size``, ``rpn_*``, ``box_roi_pool``, ``box_score_thresh``, ...)."""

    with_masks = False

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        stages: tuple[StageSettings, ...] = AUTHORS_STAGES,
        mask_roi_pool: MultiScaleRoIAlign | None = None,
        **kwargs: Any,
    ) -> None:
        fixed = [name for name in PER_STAGE_OPTIONS if name in kwargs]
        if fixed:
            raise TypeError(f"{', '.join(fixed)}: the cascade sets these per stage; pass stages=(StageSettings, ...)")
        heads = {name: kwargs.pop(f"box_{name}", default) for name, default in HEAD_DEFAULTS.items()}
        # Faster R-CNN's own RoI heads are built around placeholders and replaced by the cascade.
        super().__init__(backbone, num_classes=None, box_head=nn.Identity(), box_predictor=nn.Identity(), **kwargs)
        box_roi_pool = self.roi_heads.box_roi_pool
        pool_size = box_roi_pool.output_size[0]
        if self.with_masks and mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(box_roi_pool.featmap_names, 14, box_roi_pool.sampling_ratio)
        channels = backbone.out_channels
        self.roi_heads = CascadeRoIHeads(
            box_roi_pool,
            [CascadeStage(s, num_classes, channels, pool_size, self.with_masks) for s in stages],
            mask_roi_pool=mask_roi_pool if self.with_masks else None,
            **heads,
        )


class CascadeMaskRCNN(CascadeRCNN):
    """Cascade R-CNN with a mask head per stage (``mask_roi_pool``: default 14x14 from the box pooler's levels)."""

    with_masks = True
