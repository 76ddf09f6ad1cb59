"""Scoring a segmenter: logits of whole images or of sliding windows, upsampled to the annotation's size, into a
confusion matrix summed over processes, then ``coat.segmentation.metrics``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.datasets import DataError
from ..train.distributed import DistInfo, all_reduce_sum
from .metrics import confusion_matrix, segmentation_metrics


def default_stride(window: int) -> int:
    """The sliding-window step when none is given: two thirds of the window (341 for 512, as mmsegmentation)."""
    return max(1, window * 2 // 3)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of windows of ``window`` pixels every ``stride`` covering ``length`` (the last one flush with the end;
    one window when the side is shorter)."""
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]


def predict_logits(
    model: nn.Module, image: torch.Tensor, mode: str = "whole", window: int = 512, stride: int = 341
) -> torch.Tensor:
    """``[B, C, H, W]`` logits of ``image`` ``[B, 3, H, W]``: at once (``whole``), or averaged over overlapping
    ``window`` x ``window`` crops (``slide``)."""
    if mode == "whole":
        return model(pixel_values=image).logits
    height, width = image.shape[-2:]
    total, count = None, image.new_zeros(1, 1, height, width)
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            crop = image[..., top : top + window, left : left + window]
            logits = model(pixel_values=crop).logits.float()
            if total is None:
                total = image.new_zeros(image.shape[0], logits.shape[1], height, width, dtype=torch.float32)
            total[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += logits
            count[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += 1
    return total / count


def predict_classes(model: nn.Module, image: torch.Tensor, size: tuple[int, int], **options: Any) -> torch.Tensor:
    """``[B, H, W]`` class indices of ``image`` at ``size`` (the annotation's), from ``predict_logits``."""
    logits = predict_logits(model, image, **options)
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).argmax(1)


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    class_names: list[str],
    info: DistInfo = DistInfo(),
    progress: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """mIoU, per-class IoU and accuracies over the whole (sharded) ``loader`` of (image, mask) pairs, batch 1;
    the same on every process (batches may carry more, e.g. a skip count). ``options``: ``predict_logits``'s mode,
    window and stride."""
    model.eval()
    confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.int64, device=device)
    images = torch.zeros((), dtype=torch.int64, device=device)
    for image, mask, *_ in tqdm(loader, desc=progress, leave=False, disable=progress is None or not info.is_main):
        mask = mask.to(device)
        predicted = predict_classes(model, image.to(device), tuple(mask.shape[-2:]), **options)
        confusion += confusion_matrix(predicted, mask, len(class_names))
        images += image.shape[0]
    confusion, images = all_reduce_sum(confusion, info), all_reduce_sum(images, info)
    if int(images) == 0:
        raise DataError("the evaluation set yielded no images")
    return {**segmentation_metrics(confusion.cpu(), class_names), "images": int(images)}
