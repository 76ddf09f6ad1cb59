"""ONNX export with dynamic batch and image size, checked against ONNX Runtime after every export.

The graph is the seam's ``onnx_export`` path (``coat.fast.onnx_export``): the reference math in the forms ONNX
Runtime runs fast. Uses PyTorch's ``torch.export``-based ONNX exporter (``dynamo=True``, needs ``onnxscript``): the
model derives its token grids from the input shape with floor divisions, which ``torch.export``
keeps symbolic, so one file serves any batch and any H, W >= 32 (square or not, multiple of 32
or not). The older TorchScript tracer (``dynamo=False``) records those sizes as constants and
is not used. The file carries the class names and the preprocessing in its metadata (``coat.onnx_runtime``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import CoatError
from .extras import require
from .files import atomic_write, refuse_overwrite
from .inference import default_class_names
from .models.coat import CoaT
from .onnx_runtime import METADATA_KEYS, OnnxRuntimeClassifier

PARITY_SIZES = ((224, 224), (160, 288))
# Opset 20 has GELU as one op (``Gelu``), which ONNX Runtime fuses with the fc1 bias into ``BiasGelu``; at 18 the
# exporter writes erf's formula in five ops that ONNX Runtime 1.32 runs unfused (BENCHMARKS.md, "Deploying on CPUs").
DEFAULT_OPSET = 20
PARITY_TOLERANCE = 1e-4
# torch.export traces with H, W >= 64 (below that, scale 4's grid has a side of 1, which it would specialise);
# asking for less makes the exporter trace twice, the first time only to be told this range. The ONNX graph
# keeps no range: it serves H, W >= 32 all the same (checked at 33x47 in the tests).
ONNX_DYNAMIC_DIMS = {
    0: torch.export.Dim("batch"),
    2: torch.export.Dim("height", min=64),
    3: torch.export.Dim("width", min=64),
}


class ExportError(CoatError, ValueError):
    pass


def export_onnx(
    model: CoaT,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    check_sizes=PARITY_SIZES,
    overwrite: bool = False,
    class_names: list[str] | None = None,
) -> dict[str, float]:
    """Write ``model`` as ONNX (an existing ``path`` only with ``overwrite``), with ``class_names`` (default:
    ``default_class_names``) and the model's preprocessing in its metadata (``coat.onnx_runtime.read_onnx``), and
    return the max abs difference of ONNX Runtime to PyTorch at each check size (none: no check)."""
    refuse_overwrite([Path(path)], overwrite)
    require("export")
    import onnx

    model = model.eval()
    example = torch.randn(2, 3, 224, 224)
    names = class_names if class_names is not None else default_class_names(model.config.num_classes)
    metadata = {
        METADATA_KEYS["class_names"]: json.dumps(names),
        METADATA_KEYS["preprocessing"]: model.preprocessing.to_json(),
    }

    def write(tmp: Path) -> None:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": ONNX_DYNAMIC_DIMS},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(tmp))

    path = atomic_write(path, write)
    return onnx_parity(model, path, check_sizes) if check_sizes else {}


def onnx_parity(model: CoaT, path: str | Path, sizes=PARITY_SIZES, batch: int = 2) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the same random inputs; raise if they differ by 1e-4 or more."""
    return runtime_parity(model, OnnxRuntimeClassifier(path).run, "ONNX Runtime", sizes, batch)


def runtime_parity(
    model: CoaT, run: Callable[[np.ndarray], np.ndarray], runtime: str, sizes=PARITY_SIZES, batch: int = 2
) -> dict[str, float]:
    """The max abs difference of ``run`` (images ``[B, 3, H, W]`` -> logits, as arrays) to PyTorch's float32 logits
    at each size, on the same random inputs; raises ``ExportError`` at 1e-4 or more."""
    diffs = {}
    for h, w in sizes:
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            expected = model(x).numpy()
        diff = float(abs(run(x.numpy()) - expected).max())
        diffs[f"{h}x{w}"] = diff
        if not diff < PARITY_TOLERANCE:
            raise ExportError(f"{runtime} differs from PyTorch by {diff:.2e} at {h}x{w} (limit {PARITY_TOLERANCE})")
    return diffs


def export_program(model: CoaT) -> torch.export.ExportedProgram:
    """``torch.export`` with dynamic batch, height and width, for H, W >= 64.

    Below 64 pixels scale 4's grid has a side of 1, and ``torch.export`` specialises sizes of 1,
    so the program (unlike the ONNX file) does not cover 32-63.
    """
    dynamic = torch.export.Dim.DYNAMIC  # lets export derive the range (H, W >= 64) from its guards
    example = torch.randn(2, 3, 224, 224)
    return torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {0: dynamic, 2: dynamic, 3: dynamic}})
