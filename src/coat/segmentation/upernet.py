"""UperNet (transformers' ``UperNetForSemanticSegmentation``) on a CoaT backbone. Needs the ``hf`` extra.

UperNet is the head backbones are compared with on ADE20K (Swin, ConvNeXt, Twins, MPViT: 160k iterations,
single-scale mIoU): a pyramid pooling module (bins 1, 2, 3, 6) on the coarsest scale and an FPN over all four
scales at 512 channels, plus an auxiliary FCN head (256 channels, one conv) on scale 3 whose loss weighs 0.4;
cross-entropy ignores label 255. transformers' defaults are those settings; ``UPERNET_SETTINGS`` states them.
Logits come at the input size.
"""

# ruff: noqa: E402  (the imports of transformers come after the check that names the extra to install)
from __future__ import annotations

import os
from typing import Any

from ..extras import require

require("hf")

from transformers import UperNetConfig, UperNetForSemanticSegmentation

from ..hf import CoaTBackboneConfig

ALL_SCALES = [0, 1, 2, 3]  # strides 4, 8, 16, 32
IGNORE_INDEX = 255
DEFAULT_DROP_PATH = 0.1  # no CoaT segmentation config was published; Swin-T's UperNet uses 0.3, its detectors 0.2
UPERNET_SETTINGS: dict[str, Any] = {
    "hidden_size": 512,
    "pool_scales": [1, 2, 3, 6],
    "use_auxiliary_head": True,
    "auxiliary_loss_weight": 0.4,
    "auxiliary_channels": 256,
    "auxiliary_num_convs": 1,
    "auxiliary_concat_input": False,
    "loss_ignore_index": IGNORE_INDEX,
}


def upernet_coat(
    variant: str,
    num_classes: int,
    backbone_weights: str | os.PathLike | None = None,
    drop_path_rate: float = DEFAULT_DROP_PATH,
    **config_overrides: Any,
) -> UperNetForSemanticSegmentation:
    """UperNet on all four scales of CoaT ``variant`` for ``num_classes`` classes (label 255 ignored).
    ``backbone_weights``: classification weights of the variant (a released weights name or a checkpoint file);
    ``config_overrides``: any ``UperNetConfig`` field (``hidden_size`` for smaller models, ...).

    ``model(pixel_values=[B, 3, H, W], labels=[B, H, W])`` -> ``logits`` ``[B, num_classes, H, W]`` and ``loss``
    (the main head's cross-entropy plus 0.4 x the auxiliary head's)."""
    backbone = CoaTBackboneConfig(variant=variant, out_indices=ALL_SCALES, drop_path_rate=drop_path_rate)
    config = UperNetConfig(backbone_config=backbone, num_labels=num_classes, **{**UPERNET_SETTINGS, **config_overrides})
    model = UperNetForSemanticSegmentation(config)
    if backbone_weights is not None:
        model.backbone.load_coat_weights(backbone_weights)
    return model
