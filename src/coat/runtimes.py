"""Where a classifier runs at inference (``coat predict --runtime --dtype``): PyTorch or OpenVINO, float32 or bf16.

bf16 in PyTorch runs a bf16 copy of the model (on CPUs with AMX or AVX-512 BF16 the seam's ``cpu_bf16`` path,
elsewhere the reference modules in bf16); OpenVINO compiles the model for the CPU with the precision as its hint,
from our checkpoint or from the IR ``coat export --format openvino`` wrote. What each pays, per CPU, is in BENCHMARKS.md
("Deploying on CPUs").
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch

from .errors import UsageError
from .inference import Predictor, load_for_inference
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


def load_predictor(
    checkpoint: str | os.PathLike | None, model_name: str | None = None, runtime: str = "pytorch", dtype: str = "fp32"
) -> Predictor:
    """A checkpoint (any format ``coat.load_model`` reads; None: a random ``model_name``) run by ``runtime`` in
    ``dtype``, or an OpenVINO IR (its folder or ``.xml``; ``runtime`` must be ``openvino``) with the class names
    and preprocessing stored in it."""
    from .openvino_runtime import is_ir, read_ir  # as in classifier(): the openvino module only when called

    if checkpoint is not None and is_ir(checkpoint):
        if runtime != "openvino":
            raise UsageError(f"{checkpoint} is an OpenVINO IR; run it with --runtime openvino")
        return Predictor(*read_ir(checkpoint, dtype))
    loaded = load_for_inference(None if checkpoint is None else str(checkpoint), model_name)
    return Predictor(classifier(loaded.model, runtime, dtype), loaded.class_names, loaded.model.preprocessing)


class _Bfloat16Classifier:
    """A bf16 model behind float32 inputs and outputs."""

    def __init__(self, model: CoaT) -> None:
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images.to(torch.bfloat16)).float()
