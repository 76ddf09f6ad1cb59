"""torchvision v2 transforms for training, from a recipe's values (evaluation: ``Preprocessing.transforms``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2


def train_transform(
    size: int,
    scale_min: float,
    hflip: float,
    randaugment_magnitude: int,
    random_erasing: float,
    mean: Sequence[float],
    std: Sequence[float],
    rotation: float = 0.0,
) -> v2.Compose:
    """RandomResizedCrop (bicubic) -> rotation -> flip -> RandAugment -> normalise -> RandomErasing (zeros off)."""
    return v2.Compose(
        [
            crop_transform(size, scale_min, hflip, rotation),
            pixel_transform(randaugment_magnitude, random_erasing, mean, std),
        ]
    )


def crop_transform(size: int, scale_min: float, hflip: float, rotation: float = 0.0) -> v2.Compose:
    """The geometric half of ``train_transform``: PIL image or uint8 tensor -> uint8 ``[3, size, size]``."""
    steps: list = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(scale_min, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
    ]
    if rotation > 0:
        steps.append(v2.RandomRotation(rotation, interpolation=InterpolationMode.BILINEAR))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    return v2.Compose(steps)


def pixel_transform(
    randaugment_magnitude: int, random_erasing: float, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """The other half: uint8 ``[3, S, S]`` -> RandAugment -> normalised float -> RandomErasing."""
    steps: list = []
    if randaugment_magnitude > 0:
        # bilinear: torchvision's affine ops on tensors have no bicubic mode
        steps.append(
            v2.RandAugment(num_ops=2, magnitude=randaugment_magnitude, interpolation=InterpolationMode.BILINEAR)
        )
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(random_erasing, value=0))
    return v2.Compose(steps)


class EachImage(nn.Module):
    """``transform`` applied to every image of a batch ``[B, ...]`` in turn, on the batch's device: for the
    per-image random transforms of ``pixel_transform``, which draw one set of parameters per call."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])  # v2 takes a plain tensor for an image


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
