"""GPU benchmark: ours against timm's CoaT, same weights, same inputs, one CUDA device, one run.

    python benchmarks/gpu.py [--json OUT.json] [--models ...] [--budget-s 330]    # make bench-gpu
    python benchmarks/gpu.py --quick                                             # CPU, tiny sizes (the test suite)

Per model, after checking that both give the same logits under bf16 autocast: bf16 inference at
batch 256 and at batch 1 (latency), the bf16 training step (forward, backward, fused AdamW) at
batch 128 with its peak memory, each eager and under ``torch.compile`` (batch 1 with CUDA graphs:
``mode="reduce-overhead"``); the eager cases also for ours with the opt-in ``cuda_triton`` path (on
CPU it never applies: the reference runs); and the AdamW step alone, fused against foreach (which
``coat train`` should use on this device); once, the device's share of ``coat train
--pixel-augment-on-device`` for one training batch. Compiled cases stop once ``--budget-s`` has passed
(marked "skipped"), so the whole run fits a short device lease. Prints a markdown table; ``--json``
writes every figure with the card and versions.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coat import fast
from coat.bench import device_sync, interleaved, peak_bytes, timm_pair
from coat.data.transforms import EachImage, pixel_transform
from coat.train.config import TrainConfig

MODELS = ["coat_lite_tiny", "coat_lite_small", "coat_tiny", "coat_small"]


@dataclass(frozen=True)
class Setting:
    """Sizes and repeats of one run: the full GPU run, or ``--quick`` on CPU."""

    device: str
    size: int
    inference_batch: int
    train_batch: int
    repeats: int
    latency_repeats: int
    models: tuple[str, ...]
    compile_models: tuple[str, ...]  # models whose compiled cases run (within the time budget)
    compile_backend: str  # --quick: dynamo's capture without inductor's code generation (minutes on 2 cores)


FULL = Setting("cuda", 224, 256, 128, 10, 50, tuple(MODELS), tuple(MODELS), "inductor")
QUICK = Setting("cpu", 32, 2, 2, 1, 2, ("coat_lite_tiny", "coat_tiny"), ("coat_lite_tiny",), "eager")


@dataclass
class Row:
    """One model's figures; times in milliseconds, memory in MiB; None where not measured."""

    model: str
    max_logit_diff: float
    # case -> {"ours", "timm"} (eager cases also "triton": ours with the opt-in cuda_triton path)
    figures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    triton_error: str | None = None  # why the cuda_triton path could not run (then it is left out)


def bf16(device: str) -> torch.autocast:
    return torch.autocast(device, dtype=torch.bfloat16)


