"""Segmentation samples: a checked split's (image, mask) pairs through joint transforms.

Training follows the ADE20K recipe of mmsegmentation's UperNet configs: rescale by a random ratio of a base scale
(``RandomRescale``: the image fits inside ``base_scale`` x r, r in 0.5-2.0, aspect kept), a random crop in which
no class covers 75% or more of the labelled pixels where one of 10 draws allows it (``CappedRandomCrop``), padded
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


class CappedRandomCrop(v2.Transform):
    """A random ``size`` x ``size`` crop, padded at the bottom and right (image 0, mask ``IGNORE_INDEX``) where the
    image is smaller. With ``cat_max_ratio`` < 1 (mmsegmentation's name), up to ``tries`` crops are drawn and the
    first in which at least two classes appear and the most frequent covers less than ``cat_max_ratio`` of the
    labelled pixels is kept (else the last drawn): fewer crops of sky or road alone."""

    def __init__(self, size: int, cat_max_ratio: float = 1.0, tries: int = 10) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.tries = size, cat_max_ratio, tries

    def _balanced(self, labels: torch.Tensor) -> bool:
        counts = torch.bincount(labels[labels != IGNORE_INDEX].flatten().long())
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) < self.cat_max_ratio * float(counts.sum())

    def make_params(self, flat_inputs: list[Any]) -> dict[str, int]:
        height, width = v2.query_size(flat_inputs)
        size = self.size
        masks = [inpt for inpt in flat_inputs if isinstance(inpt, tv_tensors.Mask)]
        draws = self.tries if masks and self.cat_max_ratio < 1 else 1
        for _ in range(draws):
            top = int(torch.randint(max(height - size, 0) + 1, ()))
            left = int(torch.randint(max(width - size, 0) + 1, ()))
            if draws == 1 or self._balanced(masks[0][..., top : top + size, left : left + size]):
                break
        return {"top": top, "left": left, "bottom": max(size - height, 0), "right": max(size - width, 0)}

    def transform(self, inpt: Any, params: dict[str, int]) -> Any:
        height, width = v2.query_size([inpt])
        crop = v2.functional.crop(inpt, params["top"], params["left"], min(self.size, height), min(self.size, width))
        fill = IGNORE_INDEX if isinstance(inpt, tv_tensors.Mask) else 0
        return v2.functional.pad(crop, [0, 0, params["right"], params["bottom"]], fill=fill)


def _finish() -> list[Callable]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(
    crop_size: int,
    base_scale: tuple[int, int],
    ratio_range: tuple[float, float],
    hflip: float,
    photometric: bool,
    cat_max_ratio: float = 1.0,
) -> v2.Compose:
    steps: list[Callable] = [RandomRescale(base_scale, ratio_range), CappedRandomCrop(crop_size, cat_max_ratio)]
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

    @classmethod
    def for_evaluation(cls, split: SegmentationSplit, base_scale: tuple[int, int]) -> SegmentationSet:
        """Images rescaled to ``base_scale``, masks at their own size (metrics are taken there)."""
        return cls(split, eval_transform(base_scale), rescale_mask=False)

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
