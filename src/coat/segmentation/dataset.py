"""Segmentation samples: a checked split's (image, mask) pairs through joint transforms.

Training follows the ADE20K recipe of mmsegmentation's UperNet configs: rescale by a random ratio of a base scale
(``RandomRescale``: the image fits inside ``base_scale`` x r, r in 0.5-2.0, aspect kept), a random crop padded
with the ignore label where the image is smaller, horizontal flip, photometric distortion (torchvision's
``RandomPhotometricDistort``), ImageNet normalisation. Evaluation rescales to the base scale (r = 1) and scores
the prediction at the mask's own size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data.datasets import load_rgb
from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .data import IGNORE_INDEX, SegmentationSplit


class RandomRescale(v2.Transform):
    """Rescale so that the image fits inside ``base_scale`` (long side, short side) x r, r drawn uniformly from
    ``ratio_range``, keeping its aspect; masks follow with nearest-neighbour sampling."""

    def __init__(self, base_scale: tuple[int, int], ratio_range: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        self.base_scale, self.ratio_range = base_scale, ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, list[int]]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.ratio_range
        ratio = low + (high - low) * float(torch.rand(()))
        long_side, short_side = (side * ratio for side in self.base_scale)
        factor = min(long_side / max(height, width), short_side / min(height, width))
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, list[int]]) -> Any:
        return v2.functional.resize(inpt, params["size"])


def _finish() -> list[Callable]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(
    crop_size: int, base_scale: tuple[int, int], ratio_range: tuple[float, float], hflip: float, photometric: bool
) -> v2.Compose:
    steps: list[Callable] = [
        RandomRescale(base_scale, ratio_range),
        v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if photometric:
        steps.append(v2.RandomPhotometricDistort())
    return v2.Compose(steps + _finish())


def eval_transform(base_scale: tuple[int, int]) -> v2.Compose:
    """The image rescaled to the base scale; the mask stays at its own size (metrics are taken there)."""
    return v2.Compose([RandomRescale(base_scale), *_finish()])


class SegmentationSet(Dataset):
    """``(image [3, H, W] normalised, mask [H', W'] int64 class indices with 255 ignored)`` per pair of ``split``.
    With ``rescale_mask=False`` (evaluation) the mask keeps its original size and only the image is transformed."""

    def __init__(self, split: SegmentationSplit, transform: v2.Compose, rescale_mask: bool = True) -> None:
        self.split, self.transform, self.rescale_mask = split, transform, rescale_mask

    def __len__(self) -> int:
        return len(self.split.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.split.pairs[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(load_rgb(str(image_path))))
        with Image.open(mask_path) as mask_file:
            mask = tv_tensors.Mask(torch.from_numpy(self.split.to_classes(np.asarray(mask_file)).copy()))
        if self.rescale_mask:
            image, mask = self.transform(image, mask)
        else:
            image = self.transform(image)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()
