"""Semantic segmentation metrics from a confusion matrix, as ADE20K tables report them (mmsegmentation's
definitions): per-class IoU = TP / (TP + FP + FN), mIoU its mean over the classes that occur in the ground truth
or the predictions, pixel accuracy (aAcc) and mean class accuracy; in percent. Pixels labelled ``ignore_index``
count nowhere. Summing the matrices of every process gives the metrics of the whole set.
"""

from __future__ import annotations

from typing import Any

import torch

from .data import IGNORE_INDEX


def confusion_matrix(
    predicted: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts, rows the true class and columns the predicted one, over the
    pixels of ``predicted`` / ``target`` (class indices of the same shape) whose target is not ``ignore_index``."""
    kept = target != ignore_index
    pairs = target[kept].long() * num_classes + predicted[kept].long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """``miou``, ``pixel_accuracy``, ``mean_accuracy`` (percent) and ``class_iou`` ({name: IoU or None for a class
    absent from both the ground truth and the predictions})."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    truth, predicted = confusion.sum(1), confusion.sum(0)
    union = truth + predicted - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)
    accuracy = torch.where(truth > 0, true_positive / truth.clamp(min=1), torch.nan)
    total = confusion.sum()
    return {
        "miou": 100 * float(iou.nanmean()) if (union > 0).any() else 0.0,
        "pixel_accuracy": 100 * float(true_positive.sum() / total) if total > 0 else 0.0,
        "mean_accuracy": 100 * float(accuracy.nanmean()) if (truth > 0).any() else 0.0,
        "class_iou": {name: (None if v.isnan() else 100 * float(v)) for name, v in zip(class_names, iou)},
    }
