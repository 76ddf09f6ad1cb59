"""The CoaT body (its four feature maps) plus torchvision's FPN: a detection backbone by composition."""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..factory import create_model
from ..models.coat import CoaT


class CoaTBackbone(nn.Module):
    """``forward(x)`` -> ``OrderedDict`` of the four NCHW maps ``"0".."3"`` (strides 4, 8, 16, 32).

    Built on a copy of ``model`` (the given model is left as it is) whose classifier (head norms,
    CLS aggregation, linear head) is pruned, so that every parameter takes part in the loss (no
    ``find_unused_parameters`` under DDP). ``frozen_stages=k`` freezes the patch embeddings and blocks
    of the first k scales; ``frozen_norms`` freezes every LayerNorm.
    """

    def __init__(self, model: CoaT, frozen_stages: int = 0, frozen_norms: bool = False) -> None:
        super().__init__()
        model = copy.deepcopy(model)
        model.prune_intermediate_layers([0, 1, 2, 3], prune_norm=True)
        self.body = model
        self.channels = [info["num_chs"] for info in model.feature_info]
        self.strides = [info["reduction"] for info in model.feature_info]
        for stage in model.stages[:frozen_stages]:
            stage.requires_grad_(False)
        if frozen_stages >= 2:  # parallel blocks mix scales 2-4: frozen with scale 2
            model.parallel_blocks.requires_grad_(False)
        if frozen_norms:
            for module in model.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body.forward_intermediates(x, intermediates_only=True)
        return OrderedDict((str(i), feature) for i, feature in enumerate(maps))


class CoaTFPN(nn.Module):
    """CoaT body -> FPN (with the extra max-pooled level), ``out_channels`` for torchvision's heads."""

    def __init__(self, body: CoaTBackbone, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))  # "0".."3" and "pool", each [B, out_channels, H/r, W/r]


def coat_fpn_backbone(
    variant: str,
    weights: str | os.PathLike | None = None,
    out_channels: int = 256,
    frozen_stages: int = 0,
    frozen_norms: bool = False,
    **overrides: object,
) -> CoaTFPN:
    """A CoaT + FPN backbone; ``weights`` is any checkpoint the library reads (its classifier is dropped)."""
    model = create_model(variant, pretrained=weights, num_classes=0, **overrides)
    return CoaTFPN(CoaTBackbone(model, frozen_stages, frozen_norms), out_channels)
