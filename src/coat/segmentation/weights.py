"""Segmenter checkpoints: the whole UperNet as safetensors, with what rebuilds and feeds it in the metadata.

Metadata: ``format`` = coat-segmenter, ``variant``, ``class_names`` (JSON list; class i is ``class_names[i]``),
``input_size`` (the training crop, also the sliding-window size), ``base_scale`` (JSON [long, short]: the size
images are rescaled to fit), ``options`` (JSON object of ``upernet_coat``'s head settings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import SEGMENTER_FORMAT_NAME, load_state_into, read_task_checkpoint, save_model_state


@dataclass
class SegmenterSpec:
    """Everything needed to rebuild a segmenter and prepare its inputs."""

    variant: str
    class_names: list[str]
    input_size: int
    base_scale: tuple[int, int]
    options: dict[str, Any] = field(default_factory=dict)  # upernet_coat's head settings

    def build(self, backbone_weights: str | None = None, **kwargs: Any) -> nn.Module:
        """The UperNet, randomly initialised or on backbone weights; ``kwargs``: training-only options."""
        from .upernet import upernet_coat  # needs the hf extra

        return upernet_coat(self.variant, len(self.class_names), backbone_weights, **self.options, **kwargs)

    def metadata(self) -> dict[str, str]:
        return {
            "format": SEGMENTER_FORMAT_NAME,
            "variant": self.variant,
            "class_names": json.dumps(self.class_names),
            "input_size": str(self.input_size),
            "base_scale": json.dumps(list(self.base_scale)),
            "options": json.dumps(self.options),
        }


def save_segmenter(
    model: nn.Module, spec: SegmenterSpec, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model``'s weights and ``spec`` atomically."""
    return save_model_state(model, path, {**spec.metadata(), **(metadata or {})})


def load_segmenter(path: str | os.PathLike) -> tuple[nn.Module, SegmenterSpec]:
    """The segmenter saved at ``path`` (by ``coat segment train``), in eval mode."""
    state, meta = read_task_checkpoint(path, SEGMENTER_FORMAT_NAME, "segmentation", "coat segment train")
    spec = SegmenterSpec(
        meta["variant"],
        json.loads(meta["class_names"]),
        int(meta["input_size"]),
        tuple(json.loads(meta["base_scale"])),
        json.loads(meta["options"]),
    )
    model = spec.build()
    load_state_into(model, state, source=str(path))
    return model.eval(), spec
