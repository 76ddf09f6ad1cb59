"""Training augmentation of a whole batch at once, for data sets held in memory as tensors.

torchvision's v2 transforms draw one set of random parameters per call, so per-sample randomness
on a batch means one call per image (about 1 ms each for a small digit on a CPU core). Here each
sample gets its own random crop and rotation, and the whole batch is resampled by one
``grid_sample``: the batch form of RandomResizedCrop + RandomRotation, on the device that trains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class RandomResizedCropRotate(nn.Module):
    """Per sample: a window of a random ``scale`` of the area and ``ratio`` of aspect, at a random place,
    rotated by up to ``degrees``, resampled bilinearly to ``size`` x ``size`` (outside: the nearest edge)."""

    def __init__(
        self, size: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3), degrees: float = 0.0
    ) -> None:
        super().__init__()
        self.size, self.scale, self.degrees = size, scale, degrees
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def sample_theta(self, batch: int, device: torch.device) -> torch.Tensor:
        """Random affine matrices ``[B, 2, 3]`` mapping output to input coordinates (``affine_grid``'s convention)."""
        rand = torch.rand(batch, 5, device=device)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * rand[:, 0]
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * rand[:, 1])
        width = torch.sqrt(area * aspect).clamp(max=1.0)  # window sides as fractions of the image's
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        centre_x = (2 * rand[:, 2] - 1) * (1 - width)  # normalised coordinates: the window stays inside
        centre_y = (2 * rand[:, 3] - 1) * (1 - height)
        angle = (2 * rand[:, 4] - 1) * math.radians(self.degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        return torch.stack(
            [
                torch.stack([width * cos, -height * sin, centre_x], dim=1),
                torch.stack([width * sin, height * cos, centre_y], dim=1),
            ],
            dim=1,
        )

    def warp(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, S, S]
        grid = F.affine_grid(theta, [images.shape[0], images.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.warp(images, self.sample_theta(images.shape[0], images.device))


class BatchTrainTransform(nn.Module):
    """uint8 images ``[B, C, H, W]`` (C = 1 or 3) -> augmented, normalised float ``[B, 3, size, size]``."""

    def __init__(
        self, size: int, scale_min: float, rotation: float, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.crop = RandomResizedCropRotate(size, (scale_min, 1.0), degrees=rotation)
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        warped = self.crop(images.float() / 255)  # grayscale stays one channel until here
        return (warped.expand(-1, 3, -1, -1) - self.mean.to(warped.device)) / self.std.to(warped.device)
