"""Image classification as a training task: ``fit(config)`` is ``coat train``.

The loop itself (checkpoints, resume, DDP, EMA, logging) is ``coat.train.loop``; this module
says how a classification run builds its data and model, computes a batch's loss (with MixUp /
CutMix and label smoothing) and measures top-1 / top-5 and the confusion matrix.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..checkpoint import save_checkpoint
from ..data.batch_augment import BatchTrainTransform
from ..data.datasets import EMBEDDED_NAME, DataError, Preloaded, collate_skipping_none, embedded_splits, folder_splits
from ..data.hf_datasets import hf_source, hf_splits
from ..data.preprocessing import Preprocessing
from ..data.shards import ShardStream, read_split, shard_root
from ..data.transforms import EachImage, batch_mixing, crop_transform, pixel_transform, train_transform
from ..factory import create_model
from ..models.coat import CoaT
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum
from .loaders import run_loaders, stream_loaders
from .loop import Runtime, amp_enabled, backward_and_step, run
from .optim import warmup_cosine


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent
    top5: float  # percent
    confusion: torch.Tensor  # [num_classes, num_classes], rows = true class
    count: int
    skipped: int

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (100.0 * self.confusion.diag() / totals).tolist()


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    label_smoothing: float = 0.0,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float = 0.0,
) -> torch.Tensor:
    """One optimizer step on a batch; returns the (detached) loss. ``targets`` may be soft."""
    with autocast or contextlib.nullcontext():
        loss = F.cross_entropy(model(images), targets, label_smoothing=label_smoothing)
    backward_and_step(loss, optimizer, model.parameters(), scaler, clip_grad)
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    info: DistInfo = DistInfo(),
    autocast: contextlib.AbstractContextManager | None = None,
    progress: str | None = None,
) -> EvalResult:
    """Loss, top-1/top-5 and the confusion matrix over ``loader`` (summed over processes); ``model`` is a module (put
    in eval mode here) or any images-to-logits callable (``coat.runtimes.classifier``)."""
    if isinstance(model, nn.Module):
        model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.long, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    skipped = 0
    bar = tqdm(loader, desc=progress, leave=False, disable=progress is None or not info.is_main)
    for images, targets, n_skipped in bar:
        skipped += n_skipped
        if not len(targets):
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        top = logits.topk(min(5, num_classes), dim=1).indices  # [B, 5]
        top5_hits += (top == targets[:, None]).any(dim=1).sum()
        confusion += torch.bincount(targets * num_classes + top[:, 0], minlength=num_classes * num_classes)
    totals = torch.stack(
        [loss_sum, top5_hits.double(), torch.tensor(float(skipped), device=device, dtype=torch.float64)]
    )
    all_reduce_sum(totals, info)
    all_reduce_sum(confusion, info)
    confusion = confusion.view(num_classes, num_classes).cpu()
    count = int(confusion.sum())
    if count == 0:
        raise DataError("the evaluation set yielded no readable images")
    return EvalResult(
        loss=totals[0].item() / count,
        top1=100.0 * confusion.diag().sum().item() / count,
        top5=100.0 * totals[1].item() / count,
        confusion=confusion,
        count=count,
        skipped=int(totals[2].item()),
    )


def per_image_train_transform(config: TrainConfig) -> Callable:
    """The training augmentation of ``config`` as one transform per image (PIL in, normalised tensor out)."""
    return train_transform(
        config.input_size,
        config.scale_min,
        config.hflip,
        config.randaugment_magnitude,
        config.random_erasing,
        config.mean,
        config.std,
        config.rotation,
    )


def split_size(dataset: Dataset) -> int:
    """The number of images in a split (a streamed one counts its shards' samples, not one process's share)."""
    return dataset.split.num_samples if isinstance(dataset, ShardStream) else len(dataset)


class ClassificationTask:
    """``coat train``: CoaT on an image folder or the embedded digits; best.safetensors by top-1."""

    score = "top1"
    plot_panels: ClassVar[dict[str, list[str]]] = {
        "loss": ["train_loss", "val_loss", "val_ema_loss"],
        "accuracy": ["val_top1", "val_top5", "val_ema_top1"],
        "lr": ["lr"],
    }

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.classes: list[str] = []
        self.mixing = None
        self.batch_transform: BatchTrainTransform | EachImage | None = None  # runs on the training device
        self.sizes = (0, 0)  # train, val images

    def augments_by_batch(self) -> bool:
        """In-memory data (the embedded set) whose recipe needs only crops and rotations: one resampling per
        batch instead of one transform call per image."""
        config = self.config
        return config.data is None and not (config.hflip or config.randaugment_magnitude or config.random_erasing)

    def build_data(self, info: DistInfo) -> tuple[DataLoader, DataLoader]:
        config = self.config
        val_tf = self.preprocessing().transforms()
        if self.augments_by_batch():
            self.batch_transform = BatchTrainTransform(
                config.input_size, config.scale_min, config.rotation, config.mean, config.std
            )
            train_set, val_set = embedded_splits(None, val_tf, raw_train=True)
            val_set = Preloaded(val_set)  # evaluated every epoch with the same transform
        else:
            if config.pixel_augment_on_device:  # workers: uint8 crops; the device: the per-pixel rest, per image
                train_tf = crop_transform(config.input_size, config.scale_min, config.hflip, config.rotation)
                self.batch_transform = EachImage(
                    pixel_transform(config.randaugment_magnitude, config.random_erasing, config.mean, config.std)
                )
            else:
                train_tf = per_image_train_transform(config)
            train_set, val_set = self.splits(train_tf, val_tf, info)
        self.classes, self.sizes = train_set.classes, (split_size(train_set), split_size(val_set))
        self.mixing = batch_mixing(config.mixup, config.cutmix, len(self.classes))
        global_batch = config.batch_size * info.world_size
        if self.sizes[0] < global_batch:
            raise DataError(
                f"the training set has {self.sizes[0]} images, fewer than one global batch of "
                f"{global_batch}; lower --batch-size"
            )
        if isinstance(train_set, ShardStream):
            return stream_loaders(train_set, val_set, config, collate_skipping_none)
        return run_loaders(train_set, val_set, info, config, collate_skipping_none, repeats=config.repeated_aug)

    def splits(self, train_tf: Callable, val_tf: Callable, info: DistInfo) -> tuple[Dataset, Dataset]:
        """The training and evaluation sets: the embedded digits, an image folder, a Hugging Face dataset
        (``--data hfds:NAME_OR_PATH``) or a shard folder (``--data wds:DIR``, streamed)."""
        config = self.config
        if config.data is None:
            return embedded_splits(train_tf, val_tf)
        source = hf_source(config.data)
        if source is not None:
            return hf_splits(source, config.train_split, config.val_split, train_tf, val_tf, config.skip_corrupt)
        root = shard_root(config.data)
        if root is None:
            return folder_splits(config.data, train_tf, val_tf, config.skip_corrupt)
        common = {
            "info": info,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "skip_corrupt": config.skip_corrupt,
        }
        train = read_split(root, config.train_split, config.train_samples, config.num_classes)
        val = read_split(root, config.val_split, config.val_samples, config.num_classes)
        return (
            ShardStream(train, train_tf, shuffle=True, repeats=config.repeated_aug, **common),
            ShardStream(val, val_tf, shuffle=False, **common),
        )

    def build_model(self) -> CoaT:
        config = self.config
        model = create_model(
            config.model,
            pretrained=config.pretrained,
            num_classes=len(self.classes),
            drop_path_rate=config.drop_path or 0.0,
        )
        model.preprocessing = self.preprocessing()  # saved with the checkpoints
        model.set_grad_checkpointing(config.grad_checkpointing)
        return model

    def preprocessing(self) -> Preprocessing:
        """The evaluation preprocessing of this run (the recipe's size, crop and normalisation)."""
        config = self.config
        return Preprocessing(
            input_size=config.input_size, crop_pct=config.crop_pct, mean=tuple(config.mean), std=tuple(config.std)
        )

    def peak_lr(self, world_size: int) -> float:
        config = self.config
        return config.lr if config.lr is not None else config.base_lr * config.batch_size * world_size / 512

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        scale = self.config.last_stage_lr_scale
        return {} if scale == 1.0 else {rf"^stages\.{len(model.stages) - 1}\.": scale}

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, peak_lr: float, steps_per_epoch: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        config = self.config
        return warmup_cosine(
            optimizer,
            peak_lr,
            config.warmup_lr,
            config.min_lr,
            int(config.warmup_epochs * steps_per_epoch),
            config.epochs * steps_per_epoch,
        )

    def skipped_in(self, batch: tuple[torch.Tensor, torch.Tensor, int]) -> int:
        return batch[2]

    def batch_loss(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, int], runtime: Runtime
    ) -> tuple[torch.Tensor, int]:
        images, targets, _ = batch
        device = runtime.device
        if not len(targets):
            return torch.zeros((), device=device), 0
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if self.batch_transform is not None:
            images = self.batch_transform(images)  # uint8 [B, C, H, W] -> normalised float [B, 3, S, S]
        if self.mixing is not None:
            images, targets = self.mixing(images, targets)  # targets become soft [B, num_classes]
        with runtime.autocast:
            loss = F.cross_entropy(model(images), targets, label_smoothing=self.config.label_smoothing)
        return loss, len(images)

    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict[str, Any]:
        result = evaluate(model, loader, runtime.device, len(self.classes), runtime.info, runtime.autocast)
        return {"loss": result.loss, "top1": result.top1, "top5": result.top5, "skipped": result.skipped}

    def save_best(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
        save_checkpoint(
            model, path, variant=self.config.model, metadata={"class_names": json.dumps(self.classes), **metadata}
        )

    def describe(self, runtime: Runtime, peak_lr: float) -> str:
        config, info, device = self.config, runtime.info, runtime.device
        source = EMBEDDED_NAME if config.data is None else config.data
        return (
            f"training {config.model} ({config.recipe} recipe) on {source}: {self.sizes[0]} train / "
            f"{self.sizes[1]} val images, {len(self.classes)} classes, {info.world_size} process(es) on {device}, "
            f"global batch {config.batch_size * info.world_size}, peak lr {peak_lr:.2e}"
            f"{', augmented by batch' if isinstance(self.batch_transform, BatchTrainTransform) else ''}"
            f"{', pixel augmentation on the device' if isinstance(self.batch_transform, EachImage) else ''}"
            f"{', bf16 autocast' if amp_enabled(device, config) else ''}"
        )


def fit(config: TrainConfig) -> dict[str, Any]:
    """Train ``config`` to the end (or resume it); the summary also says which data was used."""
    summary = run(ClassificationTask(config))
    return {**summary, "data": config.data or EMBEDDED_NAME}
