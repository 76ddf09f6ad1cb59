"""RPN anchors as mmdetection 2.x makes them, for detectors converted from the authors' checkpoints."""

from __future__ import annotations

import math

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator


class MMDetAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator as mmdetection 2.x places anchors: base anchors not rounded, and each level's
    true stride (torchvision divides the padded image side by the grid side: 61 instead of 64 for an 800-pixel side
    at the stride-64 level). Centred on each stride-spaced location, ``ratio`` = height / width."""

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (torchvision's signature)
    ) -> torch.Tensor:
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        heights = (torch.sqrt(ratios)[:, None] * scales_t[None, :]).view(-1)
        widths = ((1 / torch.sqrt(ratios))[:, None] * scales_t[None, :]).view(-1)
        return torch.stack([-widths, -heights, widths, heights], dim=1) / 2  # [A, 4], ratio-major

    def grid_anchors(self, grid_sizes: list[list[int]], strides: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        powers_of_two = [[s.new_tensor(2 ** round(math.log2(float(s)))) for s in pair] for pair in strides]
        return super().grid_anchors(grid_sizes, powers_of_two)


def mmdet_anchor_generator() -> MMDetAnchorGenerator:
    """The authors' RPN anchors: scale 8 at strides 4-64 (sides 32-512), ratios 0.5 / 1 / 2."""
    return MMDetAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
