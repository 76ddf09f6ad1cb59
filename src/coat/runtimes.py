"""Where a classifier runs at inference (``coat predict --runtime --dtype``): PyTorch or OpenVINO, float32 or bf16.

bf16 in PyTorch runs a bf16 copy of the model (on CPUs with AMX the seam's ``cpu_bf16`` path, elsewhere the
reference modules in bf16); OpenVINO compiles the model for the CPU with the precision as its hint. What each
pays, per CPU, is in BENCHMARKS.md ("Deploying on CPUs").
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from .models.coat import CoaT

RUNTIMES = ("pytorch", "openvino")
DTYPES = ("fp32", "bf16")

Classifier = Callable[[torch.Tensor], torch.Tensor]


def classifier(model: CoaT, runtime: str = "pytorch", dtype: str = "fp32") -> Classifier:
    """``forward(images [B, 3, H, W]) -> logits [B, classes]`` (float32 in and out) of ``model`` in eval mode,
    run by ``runtime`` computing in ``dtype``; ``model`` itself is left as it is."""
    model = model.eval()
    if runtime == "openvino":
        from .openvino_runtime import OpenVinoClassifier, convert

        return OpenVinoClassifier(convert(model), dtype)
    if dtype == "bf16":
        return _Bfloat16Classifier(copy.deepcopy(model).to(torch.bfloat16))
    return model


class _Bfloat16Classifier:
    """A bf16 model behind float32 inputs and outputs."""

    def __init__(self, model: CoaT) -> None:
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images.to(torch.bfloat16)).float()
