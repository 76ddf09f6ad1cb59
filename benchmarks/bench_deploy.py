"""CPU deployment: one CoaT through each runtime people serve it with, same weights, batch 1 and 16, one process.

    python benchmarks/bench_deploy.py [--models coat_lite_tiny coat_tiny] [--repeats 10] [--batch-sizes 1 16]
        [--tuned-inductor]

Rows (each checked against our PyTorch fp32 logits before timing: max abs diff, and for bf16 the top-1 agreement):
- PyTorch eager fp32: ours (the seam's ``cpu_inference`` path) and timm's CoaT; ours in bf16 (``coat predict
  --dtype bf16``: a bf16 copy of the model, the seam's ``cpu_bf16`` path on CPUs with AMX or AVX-512 BF16) and
  its reference modules in bf16, on CPUs where oneDNN has bf16 kernels;
- PyTorch compiled (``torch.compile(model)``, Inductor's defaults, one graph per batch size), ours in fp32 and bf16:
  the seam runs the eager paths as its registered operator; with ``--tuned-inductor`` also the reference modules in
  bf16 compiled with Inductor's CPU options for serving (``TUNED_INDUCTOR``: frozen weights, the C++ wrapper,
  max-autotune with its C++ GEMM templates), which takes minutes per model and batch size;
- ONNX Runtime (CPU provider, default graph optimisation) on the file ``coat export`` writes, on the reference
  modules' graph at opset 18 (what ``coat export`` wrote before the seam's ``onnx_export`` path), and on timm's CoaT
  exported by torch.onnx's TorchScript exporter (timm's CoaT fixes its grid at 224, which that exporter needs), each
  run as ``coat predict --runtime onnxruntime`` runs it (``OnnxRuntimeClassifier``: a batch as calls on about two
  224x224 images);
- OpenVINO (when the ``openvino`` package is installed) on our ONNX file, compiled for the batch's shape as
  ``coat predict --runtime openvino`` does, f32 and bf16 (bf16 runs on AMX / AVX-512 BF16 CPUs only, the row is
  skipped elsewhere), and int8 when ``nncf`` is installed (NNCF's post-training quantization, the layers it leaves
  unquantized in bf16 where the CPU has it).
All runtimes use as many threads as PyTorch. Timings are interleaved per batch size, each timed call after an
untimed one of the same runtime (another runtime's spinning threads slow the first call: ``interleaved``'s
``settle``); medians are reported, with the ratio to our PyTorch eager fp32 in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from coat import fast
from coat.bench import interleaved, machine_line, timm_pair
from coat.export import export_onnx
from coat.onnx_runtime import OnnxRuntimeClassifier
from coat.openvino_runtime import OpenVinoClassifier
from coat.quantize import int8_model
from coat.runtimes import DTYPES, Bfloat16Classifier, classifier

if TYPE_CHECKING:
    import openvino

SIZE = 224
# PyTorch's bf16 rows only where oneDNN has bf16 kernels (AVX-512 BF16, AMX): on an AVX2 CPU bf16 ran at 0.09-0.11x
# float32 (BENCHMARKS.md), minutes of timing that say only "keep float32"
HAS_BF16_KERNELS = torch.ops.mkldnn._is_mkldnn_bf16_supported()
# Inductor's options for CPU serving: weights frozen into the graph (packed for oneDNN), a C++ wrapper instead of
# Python between kernels, GEMMs autotuned between its C++ templates and ATen
TUNED_INDUCTOR = {"freezing": True, "cpp_wrapper": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}


def random_int8_model(model: openvino.Model) -> openvino.Model:
    """``coat quantize``'s int8 quantization calibrated on 16 random images: for speed only (its accuracy needs the
    user's images)."""
    images = [np.random.default_rng(i).standard_normal((1, 3, SIZE, SIZE), dtype=np.float32) for i in range(16)]
    return int8_model(model, images, len(images))


