"""Semantic segmentation as a training task for ``coat.train.loop``: ``fit(config)`` is ``coat segment train``.

The loop (checkpoints, exact resume, torchrun, AMP, progress, metrics.jsonl / TensorBoard / plots) is the
classification one; this module supplies the checked data folders, UperNet on CoaT, the warm-up + poly schedule,
UperNet's loss (cross-entropy + 0.4 x the auxiliary head's) and mIoU. best.safetensors is picked by mIoU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from ..data.datasets import DataError
from ..models.coat import find_coat
from ..train.distributed import DistInfo
from ..train.loaders import run_loaders
from ..train.loop import Runtime, run
from ..train.optim import warmup_poly
from .config import SegmentConfig
from .data import SegmentationSplit, read_split
from .dataset import SegmentationSet, train_transform
from .evaluate import evaluate_segmenter
from .weights import SegmenterSpec, save_segmenter


def collate_segmentation(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stacked images and masks (training crops share one size; evaluation runs one image a batch), no skips."""
    images, masks = default_collate(batch)
    return images, masks, 0


def validation_split(config: SegmentConfig, class_names: list[str]) -> SegmentationSplit:
    """``--val-data``'s validation split (or, for a folder without one, the whole folder), else the training
    folder's own validation split."""
    if config.val_data is not None:
        split = read_split(config.val_data, "val", class_names) or read_split(config.val_data, "train", class_names)
    else:
        split = read_split(config.data, "val", class_names)
    if split is None:
        raise DataError(f"{config.data} has no validation split; pass --val-data DIR (a folder in the same layout)")
    return split


class SegmentationTask:
    score = "miou"
    plot_panels: ClassVar[dict[str, list[str]]] = {
        "loss": ["train_loss"],
        "miou": ["val_miou", "val_pixel_accuracy", "val_mean_accuracy"],
        "lr": ["lr"],
    }

    def __init__(self, config: SegmentConfig) -> None:
        self.config = config
        self.train_split: SegmentationSplit | None = None
        self.val_split: SegmentationSplit | None = None
        self.spec: SegmenterSpec | None = None

    def build_data(self, info: DistInfo) -> tuple[DataLoader, DataLoader]:
        config = self.config
        train = read_split(config.data, "train")
        val = validation_split(config, train.class_names)
        global_batch = config.batch_size * info.world_size
        if len(train.pairs) < global_batch:
            raise DataError(
                f"the training set has {len(train.pairs)} images, fewer than one global batch of {global_batch}; "
                "lower --batch-size"
            )
        self.train_split, self.val_split = train, val
        head = {"hidden_size": config.decoder_channels, "auxiliary_channels": max(1, config.decoder_channels // 2)}
        self.spec = SegmenterSpec(config.model, train.class_names, config.input_size, config.base_scale, head)
        scale_range = (config.scale_range[0], config.scale_range[1])
        augment = train_transform(
            config.input_size, config.base_scale, scale_range, config.hflip, config.photometric, config.cat_max_ratio
        )
        train_set = SegmentationSet(train, augment)
        val_set = SegmentationSet.for_evaluation(val, config.base_scale)
        # One image per forward in evaluation: images differ in size, and metrics are taken at each mask's own.
        return run_loaders(train_set, val_set, info, config, collate_segmentation, val_batch_size=1)

    def build_model(self) -> nn.Module:
        model = self.spec.build(self.config.pretrained, drop_path_rate=self.config.drop_path)
        find_coat(model)[1].set_grad_checkpointing(self.config.grad_checkpointing)
        return model

    def peak_lr(self, world_size: int) -> float:
        return self.config.lr  # the recipe's lr is for a total batch of 16; set --lr for other sizes

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        return {}  # one lr for backbone and heads, as the ADE20K UperNet recipes train

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, peak_lr: float, steps_per_epoch: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        config = self.config
        total = config.epochs * steps_per_epoch
        return warmup_poly(optimizer, config.warmup_iters, config.warmup_ratio, total, config.poly_power)

    def skipped_in(self, batch: tuple[torch.Tensor, torch.Tensor, int]) -> int:
        return batch[2]

    def batch_loss(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, int], runtime: Runtime
    ) -> tuple[torch.Tensor, int]:
        images, masks, _ = batch
        device = runtime.device
        with runtime.autocast:
            outputs = model(
                pixel_values=images.to(device, non_blocking=True), labels=masks.to(device, non_blocking=True)
            )
        return outputs.loss, len(images)  # cross-entropy + 0.4 x the auxiliary head's, label 255 ignored

    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict[str, Any]:
        config = self.config
        with runtime.autocast:
            metrics = evaluate_segmenter(
                model,
                loader,
                runtime.device,
                self.spec.class_names,
                runtime.info,
                mode=config.eval_mode,
                window=config.input_size,
                stride=config.eval_stride,
            )
        metrics.pop("images")
        return metrics

    def save_best(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
        save_segmenter(model, self.spec, path, metadata)

    def describe(self, runtime: Runtime, peak_lr: float) -> str:
        config, train, val = self.config, self.train_split, self.val_split
        return (
            f"training UperNet on {config.model} ({config.recipe} recipe): {len(train.pairs)} train / "
            f"{len(val.pairs)} val images ({train.layout} layout), {len(train.class_names)} classes, "
            f"{runtime.info.world_size} process(es) on {runtime.device}, global batch "
            f"{config.batch_size * runtime.info.world_size}, {config.input_size}px crops, peak lr {peak_lr:.2e}"
        )


def fit(config: SegmentConfig) -> dict[str, Any]:
    """Train a segmenter to the end (or resume it); returns the run summary."""
    return run(SegmentationTask(config))
