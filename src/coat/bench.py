"""Timing helpers behind `coat bench` and benchmarks/: warm-up, interleaved repeats, medians.

The peer is timm's CoaT with the same weights (timm's state dict carries the authors' key names,
which our loader reads), so every comparison runs both models on the same inputs in one process.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .checkpoint import authors_to_coat, load_state_into
from .errors import UsageError
from .extras import require
from .factory import create_model, list_models
from .runtimes import CPU_RUNTIMES, classifier


@dataclass
class Timing:
    name: str
    seconds: list[float]
    batch_size: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.median


DEFAULT_MODELS = ["coat_lite_tiny", "coat_tiny"]


def bench_arguments(
    description: str, batch_size: int = 16, size: int = 224, repeats: int = 10
) -> argparse.ArgumentParser:
    """The options every script in benchmarks/ shares: which models, batch, input size, repeats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--all", action="store_true", help="every variant (overrides --models)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per model (median reported)")
    return parser


def model_names(args: argparse.Namespace) -> list[str]:
    return list_models() if args.all else args.models


def machine_line() -> str:
    """One line naming the CPU, threads and library versions, printed above every table."""
    require("peers")
    import timm

    return (
        f"machine: {_cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, timm {timm.__version__}"
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timm_pair(name: str, **timm_kwargs: object) -> tuple[nn.Module, nn.Module]:
    """(ours, timm's) CoaT ``name`` holding the same (timm-initialised) weights.

    timm's CoaT fixes its token grids at construction: pass ``img_size=(H, W)`` for other inputs.
    """
    require("peers")
    import timm

    peer = timm.create_model(name, **timm_kwargs)
    ours = create_model(name, num_classes=peer.num_classes)
    state, _ = authors_to_coat(peer.state_dict())
    load_state_into(ours, state, source=f"timm {name}")
    return ours, peer


def check_same_outputs(ours: nn.Module, peer: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> float:
    """Max abs difference of the two models' outputs on ``x`` (inference); raises above ``tol``."""
    with torch.inference_mode():
        diff = (ours(x).float() - peer(x).float()).abs().max().item()
    if diff > tol:
        raise RuntimeError(f"outputs differ by {diff:.2e} (> {tol:g}); not timing")
    return diff


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors allocated while ``fn`` runs, above what was live before it.

    Replays the allocation and free events torch.profiler records, so the figure is exact for
    tensor memory and independent of the allocator's caching (CPU tensors).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps between forward and backward (parameters excluded)."""
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(storages.values())


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """What waits for ``device``'s queued work before a timer reads the clock (nothing on CPUs)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def interleaved(
    fns: dict[str, Callable[[], object]],
    batch_size: int,
    warmup: int = 2,
    repeats: int = 10,
    sync: Callable[[], None] = lambda: None,
    settle: int = 0,
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, alternating between them so drift hits all alike.

    ``settle``: untimed calls of the same callable before each timed one, for callables on different runtimes: a
    runtime's worker threads keep spinning after its call returns (ONNX Runtime's by default), and the next call of
    another runtime shares the cores with them (PyTorch 2.2x and OpenVINO 1.5x slower right after ONNX Runtime on a
    2-core Zen 4 EPYC, as fast as alone from their second call; BENCHMARKS.md, "Deploying on CPUs", fifth step)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(name, s, batch_size) for name, s in seconds.items()}


def _inference_call(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without autograd."""
    with torch.inference_mode():
        return model(x)


def _runner(model: nn.Module, mode: str, dtype: str) -> nn.Module:
    """``model`` as ``mode`` and ``dtype`` run it: bf16 is a bf16 copy of the weights, as ``coat predict --dtype
    bf16`` runs it (on CPUs with AMX or AVX-512 BF16, our ``cpu_bf16`` path)."""
    if dtype == "bf16":
        model = copy.deepcopy(model).to(torch.bfloat16)
    return torch.compile(model) if mode == "compiled" else model


def benchmark_table(
    name: str,
    batch_size: int,
    size: int,
    modes: list[str],
    dtypes: list[str],
    device: torch.device,
    compare: str | None = None,
    warmup: int = 2,
    repeats: int = 10,
) -> list[dict]:
    """Inference rows for every (mode, dtype); with ``compare="timm"`` timm's CoaT runs interleaved."""
    if compare == "timm":
        ours, peer = timm_pair(name, img_size=size)
        models = {"coat": ours, "timm": peer}
    else:
        models = {"coat": create_model(name)}
    x = torch.randn(batch_size, 3, size, size, device=device)
    sync = device_sync(device)
    rows = []
    deployed_modes = [mode for mode in modes if mode in CPU_RUNTIMES]
    if deployed_modes and device.type != "cpu":
        raise UsageError(f"{deployed_modes[0]} runs on the CPU, not {device}; pass --device cpu")
    models = {impl: m.to(device).eval() for impl, m in models.items()}
    for mode in modes:
        for dtype in dtypes:
            if mode in CPU_RUNTIMES:  # ours only, as ``coat predict --runtime`` runs it
                deployed = classifier(models["coat"], mode, dtype)
                if mode == "openvino" and deployed.precision != dtype:  # OpenVINO's dtype is a hint
                    raise UsageError(f"this CPU has no {dtype} (AMX or AVX-512 BF16); OpenVINO would compute in f32")
                calls = {"coat": partial(deployed, x)}
            else:
                images = x.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
                calls = {impl: partial(_inference_call, _runner(m, mode, dtype), images) for impl, m in models.items()}
            if "timm" in calls:
                diff = (calls["coat"]().float() - calls["timm"]().float()).abs().max().item()
                limit = 1e-4 if dtype == "fp32" else 5e-2 * max(1.0, calls["timm"]().float().abs().max().item())
                if diff > limit:
                    raise RuntimeError(f"{name} {mode} {dtype}: outputs differ from timm's by {diff:.2e}")
            timings = interleaved(calls, batch_size, warmup, repeats, sync)
            for impl, t in timings.items():
                row = {
                    "impl": impl,
                    "mode": mode,
                    "dtype": dtype,
                    "images_per_second": t.images_per_second,
                    "latency_ms": 1000 * t.median,
                    "batch_size": batch_size,
                    "size": size,
                }
                if impl == "coat" and "timm" in timings:
                    row["speedup_vs_timm"] = timings["timm"].median / t.median
                rows.append(row)
    return rows
