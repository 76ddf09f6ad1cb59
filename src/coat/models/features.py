"""timm's ``features_only`` model: a CoaT that returns the feature maps of some scales, and their description."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .coat import CoaT


class FeatureInfo(list):
    """The maps' descriptions (``{"num_chs", "reduction", "module", "index"}``) with timm's accessors."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]

    def get_dicts(self) -> list[dict]:
        return list(self)


class CoaTFeatures(nn.Module):
    """``forward(x)`` -> the NCHW maps of scales ``out_indices`` (0-3: strides 4-32), nothing else computed
    beyond what they need (the model is pruned: ``CoaT.prune_intermediate_layers``)."""

    def __init__(self, model: CoaT, out_indices: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(list(out_indices), prune_norm=True)
        self.model = model
        self.feature_info = FeatureInfo({**model.feature_info[i], "index": i} for i in self.out_indices)

    @property
    def pretrained_cfg(self) -> dict:
        """The model's ``pretrained_cfg`` without its classifier, as timm gives its feature models."""
        return {k: v for k, v in self.model.pretrained_cfg.items() if k not in ("num_classes", "classifier")}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)
