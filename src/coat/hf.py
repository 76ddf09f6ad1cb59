"""CoaT as a Hugging Face transformers backbone, for any transformers model that takes a ``backbone_config``
(Deformable DETR, DETR, UperNet, Mask2Former, ...). Needs the ``hf`` extra: ``pip install 'coat-pytorch[hf]'``.

Importing this module registers the model type ``"coat"`` with ``AutoConfig`` and ``AutoBackbone``, so import
it before building or loading such a model::

    import coat.hf
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    backbone = coat.hf.CoaTBackboneConfig(variant="coat_lite_small", out_indices=[1, 2, 3])
    detector = DeformableDetrForObjectDetection(DeformableDetrConfig(backbone_config=backbone, num_labels=3))
    detector.model.backbone.model.load_coat_weights("coat_lite_small")   # released ImageNet weights
    detector.save_pretrained("out")  # from_pretrained("out") rebuilds it (after `import coat.hf`)

The feature maps are ``CoaT.forward_intermediates``'s (NCHW, CLS token removed, strides 4/8/16/32 for
``stage1``..``stage4``); the model keeps CoaT's own initialisation (transformers' ``post_init`` applies the same
scheme, not its own). What the selected maps do not need (the classifier's norms, CoaT-Lite's stages after the
last selected one) is removed, so every parameter takes part in the loss (DDP needs no ``find_unused_parameters``).
"""

# ruff: noqa: E402  (the imports of transformers come after the check that names the extra to install)
from __future__ import annotations

import os

from .extras import require

require("hf")

import torch
from torch import nn
from transformers import AutoBackbone, AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from .factory import create_model, variant_config
from .models.blocks import Stage
from .models.coat import CoaT, init_weights

MODEL_TYPE = "coat"
STAGE_NAMES = ["stage1", "stage2", "stage3", "stage4"]  # the four scales, strides 4, 8, 16, 32


class CoaTBackboneConfig(BackboneConfigMixin, PreTrainedConfig):
    """A CoaT variant as a transformers backbone: ``variant`` (a name of ``coat.list_models()``), which scales it
    returns (``out_indices`` 0-3 or ``out_features`` ``stage1``..``stage4``; default: all four) and its
    drop-path rate."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        variant: str = "coat_lite_tiny",
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        drop_path_rate: float = 0.0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        variant_config(variant)  # an unknown name fails here, with the list of known ones
        self.variant = variant
        self.drop_path_rate = drop_path_rate
        self.num_channels = 3
        self.stage_names = list(STAGE_NAMES)
        if out_features is None and out_indices is None:
            out_indices = list(range(len(STAGE_NAMES)))
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)


class CoaTBackbone(BackboneMixin, PreTrainedModel):
    """The feature maps of a CoaT variant (``BackboneOutput.feature_maps``: one ``[B, C_s, H/r, W/r]`` per
    selected scale)."""

    config_class = CoaTBackboneConfig
    config: CoaTBackboneConfig
    base_model_prefix = "coat"
    main_input_name = "pixel_values"
    has_attentions = False

    def __init__(self, config: CoaTBackboneConfig) -> None:
        super().__init__(config)
        self.coat = CoaT(variant_config(config.variant, num_classes=0, drop_path_rate=config.drop_path_rate))
        self.num_features = list(self.coat.config.embed_dims)
        self.coat.prune_intermediate_layers(self.out_indices, prune_norm=True)  # every parameter reaches the maps
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """CoaT's own initialisation (what ``CoaT.__init__`` does), not transformers' default."""
        init_weights(module)
        if isinstance(module, Stage):
            nn.init.trunc_normal_(module.cls_token, std=0.02)

    def load_coat_weights(self, source: str | os.PathLike) -> None:
        """Load classification weights: a released weights name (``coat_lite_small``, ``coat_lite_small.authors``)
        or any checkpoint the library reads (the authors' ``.pth``, timm's files, ours); the head is dropped."""
        trained = create_model(self.config.variant, pretrained=source, num_classes=0)
        trained.prune_intermediate_layers(self.out_indices, prune_norm=True)
        self.coat.load_state_dict(trained.state_dict())

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        """``pixel_values`` ``[B, 3, H, W]`` (any H, W >= 32) -> the selected scales' feature maps."""
        maps = self.coat.forward_intermediates(pixel_values, indices=self.out_indices, intermediates_only=True)
        hidden_states = tuple(maps) if output_hidden_states else None
        if return_dict is False:
            return (tuple(maps),) + ((hidden_states,) if hidden_states is not None else ())
        return BackboneOutput(feature_maps=tuple(maps), hidden_states=hidden_states)


AutoConfig.register(MODEL_TYPE, CoaTBackboneConfig, exist_ok=True)
AutoBackbone.register(CoaTBackboneConfig, CoaTBackbone, exist_ok=True)

__all__ = ["CoaTBackbone", "CoaTBackboneConfig"]
