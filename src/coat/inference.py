"""Loading a model for use (predict, explain, export), finding images, and batched top-k prediction.

Class names travel with the weights: our checkpoints carry them in their metadata; 1000-class
checkpoints without names get the ImageNet-1k names shipped with the package; otherwise the
class indices are the names.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from .checkpoint import read_checkpoint
from .data.datasets import DataError, load_rgb
from .data.preprocessing import Preprocessing
from .errors import UsageError
from .factory import create_model, infer_variant, load_model
from .models.coat import CoaT


@dataclass
class LoadedModel:
    model: CoaT
    class_names: list[str]
    source: str


@dataclass(frozen=True)
class Predictor:
    """What prediction needs of a model, whatever runs it: images ``[B, 3, H, W]`` -> logits ``[B, classes]``
    (float32 in and out), the class names and the preprocessing (``coat.runtimes.load_predictor``)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    class_names: list[str]
    preprocessing: Preprocessing


def imagenet_class_names() -> list[str]:
    text = resources.files("coat.data").joinpath("imagenet_classes.txt").read_text()
    return text.splitlines()


def load_for_inference(checkpoint: str | None, model_name: str | None = None) -> LoadedModel:
    """A model in eval mode from a checkpoint (any format) or, without one, a randomly initialised variant."""
    if checkpoint is None:
        if model_name is None:
            raise UsageError("pass --checkpoint PATH or --model NAME")
        model = create_model(model_name)
        return LoadedModel(model.eval(), default_class_names(model.config.num_classes), f"{model_name} (random init)")
    ckpt = read_checkpoint(checkpoint)
    if ckpt.config is not None and model_name is None:
        model = load_model(ckpt)
    else:
        model = create_model(model_name or ckpt.variant or infer_variant(ckpt.state_dict), pretrained=ckpt)
    names = json.loads(ckpt.metadata["class_names"]) if "class_names" in ckpt.metadata else None
    if names is not None and len(names) != model.config.num_classes:
        raise DataError(f"{checkpoint} lists {len(names)} class names for {model.config.num_classes} outputs")
    return LoadedModel(model.eval(), names or default_class_names(model.config.num_classes), str(checkpoint))


def default_class_names(num_classes: int) -> list[str]:
    return imagenet_class_names() if num_classes == 1000 else [str(i) for i in range(num_classes)]


def find_images(inputs: list[str]) -> list[Path]:
    """Files, folders (searched recursively for images) and glob patterns, in the order given."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            found += sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            raise DataError(f"{item} does not exist; pass image files, folders or glob patterns")
    if not found:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return found


class ImageFiles(Dataset):
    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(str(self.paths[index])))


@torch.no_grad()
def predict(
    predictor: Predictor,
    paths: list[Path],
    topk: int = 5,
    batch_size: int = 32,
    workers: int = 0,
    input_size: int | None = None,
    crop_pct: float | None = None,
    progress: bool = True,
) -> list[dict]:
    """``[{"path", "topk": [{"label", "index", "prob"}]}]`` for every image, in order, with the predictor's
    preprocessing (``input_size`` / ``crop_pct`` override it)."""
    transform = predictor.preprocessing.replace(input_size=input_size, crop_pct=crop_pct).transforms()
    dataset = ImageFiles(paths, transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    class_names = predictor.class_names
    k = min(topk, len(class_names))
    results = []
    for images in tqdm(loader, desc="predict", disable=not progress or len(paths) <= batch_size, leave=False):
        values, indices = predictor.forward(images).softmax(dim=-1).topk(k, dim=-1)  # [B, k] each
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            results.append(
                {
                    "path": str(paths[len(results)]),
                    "topk": [{"label": class_names[i], "index": i, "prob": p} for p, i in zip(row_values, row_indices)],
                }
            )
    return results
