"""RoI pooling over the FPN levels as mmdetection 2.x pools, for detectors converted from the authors' checkpoints.

torchvision's ``MultiScaleRoIAlign`` calls ``roi_align`` with ``aligned=False`` (no half-pixel shift) and a fixed
``sampling_ratio``; mmcv's RoIAlign, which the authors' Mask R-CNN and Cascade Mask R-CNN were trained with, shifts
by half a pixel (``aligned=True``) and samples adaptively (``sampling_ratio=0``: ceil(roi size / output size)
points per bin). The level of a box is mmdetection's: ``floor(log2(sqrt(w * h) / 56 + 1e-6))`` clamped to the
levels, i.e. boxes under 112 pixels a side on the stride-4 map, 112-224 on stride 8, 224-448 on 16, the rest on 32
(torchvision's FPN rule gives the same levels but for boxes within 1e-6 of a boundary).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

FINEST_SCALE = 56  # mmdetection's SingleRoIExtractor: boxes under 2 x 56 pixels a side pool from the finest level


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """``forward(features, boxes, image_shapes)`` -> ``[K, C, *output_size]`` for the K boxes of all images in
    order: torchvision's ``MultiScaleRoIAlign`` (its R-CNN heads accept no other type) pooling with
    ``aligned=True`` from mmdetection's levels."""

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int],
        sampling_ratio: int = 0,
        finest_scale: int = FINEST_SCALE,
    ) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        self.finest_scale = finest_scale

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[K]`` pyramid level (0 = finest) of each ``[K, 4]`` box (x1, y1, x2, y2)."""
        side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        level = torch.floor(torch.log2(side / self.finest_scale + 1e-6))
        return level.clamp(0, len(self.featmap_names) - 1).long()

    def forward(
        self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        maps = [features[name] for name in self.featmap_names]
        padded_height = max(height for height, _ in image_shapes)
        # each level's scale is a power of two: 1/4 for the stride-4 map, and so on
        scales = [2.0 ** round(math.log2(level_map.shape[-2] / padded_height)) for level_map in maps]
        image_index = torch.cat([b.new_full((len(b), 1), i) for i, b in enumerate(boxes)])
        rois = torch.cat([image_index, torch.cat(boxes)], dim=1)  # [K, 5]: image index, x1, y1, x2, y2
        levels = self.levels(rois[:, 1:])
        pooled = maps[0].new_zeros(len(rois), maps[0].shape[1], *self.output_size)
        for level, (level_map, scale) in enumerate(zip(maps, scales, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            level_pooled = roi_align(
                level_map, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True
            )  # [K_level, C, *output_size]
            pooled = pooled.index_put((index,), level_pooled.to(pooled.dtype))
        return pooled
