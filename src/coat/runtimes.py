"""Where a classifier runs at inference (``coat predict`` / ``coat eval --runtime --dtype``): PyTorch, OpenVINO or ONNX
Runtime, float32 or bf16.

bf16 in PyTorch runs a bf16 copy of the model (on CPUs with AMX or AVX-512 BF16 the seam's ``cpu_bf16`` path,
elsewhere the reference modules in bf16); OpenVINO compiles the model for the CPU with the precision as its hint,
from our checkpoint or from the IR ``coat export --format openvino`` wrote; ONNX Runtime runs float32, from our
checkpoint (exported on the fly) or from the file ``coat export --format onnx`` wrote. What each pays, per CPU, is in
BENCHMARKS.md ("Deploying on CPUs").
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import UsageError
from .export import export_onnx
from .inference import Predictor, load_for_inference
from .models.coat import CoaT
from .onnx_runtime import OnnxRuntimeClassifier, is_onnx, read_onnx

RUNTIMES = ("pytorch", "openvino", "onnxruntime")
CPU_RUNTIMES = RUNTIMES[1:]  # run on the CPU only
DTYPES = ("fp32", "bf16")

Classifier = Callable[[torch.Tensor], torch.Tensor]


def classifier(model: CoaT, runtime: str = "pytorch", dtype: str = "fp32") -> Classifier:
    """``forward(images [B, 3, H, W]) -> logits [B, classes]`` (float32 in and out) of ``model`` in eval mode,
    run by ``runtime`` computing in ``dtype``; ``model`` itself is left as it is."""
    _check_dtype(runtime, dtype)
    model = model.eval()
    if runtime == "openvino":
        from .openvino_runtime import OpenVinoClassifier, convert

        return OpenVinoClassifier(convert(model), dtype)
    if runtime == "onnxruntime":
        return _onnx_runtime_classifier(model)
    if dtype == "bf16":
        return Bfloat16Classifier(copy.deepcopy(model).to(torch.bfloat16))
    return model


def load_predictor(
    checkpoint: str | os.PathLike | None,
    model_name: str | None = None,
    runtime: str = "pytorch",
    dtype: str = "fp32",
    device: torch.device | str = "cpu",
) -> Predictor:
    """A checkpoint (any format ``coat.load_model`` reads; None: a random ``model_name``) run by ``runtime`` in
    ``dtype`` on ``device``, or an exported file with the class names and preprocessing stored in it: an OpenVINO
    IR (its folder or ``.xml``; ``runtime`` must be ``openvino``) or an ONNX file (``runtime`` ``onnxruntime``).
    OpenVINO and ONNX Runtime run on the CPU only."""
    from .openvino_runtime import is_ir, read_ir  # as in classifier(): the openvino module only when called

    device = torch.device(device)
    if runtime in CPU_RUNTIMES and device.type != "cpu":
        raise UsageError(f"{runtime} runs on the CPU, not {device}; pass --device cpu")
    _check_dtype(runtime, dtype)
    if checkpoint is not None and is_ir(checkpoint):
        if runtime != "openvino":
            raise UsageError(f"{checkpoint} is an OpenVINO IR; run it with --runtime openvino")
        return Predictor(*read_ir(checkpoint, dtype))
    if checkpoint is not None and is_onnx(checkpoint):
        if runtime != "onnxruntime":
            raise UsageError(f"{checkpoint} is an ONNX file; run it with --runtime onnxruntime")
        return Predictor(*read_onnx(checkpoint))
    loaded = load_for_inference(None if checkpoint is None else str(checkpoint), model_name)
    forward = classifier(loaded.model.to(device), runtime, dtype)
    return Predictor(forward, loaded.class_names, loaded.model.preprocessing)


def _check_dtype(runtime: str, dtype: str) -> None:
    if runtime == "onnxruntime" and dtype != "fp32":
        raise UsageError(f"ONNX Runtime runs the file in fp32, not {dtype}; for bf16 use --runtime pytorch or openvino")


def _onnx_runtime_classifier(model: CoaT) -> Classifier:
    """``model`` exported to ONNX (unchecked: ``coat export`` checks its files) and loaded into ONNX Runtime, which
    holds the graph in memory once the file is gone."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, path, check_sizes=())
        return OnnxRuntimeClassifier(path)


class Bfloat16Classifier:
    """A bf16 model (or a compiled one) behind float32 inputs and outputs."""

    def __init__(self, model: Classifier) -> None:
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images.to(torch.bfloat16)).float()
