"""Evaluating a classifier checkpoint on labelled images: ``coat eval`` as a function.

from coat.evaluation import evaluate_checkpoint
report = evaluate_checkpoint("runs/demo/best.safetensors", data="path/to/folder")
report.result.top1, report.results_path   # 97.7, runs/demo/eval/results.json
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from .data.datasets import DataError, collate_skipping_none, eval_split
from .data.preprocessing import Preprocessing
from .files import refuse_overwrite, write_json
from .plots import plot_confusion
from .runtimes import load_predictor
from .train.classify import EvalResult, evaluate
from .train.distributed import pick_device


@dataclass(frozen=True)
class ClassificationReport:
    """What ``evaluate_checkpoint`` measured and wrote."""

    result: EvalResult
    record: dict[str, Any]  # the contents of results.json
    results_path: Path
    confusion_path: Path


def labelled_loader(
    data: str | os.PathLike | None,
    preprocessing: Preprocessing,
    num_classes: int,
    batch_size: int = 64,
    workers: int = 2,
    skip_corrupt: bool = False,
    split: str = "val",
    samples: int | None = None,
) -> DataLoader:
    """Batches ``(images, targets, skipped)`` of the labelled ``data`` to evaluate on (as ``evaluate_checkpoint``
    reads it) with ``preprocessing``; a ``DataError`` where its classes are not the model's ``num_classes``."""
    dataset = eval_split(
        None if data is None else str(data), preprocessing.transforms(), skip_corrupt, num_classes, split, samples
    )
    if hasattr(dataset, "classes") and len(dataset.classes) != num_classes:
        raise DataError(
            f"the data has {len(dataset.classes)} classes but the checkpoint predicts {num_classes}; "
            "evaluate on data with the same classes"
        )
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_none)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    model_name: str | None = None,
    input_size: int | None = None,
    crop_pct: float | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    skip_corrupt: bool = False,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    runtime: str = "pytorch",
    dtype: str = "fp32",
    split: str = "val",
    samples: int | None = None,
) -> ClassificationReport:
    """Top-1 / top-5, loss, per-class accuracy and the confusion matrix of ``checkpoint`` on ``data`` (a folder of
    ``<split>/<class>/*`` or ``<class>/*``, ``wds:DIR`` or ``hfds:NAME_OR_PATH``; None: the embedded held-out
    digits; ``split`` names the split, or a shard pattern of ``samples`` images), with the checkpoint's preprocessing
    (``input_size`` / ``crop_pct`` override it). Writes ``results.json`` and ``confusion.png`` to ``output``
    (default: ``eval/`` beside the checkpoint), never over earlier results unless ``overwrite``. ``runtime`` and
    ``dtype`` run the model as ``coat predict`` does (``coat.runtimes.load_predictor``: bf16, OpenVINO or ONNX
    Runtime on the CPU; ``checkpoint`` may be the IR or ONNX file ``coat export`` wrote)."""
    output = Path(output) if output is not None else Path(checkpoint).resolve().parent / "eval"
    results_path, confusion_path = output / "results.json", output / "confusion.png"
    refuse_overwrite([results_path, confusion_path], overwrite)
    target = pick_device(device)
    predictor = load_predictor(checkpoint, model_name, runtime, dtype, target)
    class_names, num_classes = predictor.class_names, len(predictor.class_names)
    preprocessing = predictor.preprocessing.replace(input_size=input_size, crop_pct=crop_pct)
    loader = labelled_loader(data, preprocessing, num_classes, batch_size, workers, skip_corrupt, split, samples)
    result = evaluate(predictor.forward, loader, target, num_classes, progress="eval")
    record = {
        "checkpoint": str(checkpoint),
        "data": str(data) if data is not None else "embedded held-out split",
        "split": split,
        "images": result.count,
        "skipped_images": result.skipped,
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "preprocessing": dataclasses.asdict(preprocessing),
        "runtime": runtime,
        "dtype": dtype,
        "per_class_accuracy": dict(zip(class_names, result.per_class_accuracy)),
        "confusion_matrix": result.confusion.tolist(),
    }
    write_json(results_path, record)
    plot_confusion(result.confusion, class_names, confusion_path)
    return ClassificationReport(result, record, results_path, confusion_path)
