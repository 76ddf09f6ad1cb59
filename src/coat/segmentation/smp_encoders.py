"""CoaT variants as segmentation-models-pytorch encoders. Needs the ``smp`` extra
(``pip install 'coat-pytorch[smp]'``).

Importing this module registers every variant under its own name in smp's encoder table, so any smp model takes
it::

    import segmentation_models_pytorch as smp
    import coat.segmentation.smp_encoders  # registers coat_lite_tiny ... coat_small

    model = smp.FPN("coat_lite_small", encoder_weights="in1k", in_channels=1, classes=3)
    model.encoder.load_coat_weights("coat_lite_small.authors")  # or any of our names or checkpoint files

``encoder_weights="in1k"`` is smp's own download (timm's copy on the Hugging Face hub, the default released
weights); ``load_coat_weights`` takes every source ``coat.create_model`` reads. ``in_channels`` other than 3
adapts the first conv by timm's rule, as ``create_model(..., in_chans=N)`` does.

The encoder returns smp's six features: the input, an empty stride-2 map (CoaT starts at stride 4, as smp's
own Mix Transformer encoders do) and CoaT's four maps at strides 4, 8, 16 and 32.
"""

# ruff: noqa: E402  (the import of segmentation_models_pytorch comes after the check that names the extra)
from __future__ import annotations

import os
from collections.abc import Mapping

from ..extras import require

require("smp")

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn

from ..checkpoint import state_checkpoint
from ..errors import UsageError
from ..factory import adapt_input_conv, create_model
from ..models.coat import FIRST_CONV, CoaT
from ..models.config import VARIANTS
from ..weights import get_weights

SMP_DEPTHS = range(2, 6)  # depth d returns CoaT's first d - 1 scales


class CoaTEncoder(nn.Module, EncoderMixin):
    """A CoaT variant with smp's encoder interface: ``forward(x)`` -> ``[x, empty stride-2 map, maps at strides
    4, 8, 16, 32]`` (the first ``depth + 1`` of them); ``out_channels`` their channel counts."""

    _is_torch_scriptable = False  # CoaT runs through its speed seam, which TorchScript cannot compile

    def __init__(self, variant: str, out_channels: list[int], depth: int = 5, output_stride: int = 32) -> None:
        nn.Module.__init__(self)
        if depth not in SMP_DEPTHS:
            raise UsageError(f"a CoaT encoder has depth 2 to 5 (strides 4 to 32), not {depth}; pass encoder_depth")
        if output_stride != 32:
            raise UsageError("CoaT encoders have no dilated mode; leave encoder_output_stride at 32")
        self.variant = variant
        self._depth, self._in_channels, self._output_stride = depth, 3, output_stride
        self._out_channels = list(out_channels)
        self.model = self._trunk(create_model(variant, num_classes=0))

    def _trunk(self, model: CoaT) -> CoaT:
        model.prune_intermediate_layers(list(range(self._depth - 1)), prune_norm=True)  # only what the maps need
        return model

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Take ``in_channels``-channel images: the first conv adapted from the current one (timm's rule) when
        ``pretrained``, freshly initialised otherwise."""
        if in_channels == self._in_channels:
            return
        state = self.model.state_dict()
        self.model = self._trunk(create_model(self.variant, num_classes=0, in_chans=in_channels))
        first_conv = f"{FIRST_CONV}.weight"
        if pretrained:
            state[first_conv] = adapt_input_conv(state[first_conv], in_channels, self.variant)
        else:
            state[first_conv] = self.model.state_dict()[first_conv]
        self.model.load_state_dict(state)
        self._in_channels = in_channels
        self._out_channels = [in_channels, *self._out_channels[1:]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch, _, height, width = x.shape
        maps = self.model.forward_intermediates(x, indices=list(range(self._depth - 1)), intermediates_only=True)
        empty = x.new_empty(batch, 0, height // 2, width // 2)  # no stride-2 stage
        return [x, empty, *maps]

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load CoaT weights in our, the authors' or timm's key names (smp's ``encoder_weights`` download gives
        timm's); the classifier is dropped and a 3-channel first conv adapted to ``in_channels``."""
        checkpoint = state_checkpoint(state_dict, where=f"weights for the {self.variant} encoder")
        trained = create_model(self.variant, pretrained=checkpoint, num_classes=0, in_chans=self._in_channels)
        return self.model.load_state_dict(self._trunk(trained).state_dict(), strict=strict, assign=assign)

    def load_coat_weights(self, source: str | os.PathLike) -> None:
        """Load classification weights: a released weights name (``coat_lite_small``, ``coat_lite_small.authors``)
        or any checkpoint the library reads."""
        trained = create_model(self.variant, pretrained=source, num_classes=0, in_chans=self._in_channels)
        self.model.load_state_dict(self._trunk(trained).state_dict())


def register() -> None:
    """Add every CoaT variant to smp's encoder table under its own name (done on import); smp's
    ``encoder_weights="in1k"`` downloads timm's copy of the default released weights."""
    for variant, spec in VARIANTS.items():
        smp.encoders.encoders[variant] = {
            "encoder": CoaTEncoder,
            "pretrained_settings": {"in1k": {"repo_id": get_weights(f"{variant}.in1k").hub_repo, "revision": "main"}},
            "params": {"variant": variant, "out_channels": [3, 0, *spec.config.embed_dims]},
        }


register()
