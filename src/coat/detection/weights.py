"""Detector checkpoints: the whole torchvision model as safetensors, with what rebuilds it in the metadata.

Metadata: ``format`` = coat-detector, ``detector`` (a key of ``DETECTORS``), ``variant``,
``class_names`` and ``category_ids`` (JSON lists; label i + 1 is ``category_ids[i]``),
``min_sizes``/``max_size`` (the resize the model was trained with; the last min size is tested),
``options`` (a JSON object of the builder's architecture settings, e.g. Deformable DETR's query count; absent in
files written before it: none).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import (
    DETECTOR_FORMAT_NAME,
    CheckpointError,
    is_safetensors,
    load_state_into,
    read_task_checkpoint,
    save_model_state,
)
from .builders import DETECTORS


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector before its weights are loaded."""

    detector: str
    variant: str
    class_names: list[str]
    category_ids: list[int]
    min_sizes: tuple[int, ...]
    max_size: int
    options: dict[str, Any] = field(default_factory=dict)  # architecture settings for the builder

    def build(self, backbone_weights: str | None = None, **kwargs: object) -> nn.Module:
        """The detector (``num_classes`` counts the background), randomly initialised or on backbone weights;
        ``kwargs``: training-only builder options (drop-path, frozen stages, ...)."""
        return DETECTORS[self.detector].build(
            self.variant,
            num_classes=len(self.class_names) + 1,
            backbone_weights=backbone_weights,
            min_size=self.min_sizes,
            max_size=self.max_size,
            **self.options,
            **kwargs,
        )

    def metadata(self) -> dict[str, str]:
        return {
            "format": DETECTOR_FORMAT_NAME,
            "detector": self.detector,
            "variant": self.variant,
            "class_names": json.dumps(self.class_names),
            "category_ids": json.dumps(self.category_ids),
            "min_sizes": json.dumps(list(self.min_sizes)),
            "max_size": str(self.max_size),
            "options": json.dumps(self.options),
        }


def save_detector(
    model: nn.Module, spec: DetectorSpec, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model``'s weights and ``spec`` atomically."""
    return save_model_state(model, path, {**spec.metadata(), **(metadata or {})})


def load_detector(path: str | os.PathLike) -> tuple[nn.Module, DetectorSpec]:
    """The detector saved at ``path`` (by ``coat detect train``, ``coat convert``, or one of the authors'
    mmdetection ``.pth`` files, converted as it is read), in eval mode."""
    if Path(path).is_file() and not is_safetensors(Path(path)):
        from .mmdet_convert import convert_mmdet_detector  # it builds DetectorSpecs: imported here, not above

        return convert_mmdet_detector(path)
    state, meta = read_task_checkpoint(path, DETECTOR_FORMAT_NAME, "detector", "coat detect train")
    if meta.get("detector") not in DETECTORS:
        raise CheckpointError(
            f"{path} holds a {meta.get('detector', 'unnamed')} detector, which this version does not know "
            f"(it knows {', '.join(DETECTORS)}); upgrade coat-pytorch"
        )
    spec = DetectorSpec(
        meta["detector"],
        meta["variant"],
        json.loads(meta["class_names"]),
        json.loads(meta["category_ids"]),
        tuple(json.loads(meta["min_sizes"])),
        int(meta["max_size"]),
        json.loads(meta.get("options", "{}")),
    )
    model = spec.build()
    load_state_into(model, state, source=str(path))
    return model.eval(), spec
