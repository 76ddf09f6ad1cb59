"""Detection as a training task for ``coat.train.loop``: ``fit(config)`` is ``coat detect train``.

The loop (checkpoints, exact resume, torchrun, AMP, progress, metrics.jsonl / TensorBoard /
plots) is the classification one; this module supplies COCO data, the detector (a torchvision R-CNN on a
CoaT + FPN backbone, or Deformable DETR on CoaT behind the same interface), the warm-up + step schedule, the
summed detector losses and COCO AP. best.safetensors is picked by box AP.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import DataError
from ..models.coat import find_coat
from ..train.distributed import DistInfo
from ..train.loaders import run_loaders
from ..train.loop import Runtime, run
from ..train.optim import warmup_multistep
from .builders import DETECTORS, SAMPLING_PARAMETERS
from .coco_eval import evaluate_detector
from .config import DetectConfig
from .data import CocoDetectionSet, CocoIndex, collate_detection, detection_transform, read_coco
from .weights import DetectorSpec, save_detector


def move_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]


class DetectionTask:
    score = "box_ap"
    plot_panels: ClassVar[dict[str, list[str]]] = {
        "loss": ["train_loss"],
        "ap": ["val_box_ap", "val_box_ap50", "val_mask_ap", "val_mask_ap50"],
        "lr": ["lr"],
    }

    def __init__(self, config: DetectConfig) -> None:
        self.config = config
        self.train_index: CocoIndex | None = None
        self.val_index: CocoIndex | None = None
        self.spec: DetectorSpec | None = None

    @property
    def with_masks(self) -> bool:
        return DETECTORS[self.config.detector].masks

    @property
    def family(self) -> str:
        return DETECTORS[self.config.detector].family

    def build_data(self, info: DistInfo) -> tuple[DataLoader, DataLoader]:
        config = self.config
        train = read_coco(config.train_annotations, config.train_images, config.skip_corrupt)
        val = read_coco(config.val_annotations, config.val_images, config.skip_corrupt)
        if self.with_masks and not train.has_masks:
            raise DataError(
                f"{config.train_annotations} has annotations without segmentation; --detector {config.detector} "
                "needs masks: add them or pass a box-only --detector (fasterrcnn, cascade or deformable-detr)"
            )
        if val.category_ids != train.category_ids:
            raise DataError(
                f"{config.val_annotations} and {config.train_annotations} list different categories; "
                "evaluate on data with the training categories"
            )
        global_batch = config.batch_size * info.world_size
        if len(train.images) < global_batch:
            raise DataError(
                f"the training set has {len(train.images)} images, fewer than one global batch of "
                f"{global_batch}; lower --batch-size"
            )
        self.train_index, self.val_index = train, val
        self.spec = DetectorSpec(
            config.detector,
            config.model,
            train.class_names,
            train.category_ids,
            config.min_sizes,
            config.max_size,
            self.architecture(),
        )
        train_set = CocoDetectionSet(
            train, detection_transform(config.hflip, config.random_crop), self.with_masks, config.skip_corrupt
        )
        val_set = CocoDetectionSet(
            val,
            detection_transform(0.0),
            with_masks=False,  # COCOeval reads the JSON's
            skip_corrupt=config.skip_corrupt,
        )
        # One image per forward in evaluation: batched images are zero-padded to a common size, and the padding
        # changes the attention's features, so batch 1 makes the metrics independent of how images are grouped.
        return run_loaders(train_set, val_set, info, config, collate_detection, val_batch_size=1)

    def architecture(self) -> dict[str, Any]:
        """The builder's architecture settings, saved with the checkpoint (``DetectorSpec.options``)."""
        config = self.config
        if self.family == "detr":
            layers = config.transformer_layers
            return {"num_queries": config.num_queries, "encoder_layers": layers, "decoder_layers": layers}
        return {
            "box_detections_per_img": config.detections_per_image,
            "rpn_post_nms_top_n_test": config.rpn_post_nms_top_n_test,
        }

    def training_options(self) -> dict[str, Any]:
        """The builder's options that only training uses (not needed to rebuild the checkpoint)."""
        config = self.config
        if self.family == "detr":
            return {}
        return {
            "frozen_stages": config.frozen_stages,
            "frozen_norms": config.frozen_norms,
            "box_batch_size_per_image": config.box_batch_size_per_image,
            "rpn_post_nms_top_n_train": config.rpn_post_nms_top_n_train,
        }

    def build_model(self) -> nn.Module:
        config = self.config
        model = self.spec.build(config.pretrained, drop_path_rate=config.drop_path, **self.training_options())
        find_coat(model)[1].set_grad_checkpointing(config.grad_checkpointing)
        return model

    def peak_lr(self, world_size: int) -> float:
        return self.config.lr  # the authors' lr is for a total batch of 16; set --lr for other sizes

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """--backbone-lr-scale for CoaT's parameters, --sampling-lr-scale for Deformable DETR's sampling offsets and
        reference points."""
        backbone = find_coat(model)[0]
        return {
            rf"^{re.escape(backbone)}\.": self.config.backbone_lr_scale,
            SAMPLING_PARAMETERS: self.config.sampling_lr_scale,
        }

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, peak_lr: float, steps_per_epoch: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        config = self.config
        return warmup_multistep(
            optimizer, config.warmup_iters, config.warmup_factor, [epoch * steps_per_epoch for epoch in config.lr_steps]
        )

    def skipped_in(self, batch: tuple[list, list, int]) -> int:
        return batch[2]

    def batch_loss(self, model: nn.Module, batch: tuple[list, list, int], runtime: Runtime) -> tuple[torch.Tensor, int]:
        images, targets, _ = batch
        device = runtime.device
        if not images:
            return torch.zeros((), device=device), 0
        with runtime.autocast:
            losses = model([image.to(device, non_blocking=True) for image in images], move_targets(targets, device))
        return sum(losses.values()), len(images)  # RPN + box (+ mask) losses, or DETR's weighted set losses

    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict[str, Any]:
        index = self.val_index
        with runtime.autocast:
            metrics, _ = evaluate_detector(
                model, loader, runtime.device, index.coco, index.category_ids, self.with_masks, runtime.info
            )
        metrics.pop("images")
        return metrics

    def save_best(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
        save_detector(model, self.spec, path, metadata)

    def describe(self, runtime: Runtime, peak_lr: float) -> str:
        config, train, val = self.config, self.train_index, self.val_index
        info, device = runtime.info, runtime.device
        notes = (
            [f"{train.dropped_boxes + val.dropped_boxes} degenerate boxes dropped"]
            if train.dropped_boxes + val.dropped_boxes
            else []
        )
        missing = len(train.missing_images) + len(val.missing_images)
        notes += [f"{missing} images without files skipped"] if missing else []
        empty = train.empty_categories
        notes += [f"{len(empty)} classes without training annotations ({', '.join(empty)})"] if empty else []
        return (
            f"training {config.detector} on {config.model} ({config.recipe} recipe): {len(train.images)} train / "
            f"{len(val.images)} val images, {len(train.class_names)} classes, {info.world_size} process(es) on "
            f"{device}, global batch {config.batch_size * info.world_size}, peak lr {peak_lr:.2e}"
            + "".join(f"; {note}" for note in notes)
        )


def fit(config: DetectConfig) -> dict[str, Any]:
    """Train a detector to the end (or resume it); returns the run summary."""
    return run(DetectionTask(config))
