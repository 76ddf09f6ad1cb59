"""The speed seam: faster implementations of the reference model's math, chosen once per forward.

``CoaT.forward_tokens`` (the whole trunk: stages and parallel blocks) asks ``implementation_for``
which implementation runs the call; everything else in the model is the reference modules.

- ``cpu_inference``: CPU, float32, no autograd, eval mode, no autocast, the released co-scale mode;
  eager, or inside ``torch.compile`` as one registered operator. Measured on 2-core AMD EPYC (AVX2)
  and Intel Xeon (AVX-512) VMs: eager at batch 1 and 16, compiled at batch 16.
- ``cpu_training``: CPU, float32, autograd on, no autocast, the released co-scale mode, eager.
  Measured on the same two: training step and peak memory at batch 16.
- ``cuda_triton`` (opt-in: not measured yet): CUDA, eager; factorized attention's context from
  Triton kernels. Used only inside ``only("cuda_triton")`` until a GPU run of ``benchmarks/gpu.py``
  shows where it pays.

Everything else runs the reference modules: other devices and dtypes, autocast, TorchScript, ONNX
export, FX, ``torch.export``, ``torch.compile`` of training, any active ``TorchDispatchMode``
(``FlopCounterMode``, fake tensors), tensor subclasses, and models with hooks on their stages or
parallel blocks (hooks then see the modules run). A fast path never writes into a tensor that the
caller or a hook can hold; the ops it runs are true ATen ops, which ``torch.profiler`` records.

``only()`` limits the seam to the reference (or to named fast paths, opt-in ones included), as
``torch.nn.attention.sdpa_kernel`` does for attention kernels::

    with coat.fast.only():                 # the reference modules, whatever the device and mode
        logits = model(images)
    with coat.fast.only("cuda_triton"):    # the Triton context kernels on CUDA
        logits = model(images)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from . import compiled, cpu_inference, cpu_training, cuda_triton

Tokens = tuple[list[torch.Tensor], list[tuple[int, int]]]
Implementation = Callable[[nn.Module, torch.Tensor], Tokens]


@dataclass(frozen=True)
class FastPath:
    """A faster implementation of ``forward_tokens``, where it applies, and whether it was measured to pay
    there (unmeasured paths run only where ``only()`` names them)."""

    name: str
    applies: Callable[[nn.Module, torch.Tensor], bool]
    run: Implementation
    measured: bool = True


FAST_PATHS = (
    FastPath("cpu_inference", cpu_inference.applies, cpu_inference.tokens),
    FastPath("cpu_training", cpu_training.applies, cpu_training.tokens),
    FastPath("cuda_triton", cuda_triton.applies, cuda_triton.tokens, measured=False),
)
NAMES = tuple(path.name for path in FAST_PATHS)
_allowed: frozenset[str] = frozenset(path.name for path in FAST_PATHS if path.measured)


def reference(model: nn.Module, x: torch.Tensor) -> Tokens:
    """The reference modules (``CoaT.reference_tokens``)."""
    return model.reference_tokens(x)


def implementation_for(model: nn.Module, x: torch.Tensor) -> Implementation:
    """The implementation that runs ``model.forward_tokens(x)``: a fast path where one applies, else the reference."""
    if _reference_required(model, x):
        return reference
    if torch.compiler.is_compiling():  # eager fast paths are opaque to the compiler: only as a registered operator
        inference = "cpu_inference" in _allowed and cpu_inference.applies(model, x)
        return compiled.cpu_inference_tokens if inference else reference
    for path in FAST_PATHS:
        if path.name in _allowed and path.applies(model, x):
            return path.run
    return reference


def _reference_required(model: nn.Module, x: torch.Tensor) -> bool:
    """Tools that record or inspect the ops, and hooks that expect the modules to run, get the reference."""
    return (
        not _allowed
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        or torch.compiler.is_exporting()
        or (not torch.compiler.is_compiling() and is_in_torch_dispatch_mode(include_infra_modes=False))
        or torch.overrides.has_torch_function((x,))
        or _has_hooks(model)
        or len(model.stages) < 4  # pruned (prune_intermediate_layers): the fast paths run all four scales
    )


def _has_hooks(model: nn.Module) -> bool:
    """True if a forward or backward hook is registered on any stage or parallel block (or globally)."""
    trunk = [*model.stages.modules(), *model.parallel_blocks.modules()]
    global_hooks = (nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks,
                    nn.modules.module._global_backward_hooks, nn.modules.module._global_backward_pre_hooks)
    return any(global_hooks) or any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in trunk
    )


@contextmanager
def only(*names: str) -> Iterator[None]:
    """Within the block, use only the named fast paths (none: the reference modules everywhere)."""
    global _allowed
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown fast paths {unknown}; known: {list(NAMES)}")
    previous, _allowed = _allowed, frozenset(names)
    try:
        yield
    finally:
        _allowed = previous
