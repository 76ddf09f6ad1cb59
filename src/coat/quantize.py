"""Post-training int8 quantization for CPUs: ``coat quantize`` as a function.

NNCF (OpenVINO's quantization library) quantizes the OpenVINO model of a checkpoint (the graph ``coat export
--format openvino`` writes) after measuring its activations' ranges on the user's own images, fed with the
checkpoint's preprocessing. The result is an IR folder that ``coat predict`` / ``coat eval --runtime openvino``
serve like an exported one. Before the folder is written, the float32 model (PyTorch) and the int8 IR are both
evaluated on labelled held-out images: the accuracy change is in ``quantization.json`` beside the IR.

Where int8 pays (BENCHMARKS.md, "Deploying on CPUs"): CPUs with AVX-512 VNNI but without AMX (a Zen 4 EPYC:
coat_lite_tiny 1.37x / 1.18x OpenVINO's bf16 at batch 1 / 16). Not on a Xeon with AMX, where bf16 runs on the
tiles (0.86-1.08x OpenVINO's bf16), nor on AVX2 CPUs without VNNI (below the float32 runtimes at batches).

    from coat.quantize import quantize_checkpoint
    report = quantize_checkpoint("runs/demo/best.safetensors", "calibration_images/", "demo_int8")
    report.record["float32_top1"], report.record["int8_top1"]
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .errors import UsageError
from .evaluation import labelled_loader
from .extras import require
from .files import atomic_directory, refuse_overwrite, write_json
from .inference import ImageFiles, find_images, load_for_inference
from .openvino_runtime import OpenVinoClassifier, convert, save_ir
from .train.classify import EvalResult, evaluate

if TYPE_CHECKING:
    import openvino

REPORT_FILE = "quantization.json"


@dataclass(frozen=True)
class QuantizationReport:
    """What ``quantize_checkpoint`` wrote and measured."""

    folder: Path  # the int8 IR (model.xml, model.bin) and quantization.json
    record: dict[str, Any]  # the contents of quantization.json
    float32: EvalResult  # the checkpoint in PyTorch, float32, on the held-out images
    int8: EvalResult  # the int8 IR in OpenVINO on the same images


def quantize_checkpoint(
    checkpoint: str | os.PathLike,
    calibration: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model_name: str | None = None,
    samples: int = 300,
    data: str | os.PathLike | None = None,
    split: str = "val",
    dtype: str = "fp32",
    batch_size: int = 32,
    workers: int = 0,
    overwrite: bool = False,
) -> QuantizationReport:
    """An int8 OpenVINO IR of ``checkpoint`` in the folder ``output`` (an existing one only with ``overwrite``),
    calibrated on up to ``samples`` images found in ``calibration`` (a folder searched recursively, a file or a glob;
    labels unused; a fixed random subset where there are more), with its accuracy against the float32 model on the
    labelled held-out ``data`` (as ``coat eval`` reads it; None: the embedded held-out digits). ``dtype``: what the
    layers NNCF leaves in float compute in while measuring (``bf16`` on CPUs that have it, as ``coat predict
    --runtime openvino --dtype bf16`` serves the IR)."""
    output = Path(output)
    refuse_overwrite([output], overwrite)
    if samples < 1:
        raise UsageError(f"--samples must be at least 1, not {samples}")
    require("quantize")
    loaded = load_for_inference(str(checkpoint), model_name)
    model, class_names = loaded.model, loaded.class_names
    preprocessing = model.preprocessing
    images = calibration_images(calibration, samples)
    # the held-out data read before the minutes of calibration, so a wrong folder fails at once
    held_out = labelled_loader(data, preprocessing, len(class_names), batch_size, workers, split=split)
    batches = DataLoader(ImageFiles(images, preprocessing.transforms()), batch_size=1, num_workers=workers)
    quantized = int8_model(convert(model), batches, len(images), lambda batch: batch.numpy())
    results: dict[str, EvalResult] = {}
    record: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "calibration": str(calibration),
        "calibration_images": len(images),
        "data": str(data) if data is not None else "embedded held-out split",
        "split": split,
        "int8_float_layers": dtype,
        "nncf": version("nncf"),
    }

    def write(tmp: Path) -> None:
        save_ir(quantized, tmp, class_names, preprocessing)
        cpu = torch.device("cpu")
        float32 = results["float32"] = evaluate(model, held_out, cpu, len(class_names), progress="eval float32")
        int8_ir = OpenVinoClassifier.from_ir(tmp, dtype)  # the IR as written
        int8 = results["int8"] = evaluate(int8_ir, held_out, cpu, len(class_names), progress="eval int8")
        record.update(
            images=int8.count,
            float32_top1=float32.top1,
            int8_top1=int8.top1,
            top1_change=int8.top1 - float32.top1,
            float32_loss=float32.loss,
            int8_loss=int8.loss,
        )
        write_json(tmp / REPORT_FILE, record)

    atomic_directory(output, write)
    return QuantizationReport(output, record, results["float32"], results["int8"])


def calibration_images(calibration: str | os.PathLike, samples: int) -> list[Path]:
    """Up to ``samples`` image paths under ``calibration``: all of them, or a fixed random subset (seed 0) kept in
    their order, so class folders are all represented."""
    paths = find_images([str(calibration)])
    if len(paths) <= samples:
        return paths
    chosen = set(random.Random(0).sample(range(len(paths)), samples))
    return [path for i, path in enumerate(paths) if i in chosen]


def int8_model(
    model: openvino.Model,
    calibration: Iterable[Any],
    samples: int,
    to_array: Callable[[Any], np.ndarray] | None = None,
) -> openvino.Model:
    """NNCF's post-training int8 quantization of ``model`` (transformer preset), its activation ranges measured on
    ``samples`` images of ``calibration`` (float32 ``[1, 3, H, W]``, or made so by ``to_array``; read more than once,
    so not a generator)."""
    require("quantize")
    import nncf

    dataset = nncf.Dataset(calibration, to_array)
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=samples)
