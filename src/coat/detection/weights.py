"""Detector checkpoints: the whole torchvision model as safetensors, with what rebuilds it in the metadata.

Metadata: ``format`` = coat-detector, ``detector`` (maskrcnn | fasterrcnn), ``variant``,
``class_names`` and ``category_ids`` (JSON lists; label i + 1 is ``category_ids[i]``),
``min_sizes``/``max_size`` (the resize the model was trained with; the last min size is tested).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..checkpoint import DETECTOR_FORMAT_NAME, CheckpointError, load_state_into, read_safetensors
from ..files import atomic_write
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

    def build(self, backbone_weights: str | None = None, **kwargs: object) -> nn.Module:
        """The detector (``num_classes`` counts the background), randomly initialised or on backbone weights."""
        return DETECTORS[self.detector](
            self.variant,
            num_classes=len(self.class_names) + 1,
            backbone_weights=backbone_weights,
            min_size=self.min_sizes,
            max_size=self.max_size,
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
        }


def save_detector(
    model: nn.Module, spec: DetectorSpec, path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``model``'s weights and ``spec`` atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {**spec.metadata(), **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_detector(path: str | os.PathLike) -> tuple[nn.Module, DetectorSpec]:
    """The detector saved at ``path`` (by ``coat detect train``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the best.safetensors of a `coat detect train` run"
        )
    state, meta = read_safetensors(path)
    if meta.get("format") != DETECTOR_FORMAT_NAME:
        raise CheckpointError(
            f"{path} is not a detector checkpoint (format {meta.get('format', 'unknown')}); pass "
            "the best.safetensors of a `coat detect train` run"
        )
    spec = DetectorSpec(
        meta["detector"],
        meta["variant"],
        json.loads(meta["class_names"]),
        json.loads(meta["category_ids"]),
        tuple(json.loads(meta["min_sizes"])),
        int(meta["max_size"]),
    )
    model = spec.build()
    load_state_into(model, state, source=str(path))
    return model.eval(), spec