def inference_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode(), bf16(x.device.type):
            return model(x)

    return run


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with bf16(x.device.type):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def with_triton(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the seam allowed the opt-in ``cuda_triton`` path (and nothing else)."""

    def run() -> object:
        with fast.only("cuda_triton"):
            return fn()

    return run


def adamw_step_fn(model: nn.Module, fused: bool) -> Callable[[], None]:
    """The optimizer step alone, on gradients already in place."""
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=fused, foreach=None if fused else True)
    return optimizer.step


def peak_mib(fn: Callable[[], object], device: str) -> float:
    """Peak memory of one call above what was allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return peak_bytes(fn) / 2**20


def max_logit_diff(ours: nn.Module, peer: nn.Module, x: torch.Tensor) -> float:
    """Max abs difference of the logits under bf16 autocast; raises beyond bf16's tolerance."""
    a, b = inference_fn(ours, x)().float(), inference_fn(peer, x)().float()
    diff = (a - b).abs().max().item()
    if diff > 0.05 * b.abs().max().item() + 0.05:
        raise RuntimeError(f"outputs differ by {diff:.3g} under bf16 autocast; not timing")
    return diff


def measure(name: str, setting: Setting, compile_until: float) -> Row:
    device = setting.device
    sync = device_sync(device)
    ours, peer = timm_pair(name, img_size=setting.size)
    ours, peer = ours.to(device).eval(), peer.to(device).eval()
    x = torch.randn(setting.inference_batch, 3, setting.size, setting.size, device=device)
    row = Row(name, max_logit_diff(ours, peer, x[:2]))

    def timed(case: str, fns: dict[str, Callable[[], object]], batch: int, repeats: int) -> None:
        t = interleaved(fns, batch, warmup=2, repeats=repeats, sync=sync)
        row.figures[case] = {key: 1000 * t[key].median for key in fns}

    def eager(make: Callable[[nn.Module], Callable[[], object]]) -> dict[str, Callable[[], object]]:
        fns = {"ours": make(ours), "timm": make(peer)}
        if row.triton_error is None:
            triton = with_triton(make(ours))
            try:
                triton()
                sync()
            except Exception as err:  # a kernel that fails on this card must not cost the rest of a short lease
                row.triton_error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
            else:
                fns["triton"] = triton
        return fns

    def compiled(
        case: str,
        make: Callable[[nn.Module], Callable[[], object]],
        batch: int,
        repeats: int,
        cuda_graphs: bool = False,
    ) -> None:
        """Both models under ``torch.compile`` (with CUDA graphs: mode="reduce-overhead"), within the budget."""
        if name not in setting.compile_models or time.perf_counter() > compile_until:
            row.figures[case] = {"ours": None, "timm": None}
            return
        if setting.compile_backend != "inductor":
            options = {"backend": setting.compile_backend}
        else:
            options = {"mode": "reduce-overhead"} if cuda_graphs else {}
        timed(
            case,
            {"ours": make(torch.compile(ours, **options)), "timm": make(torch.compile(peer, **options))},
            batch,
            repeats,
        )

    one = x[:1]
    timed("inference", eager(lambda m: inference_fn(m, x)), setting.inference_batch, setting.repeats)
    timed("latency", eager(lambda m: inference_fn(m, one)), 1, setting.latency_repeats)
    compiled("inference compiled", lambda m: inference_fn(m, x), setting.inference_batch, setting.repeats)
    compiled("latency CUDA graphs", lambda m: inference_fn(m, one), 1, setting.latency_repeats, cuda_graphs=True)

    xt = torch.randn(setting.train_batch, 3, setting.size, setting.size, device=device)
    y = torch.randint(0, 1000, (setting.train_batch,), device=device)
    ours.train(), peer.train()
    steps = eager(lambda m: train_step_fn(m, xt, y))
    timed("training", steps, setting.train_batch, setting.repeats)
    row.figures["training peak MiB"] = {key: peak_mib(step, device) for key, step in steps.items()}
    compiled("training compiled", lambda m: train_step_fn(m, xt, y), setting.train_batch, setting.repeats)
    t = interleaved(
        {"fused": adamw_step_fn(ours, True), "foreach": adamw_step_fn(ours, False)},
        1,
        warmup=2,
        repeats=setting.repeats,
        sync=sync,
    )
    row.figures["AdamW step (ours)"] = {"fused": 1000 * t["fused"].median, "foreach": 1000 * t["foreach"].median}
    return row


def pixel_augment_ms(setting: Setting) -> float:
    """The device's work under ``coat train --pixel-augment-on-device`` for one training batch (the authors'
    RandAugment, normalisation and erasing, per image), in ms: to set against the training step it adds to."""
    recipe = TrainConfig()
    augment = EachImage(pixel_transform(recipe.randaugment_magnitude, recipe.random_erasing, recipe.mean, recipe.std))
    crops = torch.randint(
        0, 256, (setting.train_batch, 3, setting.size, setting.size), dtype=torch.uint8, device=setting.device
    )
    t = interleaved(
        {"augment": lambda: augment(crops)},
        setting.train_batch,
        warmup=2,
        repeats=setting.repeats,
        sync=device_sync(setting.device),
    )
    return 1000 * t["augment"].median


def environment(device: str) -> dict[str, Any]:
    import timm

    card = torch.cuda.get_device_name() if device == "cuda" else "CPU (--quick)"
    return {
        "device": card,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(rows: list[Row], setting: Setting, env: dict[str, Any]) -> str:
    def cell(figures: dict[str, float | None]) -> str:
        ours, timm, triton = figures["ours"], figures["timm"], figures.get("triton")
        if ours is None or timm is None:
            return "skipped"
        text = f"{ours:.1f} / {timm:.1f} ({timm / ours:.2f}x)"
        return text if triton is None else f"{text}; triton {timm / triton:.2f}x"

    cases = {
        "inference": f"bf16 inference b{setting.inference_batch} ms",
        "inference compiled": "compiled",
        "latency": "b1 latency ms",
        "latency CUDA graphs": "compiled, CUDA graphs",
        "training": f"bf16 train step b{setting.train_batch} ms",
        "training compiled": "compiled",
        "training peak MiB": "train peak MiB",
    }
    header = ["model", *cases.values(), "AdamW fused / foreach ms", "max logit diff"]
    lines = [
        f"{env['device']}, torch {env['torch']}, CUDA {env['cuda']}, timm {env['timm']}, {env['date']}; "
        f"{setting.size}x{setting.size}; each cell: ours / timm (timm / ours: above 1x we are faster or "
        "smaller); triton: the same ratio for ours with the opt-in cuda_triton path",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for row in rows:
        adamw = row.figures["AdamW step (ours)"]
        cells = [
            row.model,
            *(cell(row.figures[c]) for c in cases),
            f"{adamw['fused']:.2f} / {adamw['foreach']:.2f}",
            f"{row.max_logit_diff:.3g}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n{row.model}: the cuda_triton path failed ({row.triton_error})" for row in rows if row.triton_error]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU, tiny sizes: checks the script, measures nothing")
    parser.add_argument("--models", nargs="+", default=None, help=f"default (GPU): {' '.join(MODELS)}")
    parser.add_argument("--budget-s", type=float, default=330.0, help="start no compiled case after this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    setting = QUICK if args.quick else FULL
    if setting.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; --quick runs the script on CPU")
    models = args.models or list(setting.models)
    torch.manual_seed(0)
    compile_until = time.perf_counter() + args.budget_s
    rows = [measure(name, setting, compile_until) for name in models]
    augment_ms = pixel_augment_ms(setting)
    env = environment(setting.device)
    print(markdown(rows, setting, env), flush=True)
    print(
        f"\n--pixel-augment-on-device: the device's RandAugment + normalisation + erasing of one training batch of "
        f"{setting.train_batch}: {augment_ms:.1f} ms (to add to the bf16 train step above)",
        flush=True,
    )
    if args.json is not None:
        payload = {
            **env,
            "setting": setting.__dict__,
            "rows": [row.__dict__ for row in rows],
            "pixel_augment_ms_per_train_batch": augment_ms,
        }
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(args.json)
    return rows


if __name__ == "__main__":
    main()
