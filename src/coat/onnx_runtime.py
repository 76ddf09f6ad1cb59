"""CoaT on ONNX Runtime: the file ``coat export --format onnx`` writes, run on the CPU.

The file carries what serving it needs beside the graph, in the ONNX model's metadata (``metadata_props``): the
class names and the preprocessing (JSON each, under ``METADATA_KEYS``), so ``coat predict IMAGES --checkpoint m.onnx
--runtime onnxruntime`` and ``coat eval --checkpoint m.onnx --runtime onnxruntime`` run it without the PyTorch
weights, and any ONNX Runtime server can read them (``session.get_modelmeta().custom_metadata_map``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError
from .data.preprocessing import Preprocessing
from .extras import require

ONNX_SUFFIX = ".onnx"
# the metadata_props keys holding the class names (a JSON list) and the preprocessing (Preprocessing.to_json)
METADATA_KEYS = {"class_names": "coat.class_names", "preprocessing": "coat.preprocessing"}
# Pixels per ONNX Runtime call (two 224x224 images): a batch of 16 run as calls on 2 images took 0.90x (coat_lite_tiny)
# and 0.85x (coat_tiny) the time of one call on all 16 (Zen 4 EPYC; 1 and 4 images per call were within 7% of 2), as a
# few images' activations stay in cache (BENCHMARKS.md, "Deploying on CPUs", fourth step)
CHUNK_PIXELS = 2 * 224 * 224


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` is an existing ``.onnx`` file (a path that does not exist is left to the checkpoint reader,
    which names it)."""
    path = Path(path)
    return path.suffix == ONNX_SUFFIX and path.is_file()


class OnnxRuntimeClassifier:
    """An ONNX file on ONNX Runtime's CPU provider: ``classifier(images [B, 3, H, W]) -> logits [B, classes]``, with
    as many threads as PyTorch uses (or ``threads``); large batches run as several calls of a few images."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        require("export")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @property
    def metadata(self) -> dict[str, str]:
        """The file's ``metadata_props``."""
        return self.session.get_modelmeta().custom_metadata_map

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits ``[B, classes]`` for float32 ``images`` ``[B, 3, H, W]``, in calls on chunks of ``CHUNK_PIXELS``."""
        per_call = max(1, CHUNK_PIXELS // (images.shape[2] * images.shape[3]))
        chunks = [images[i : i + per_call] for i in range(0, len(images), per_call)]
        logits = [self.session.run(None, {self.input_name: chunk})[0] for chunk in chunks]  # [b, classes] each
        return logits[0] if len(logits) == 1 else np.concatenate(logits)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(images.float().numpy()))


def read_onnx(path: str | Path) -> tuple[OnnxRuntimeClassifier, list[str], Preprocessing]:
    """The file ``coat export --format onnx`` wrote at ``path``: its classifier on ONNX Runtime, its class names and
    its preprocessing; a one-line ``CheckpointError`` for a file without them."""
    classifier = OnnxRuntimeClassifier(path)
    metadata = classifier.metadata
    if not all(key in metadata for key in METADATA_KEYS.values()):
        raise CheckpointError(
            f"{path} holds no class names or preprocessing (not written by `coat export --format onnx`); "
            "export it again from its checkpoint"
        )
    class_names = json.loads(metadata[METADATA_KEYS["class_names"]])
    preprocessing = Preprocessing.from_dict(json.loads(metadata[METADATA_KEYS["preprocessing"]]))
    return classifier, class_names, preprocessing
