"""CoaT on OpenVINO: the IR ``coat export --format openvino`` writes, and classifiers compiled for the CPU.

The IR is converted from the ONNX graph ``coat.export`` writes (the seam's ``onnx_export`` path), so it keeps
dynamic batch, height and width. Its weights stay float32 (``openvino.save_model`` would halve them to float16 by
default); the precision the CPU computes in is chosen when compiling (``INFERENCE_PRECISION_HINT``): ``f32``, or
``bf16`` on CPUs with AMX or AVX-512 BF16 (elsewhere OpenVINO computes in f32 and ``precision`` says so).
Measured against our PyTorch paths and ONNX Runtime in ``benchmarks/bench_deploy.py`` (BENCHMARKS.md).

The IR carries what serving it needs beside the graph, in its runtime info under ``coat``: the class names and the
preprocessing (JSON), so ``coat predict --checkpoint DIR --runtime openvino`` runs it without the PyTorch weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checkpoint import CheckpointError
from .data.preprocessing import Preprocessing
from .export import PARITY_SIZES, export_onnx, runtime_parity
from .extras import require
from .files import atomic_directory, refuse_overwrite
from .models.coat import CoaT

if TYPE_CHECKING:
    import openvino

IR_FILE = "model.xml"  # its weights: model.bin beside it
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
METADATA = "coat"  # the IR's runtime-info section holding "class_names" and "preprocessing" (JSON each)


def is_ir(path: str | Path) -> bool:
    """Whether ``path`` is an OpenVINO IR: an existing ``.xml`` file or a folder holding ``model.xml`` (a path that
    does not exist is left to the checkpoint reader, which names it)."""
    path = Path(path)
    return (path if path.suffix == ".xml" else path / IR_FILE).is_file()


def read_ir(path: str | Path, dtype: str = "fp32") -> tuple[OpenVinoClassifier, list[str], Preprocessing]:
    """The IR ``coat export --format openvino`` wrote at ``path``: its classifier computing in ``dtype``, its class
    names and its preprocessing; a one-line ``CheckpointError`` for an IR without them."""
    classifier = OpenVinoClassifier.from_ir(path, dtype)
    info = classifier.model.get_rt_info()
    if METADATA not in info:
        raise CheckpointError(
            f"{path} holds no class names or preprocessing (not written by `coat export --format openvino`); "
            "export it again from its checkpoint"
        )
    section = info[METADATA]
    class_names = json.loads(section["class_names"].astype(str))
    preprocessing = Preprocessing.from_dict(json.loads(section["preprocessing"].astype(str)))
    return classifier, class_names, preprocessing


def convert(model: CoaT) -> openvino.Model:
    """``model`` (eval mode) as an OpenVINO model with dynamic batch, height and width."""
    require("openvino")
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model.eval(), onnx_path, check_sizes=())
        converted = ov.convert_model(onnx_path)
        # a model read from a file may keep reading its weights from it: copy them out before the file goes
        return converted.clone()


class OpenVinoClassifier:
    """An OpenVINO model compiled for the CPU: ``classifier(images [B, 3, H, W]) -> logits [B, classes]``.

    Compiled once per input shape: the CPU plugin runs static shapes faster than dynamic ones."""

    def __init__(self, model: openvino.Model, dtype: str = "fp32", threads: int | None = None) -> None:
        require("openvino")
        import openvino as ov

        self.model, self.core = model, ov.Core()
        self.config = {
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[dtype],
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled: dict[tuple[int, ...], openvino.CompiledModel] = {}

    @classmethod
    def from_ir(cls, path: str | Path, dtype: str = "fp32") -> OpenVinoClassifier:
        """The IR at ``path`` (a ``model.xml`` or the folder holding one)."""
        require("openvino")
        import openvino as ov

        path = Path(path)
        return cls(ov.Core().read_model(path / IR_FILE if path.is_dir() else path), dtype)

    @property
    def precision(self) -> str:
        """What OpenVINO computes in on this CPU: ``bf16`` where asked for and the CPU has it, else ``fp32``."""
        asked = self.config["INFERENCE_PRECISION_HINT"]
        has_bf16 = "BF16" in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return "bf16" if asked == "bf16" and has_bf16 else "fp32"

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits ``[B, classes]`` for float32 ``images`` ``[B, 3, H, W]``."""
        compiled = self._for_shape(images.shape)
        return compiled(images)[0].copy()  # the output buffer is the request's, reused by the next call

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(images.float().numpy()))

    def _for_shape(self, shape: tuple[int, ...]) -> openvino.CompiledModel:
        shape = tuple(shape)
        if shape not in self._compiled:
            shaped = self.model.clone()
            shaped.reshape(list(shape))
            self._compiled[shape] = self.core.compile_model(shaped, "CPU", self.config)
        return self._compiled[shape]


def export_openvino(
    model: CoaT,
    folder: str | Path,
    class_names: list[str],
    check_sizes=PARITY_SIZES,
    overwrite: bool = False,
) -> dict[str, float]:
    """Write ``model`` as an OpenVINO IR into ``folder`` (``model.xml``, ``model.bin``; an existing ``folder`` only
    with ``overwrite``), with ``class_names`` and the model's preprocessing in its runtime info (``read_ir``). The
    IR read back is checked against PyTorch (f32) at ``check_sizes`` before the folder takes its place; returns
    the max abs difference at each."""
    folder = Path(folder)
    refuse_overwrite([folder], overwrite)
    require("openvino")
    diffs: dict[str, float] = {}

    def write(tmp: Path) -> None:
        save_ir(convert(model), tmp, class_names, model.preprocessing)
        diffs.update(runtime_parity(model, OpenVinoClassifier.from_ir(tmp).run, "OpenVINO", check_sizes))

    atomic_directory(folder, write)
    return diffs


def save_ir(model: openvino.Model, folder: Path, class_names: list[str], preprocessing: Preprocessing) -> None:
    """``model`` as ``folder/model.xml`` + ``model.bin`` (weights as they are: float32 stays float32), with the class
    names and the preprocessing in its runtime info, where ``read_ir`` finds them."""
    import openvino as ov

    model.set_rt_info(json.dumps(class_names), [METADATA, "class_names"])
    model.set_rt_info(preprocessing.to_json(), [METADATA, "preprocessing"])
    ov.save_model(model, folder / IR_FILE, compress_to_fp16=False)
