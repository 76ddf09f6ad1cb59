"""AdamW without weight decay on norms, biases and CLS tokens, with per-parameter lr multipliers; warm-up then
cosine (or step) schedules, per step."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr_scales: Mapping[str, float] | None = None) -> list[dict]:
    """Decayed weights apart from 1-D parameters (norms, biases) plus ``no_weight_decay()``, each split by
    learning-rate multiplier: ``lr_scales`` maps a regular expression searched in parameter names to the
    multiplier of the parameters it matches (the first match wins; others 1). Groups hold ``lr_scale``; the
    groups at scale 1 come first, so ``param_groups[0]["lr"]`` is the peak lr.

    Built from the bare model (before DDP wraps it), so the names match ``no_weight_decay()``.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    patterns = [(re.compile(pattern), scale) for pattern, scale in (lr_scales or {}).items()]
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((scale for pattern, scale in patterns if pattern.search(name)), 1.0)
        decayed = not (param.ndim <= 1 or name in skip)
        groups.setdefault((scale, decayed), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
        for (scale, decayed), params in groups.items()
        if params or scale == 1.0
    ]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, lr_scales: Mapping[str, float] | None = None
) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (each group at ``lr`` x its ``lr_scale``); on CPU PyTorch's fused kernel, one
    pass over all parameters (coat_lite_tiny's step on 2 cores: 4.5 ms fused, 17.3 ms foreach, 20.4 ms the
    default per-tensor loop). Other devices keep PyTorch's default until measured there."""
    groups = [{**group, "lr": lr * group["lr_scale"]} for group in param_groups(model, weight_decay, lr_scales)]
    on_cpu = all(p.device.type == "cpu" and p.is_floating_point() for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, fused=True if on_cpu else None)


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    peak_lr: float,
    warmup_lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_lr`` to ``peak_lr``, then cosine down to ``min_lr``, stepped per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            lr = warmup_lr + (peak_lr - warmup_lr) * step / warmup_steps
        else:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            lr = min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * progress))
        return lr / peak_lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_multistep(
    optimizer: torch.optim.Optimizer, warmup_steps: int, warmup_factor: float, milestones: list[int], gamma: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """The detection schedule: linear warm-up from ``warmup_factor`` x lr, then x ``gamma`` at each milestone step."""

    def factor(step: int) -> float:
        warm = warmup_factor + (1 - warmup_factor) * step / warmup_steps if step < warmup_steps else 1.0
        return warm * gamma ** sum(step >= m for m in milestones)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_poly(
    optimizer: torch.optim.Optimizer, warmup_steps: int, warmup_ratio: float, total_steps: int, power: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The segmentation schedule (mmsegmentation's): lr x (1 - step / total_steps) ** power, per step, with a linear
    warm-up over ``warmup_steps`` from ``warmup_ratio`` x that value."""

    def factor(step: int) -> float:
        decay = (1 - min(step, total_steps) / total_steps) ** power
        if step < warmup_steps:
            return decay * (1 - (1 - step / warmup_steps) * (1 - warmup_ratio))
        return decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
