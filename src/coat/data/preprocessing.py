"""How images are prepared for a set of weights: it travels with the weights, not the architecture."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_MODES = ("center", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize to ``input_size / crop_pct``, center-crop ``input_size``, normalise.

    ``crop_mode="center"`` resizes the short side (aspect ratio kept); ``"squash"`` resizes both
    sides to the same length first (timm's mode for its 384-pixel CoaT-Lite Medium copy).
    """

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    crop_mode: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop_mode not in CROP_MODES:
            raise UsageError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        InterpolationMode(self.interpolation)  # raises ValueError on an unknown name
        if not 0 < self.crop_pct <= 1:
            raise UsageError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def resize_size(self) -> int:
        return int(self.input_size / self.crop_pct)

    def transforms(self) -> v2.Compose:
        """PIL image or uint8 tensor -> float tensor [3, input_size, input_size], normalised."""
        resize = self.resize_size if self.crop_mode == "center" else (self.resize_size, self.resize_size)
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(resize, interpolation=InterpolationMode(self.interpolation), antialias=True),
                v2.CenterCrop(self.input_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def replace(self, **changes: Any) -> Preprocessing:
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """From our own metadata or timm's ``pretrained_cfg`` (``input_size`` may be ``[C, H, W]``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        if isinstance(values.get("input_size"), (list, tuple)):
            values["input_size"] = int(values["input_size"][-1])
        for name in ("mean", "std"):
            if name in values:
                values[name] = tuple(float(v) for v in values[name])
        return cls(**values)
