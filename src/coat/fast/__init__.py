"""The speed seam: faster implementations of the reference model's math, chosen once per forward.

``CoaT.forward_tokens`` (the whole trunk: stages and parallel blocks) asks ``choose`` which
implementation runs the call; everything else in the model is the reference modules. Each fast path
is a ``FastPath``: kernels for the trunk's pieces (``kernels``), run in the order ``trunk`` states once,
the calls it serves and the ``CoaTConfig`` values it was written for.

- ``cpu_inference``: CPU, float32, no autograd, eval mode, no autocast, the released co-scale mode;
  eager, or inside ``torch.compile`` as one registered operator (``compiled``). Measured on 2-core AMD EPYC (AVX2)
  and Intel Xeon (AVX-512) VMs: eager at batch 1 and 16, compiled at batch 16.
- ``cpu_bf16``: CPU with AMX or AVX-512 BF16, a bf16 model (``model.to(torch.bfloat16)``) on bf16 images, no
  autograd, eval mode, no autocast, the released co-scale mode; oneDNN's fused bf16 linears on weights packed
  once; eager, or inside ``torch.compile`` as the same registered operator. Measured on a 2-core Intel Xeon with AMX
  and a 2-core AMD EPYC with AVX-512 BF16 at batch 1 and 16.
- ``cpu_bf16_autocast``: the same CPUs, a float32 model under CPU bf16 autocast, no autograd, eval mode, the
  released co-scale mode: ``cpu_bf16``'s kernels on a bf16 copy of the model. Measured on the Zen 4 EPYC.
- ``cpu_training``: CPU, float32, autograd on, no autocast, the released co-scale mode, eager, from 16x16
  stage-1 tokens. Measured on the same two: training step and peak memory at batch 16.
- ``cpu_training_small``: the same on smaller images, in float32 or under CPU bf16 autocast: the reference
  modules with the depthwise convolutions where oneDNN's backward is slow as tap matrices. Measured at 32x32,
  batch 128: float32 on the AVX2 EPYC VM, bf16 autocast on a Zen 4 EPYC with AVX-512 BF16.
- ``cuda_triton`` (opt-in: not measured yet): CUDA, eager; factorized attention's context from
  Triton kernels. Used only inside ``only("cuda_triton")`` until a GPU run of ``benchmarks/gpu.py``
  shows where it pays.
- ``onnx_export``: while ``torch.onnx.export`` traces the model, the graph written (the reference math
  in the forms ONNX Runtime runs fast), so the ops in the file are the ops that run. Measured with ONNX
  Runtime's CPU provider.

Everything else runs the reference modules, and ``choose(model, x).reason`` says why: tools that
record or inspect the ops (TorchScript, FX, ``torch.export``, compiled training, any
active ``TorchDispatchMode`` such as ``FlopCounterMode``, tensor subclasses), hooks on modules that
run in the trunk (hooks then see the modules run), pruned models, and calls no path serves.

``only()`` limits the seam to the reference (or to named fast paths, opt-in ones included), as
``torch.nn.attention.sdpa_kernel`` does for attention kernels::

    coat.fast.choose(model, images)        # Choice(name='cpu_inference', reason='...')
    with coat.fast.only():                 # the reference modules, whatever the device and mode
        logits = model(images)
    with coat.fast.only("cuda_triton"):    # the Triton context kernels on CUDA
        logits = model(images)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

# No public API tells whether a TorchDispatchMode is active (FlopCounterMode, fake tensors, ...).
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ..errors import UsageError
from . import compiled, cpu_bf16, cpu_inference, cpu_training, cuda_triton, onnx_export
from .path import FastPath, Tokens

Implementation = Callable[[nn.Module, torch.Tensor], Tokens]

FAST_PATHS: tuple[FastPath, ...] = (
    cpu_inference.PATH,
    cpu_bf16.PATH,
    cpu_bf16.AUTOCAST_PATH,
    cpu_training.PATH,
    cpu_training.SMALL_IMAGES_PATH,
    cuda_triton.PATH,
    onnx_export.PATH,
)
NAMES = tuple(path.name for path in FAST_PATHS)
_allowed: frozenset[str] = frozenset(path.name for path in FAST_PATHS if path.measured)


@dataclass(frozen=True)
class Choice:
    """The implementation that runs a call (``"reference"`` or a fast path's name) and why."""

    name: str
    reason: str
    run: Implementation = field(repr=False, compare=False)


def reference(model: nn.Module, x: torch.Tensor) -> Tokens:
    """The reference modules (``CoaT.reference_tokens``)."""
    return model.reference_tokens(x)


def choose(model: nn.Module, x: torch.Tensor) -> Choice:
    """Which implementation runs ``model.forward_tokens(x)`` in the current modes, and why."""
    if torch.onnx.is_in_onnx_export():
        return _choose_for_onnx_export(model, x)
    required = _reference_required(model, x)
    if required:
        return Choice("reference", required, reference)
    if torch.compiler.is_compiling():  # eager fast paths are opaque to the compiler: only as a registered operator
        return _choose_for_compile(model, x)
    reasons = []
    for path in FAST_PATHS:
        why_not = _why_not(path, model, x)
        if why_not is None:
            return Choice(path.name, "every condition of the path holds", path.tokens)
        reasons.append(f"{path.name} {why_not}")
    return Choice("reference", "no fast path serves this call: " + "; ".join(reasons), reference)


def _choose_for_compile(model: nn.Module, x: torch.Tensor) -> Choice:
    """While ``torch.compile`` traces: an eager CPU inference path as the operator ``compiled.OPERATOR`` where one
    serves the call (they beat Inductor's code for the blocks), else the reference modules for Inductor."""
    reasons = []
    for path in compiled.EAGER_PATHS.values():
        why_not = _why_not(path, model, x)
        if why_not is None:
            reason = f"compiled: runs as the operator {compiled.OPERATOR}"
            return Choice(path.name, reason, partial(compiled.eager_tokens, path))
        reasons.append(f"{path.name} {why_not}")
    return Choice("reference", f"torch.compile traces the reference modules ({'; '.join(reasons)})", reference)


def _choose_for_onnx_export(model: nn.Module, x: torch.Tensor) -> Choice:
    """While ``torch.onnx.export`` traces: the ``onnx_export`` path's graph (what ONNX Runtime will run), unless
    hooks expect the modules to run, the model is pruned, or the seam is limited without it."""
    path = onnx_export.PATH
    why_not = _hooks_or_pruned(model) or _why_not(path, model, x)
    if why_not:
        return Choice("reference", f"ONNX export: {path.name} {why_not}", reference)
    return Choice(path.name, "ONNX export: the graph written is the one ONNX Runtime runs", path.tokens)


def _why_not(path: FastPath, model: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``path`` cannot run ``model(x)`` now (not enabled, or an unmet condition), or None."""
    return path.why_not(model, x) if path.name in _allowed else "is not enabled (coat.fast.only)"


def _reference_required(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why the reference must run whatever the paths serve (tools that record or inspect the ops, hooks that
    expect the modules to run, pruned models), or None."""
    checks: tuple[tuple[str, Callable[[], bool]], ...] = (
        ("the fast paths are switched off (coat.fast.only())", lambda: not _allowed),
        ("TorchScript scripting or tracing", lambda: torch.jit.is_scripting() or torch.jit.is_tracing()),
        ("torch.export", torch.compiler.is_exporting),
        (
            "a tensor subclass or proxy (FX tracing, __torch_function__)",
            lambda: torch.overrides.has_torch_function((x,)),
        ),
        (
            "a TorchDispatchMode is active (FlopCounterMode, fake tensors, ...)",
            lambda: not torch.compiler.is_compiling() and is_in_torch_dispatch_mode(include_infra_modes=False),
        ),
    )
    return next((reason for reason, holds in checks if holds()), None) or _hooks_or_pruned(model)


def _hooks_or_pruned(model: nn.Module) -> str | None:
    """Why the model itself needs the reference modules (hooks expect them to run; pruned models), or None."""
    if _has_hooks(model):
        return "hooks are registered on modules of the trunk (they see the reference modules run)"
    if len(model.stages) < 4:
        return "the model is pruned (prune_intermediate_layers); the fast paths run four scales"
    return None


def _has_hooks(model: nn.Module) -> bool:
    """True if a forward or backward hook is registered globally or on a module that runs in the trunk (the
    containers ``nn.ModuleList`` / ``nn.ModuleDict`` never run, so their hooks never fire)."""
    module_api = nn.modules.module  # no public API reads the global hooks
    global_hooks = (
        module_api._global_forward_hooks,
        module_api._global_forward_pre_hooks,
        module_api._global_backward_hooks,
        module_api._global_backward_pre_hooks,
    )
    running = [
        m
        for m in (*model.stages.modules(), *model.parallel_blocks.modules())
        if not isinstance(m, (nn.ModuleList, nn.ModuleDict))
    ]
    return any(global_hooks) or any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in running
    )


@contextmanager
def only(*names: str) -> Iterator[None]:
    """Within the block, use only the named fast paths (none: the reference modules everywhere)."""
    global _allowed
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise UsageError(f"unknown fast paths {unknown}; known: {list(NAMES)}")
    previous, _allowed = _allowed, frozenset(names)
    try:
        yield
    finally:
        _allowed = previous
