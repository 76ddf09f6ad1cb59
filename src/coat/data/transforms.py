"""torchvision v2 transforms for training, from a recipe's values (evaluation: ``Preprocessing.transforms``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2


def train_transform(size: int, scale_min: float, hflip: float, randaugment_magnitude: int,
                    random_erasing: float, mean: Sequence[float], std: Sequence[float],
                    rotation: float = 0.0) -> v2.Compose:
    """RandomResizedCrop (bicubic) -> rotation -> flip -> RandAugment -> normalise -> RandomErasing (zeros off)."""
    steps: list = [v2.ToImage(), v2.RandomResizedCrop(size, scale=(scale_min, 1.0),
                                                      interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if rotation > 0:
        steps.append(v2.RandomRotation(rotation, interpolation=InterpolationMode.BILINEAR))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if randaugment_magnitude > 0:
        # bilinear: torchvision's affine ops on tensors have no bicubic mode
        steps.append(v2.RandAugment(num_ops=2, magnitude=randaugment_magnitude,
                                    interpolation=InterpolationMode.BILINEAR))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(random_erasing, value=0))
    return v2.Compose(steps)


def batch_mixing(mixup: float, cutmix: float, num_classes: int) -> v2.Transform | None:
    """MixUp / CutMix on a batch (one of them, chosen at random, when both are on)."""
    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