def export_timm_onnx(peer: torch.nn.Module, path: Path) -> None:
    """timm's CoaT through torch.onnx's TorchScript exporter (its grid is fixed at construction: 224)."""
    torch.onnx.export(
        peer,
        (torch.randn(1, 3, SIZE, SIZE),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )


def torch_call(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def reference_call(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> np.ndarray:
    """``torch_call`` on the reference modules (what the seam's fast paths buy)."""
    with fast.only():
        return torch_call(model, x)


class Runtimes:
    """One variant (timm-initialised weights, shared by ours and timm's) in every runtime, exported once."""

    def __init__(self, name: str, folder: Path, tuned_inductor: bool = False) -> None:
        ours, peer = timm_pair(name, img_size=SIZE)
        self.ours, self.peer = ours.eval(), peer.eval()
        self.tuned_inductor = tuned_inductor
        self.ours_onnx, timm_onnx = folder / f"{name}.onnx", folder / f"{name}-timm.onnx"
        plain_onnx = folder / f"{name}-reference-modules.onnx"
        export_onnx(self.ours, self.ours_onnx)
        with fast.only():  # what the seam's onnx_export path and opset 20 buy: the reference modules at opset 18
            export_onnx(self.ours, plain_onnx, opset=18)
        export_timm_onnx(self.peer, timm_onnx)
        self.fixed = {"PyTorch eager fp32 (ours)": partial(torch_call, self.ours)}
        self.bf16 = classifier(self.ours, "pytorch", "bf16") if HAS_BF16_KERNELS else None
        if self.bf16 is not None:
            self.fixed["PyTorch eager bf16 (ours)"] = partial(torch_call, self.bf16)
            self.fixed["PyTorch eager bf16 (ours: reference modules)"] = partial(reference_call, self.bf16)
        self.fixed |= {
            "PyTorch eager fp32 (timm)": partial(torch_call, self.peer),
            "ONNX Runtime (ours)": OnnxRuntimeClassifier(self.ours_onnx).run,
            "ONNX Runtime (ours: reference modules, opset 18)": OnnxRuntimeClassifier(plain_onnx).run,
            "ONNX Runtime (timm)": OnnxRuntimeClassifier(timm_onnx).run,
        }
        self.openvino = {}
        if importlib.util.find_spec("openvino") is not None:
            import openvino as ov

            from_onnx = ov.Core().read_model(str(self.ours_onnx))
            self.openvino = {dtype: OpenVinoClassifier(from_onnx, dtype) for dtype in DTYPES}
            if importlib.util.find_spec("nncf") is not None:
                self.openvino["int8"] = OpenVinoClassifier(random_int8_model(from_onnx), "bf16")

    def calls(self, batch: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """Every runtime's call for inputs ``[batch, 3, 224, 224]``."""
        calls = dict(self.fixed) | self.compiled()
        for dtype, compiled in self.openvino.items():
            if dtype == "int8":
                calls[f"OpenVINO int8 + {compiled.precision} (ours, NNCF)"] = compiled.run
            elif compiled.precision == dtype:  # bf16 only on CPUs that have it
                calls[f"OpenVINO {dtype} (ours)"] = compiled.run
        return calls

    def compiled(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """The compiled rows, compiled anew for each batch size (``dynamic=False``: one graph per shape, as a
        server with a fixed batch runs). Dynamo's caches are emptied first: every variant and batch compiles the same
        ``CoaT.forward``, and past its recompile limit (8) a call would run eager under a compiled row's name."""
        torch.compiler.reset()
        calls = {"PyTorch compiled fp32 (ours)": partial(torch_call, torch.compile(self.ours, dynamic=False))}
        if self.bf16 is not None:
            bf16_model = self.bf16.model
            compiled = Bfloat16Classifier(torch.compile(bf16_model, dynamic=False))
            calls["PyTorch compiled bf16 (ours)"] = partial(torch_call, compiled)
            if self.tuned_inductor:
                tuned = torch.compile(bf16_model, dynamic=False, options=TUNED_INDUCTOR)
                label = "PyTorch compiled bf16 (reference modules, tuned Inductor)"
                calls[label] = partial(reference_call, Bfloat16Classifier(tuned))
        return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["coat_lite_tiny", "coat_tiny"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--tuned-inductor",
        action="store_true",
        help="add the reference modules compiled with "
        "TUNED_INDUCTOR in bf16 (minutes of compiling per model and batch size)",
    )
    args = parser.parse_args()
    print(machine_line())
    if not HAS_BF16_KERNELS:
        print("no PyTorch bf16 rows: oneDNN has no bf16 kernels on this CPU (bf16 runs emulated, ~10x slower)")
    print("| model | batch | runtime | img/s | ms | vs ours eager | max abs diff | top-1 agrees |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            models = Runtimes(name, Path(tmp), args.tuned_inductor)
            for batch in args.batch_sizes:
                calls = models.calls(batch)
                x = np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)
                reference = calls["PyTorch eager fp32 (ours)"](x)
                checks = {label: call(x) for label, call in calls.items()}
                timings = interleaved(
                    {label: partial(call, x) for label, call in calls.items()},
                    batch,
                    repeats=args.repeats if batch > 1 else 3 * args.repeats,
                    settle=1,  # each runtime timed as if it ran alone (see interleaved)
                )
                base = timings["PyTorch eager fp32 (ours)"].median
                for label, timing in timings.items():
                    diff = float(np.abs(checks[label] - reference).max())
                    agree = float((checks[label].argmax(1) == reference.argmax(1)).mean())
                    print(
                        f"| {name} | {batch} | {label} | {timing.images_per_second:.1f} | {1000 * timing.median:.1f} "
                        f"| {base / timing.median:.2f}x | {diff:.1e} | {100 * agree:.0f}% |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
