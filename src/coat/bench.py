"""Timing helpers behind `coat bench` and benchmarks/: warm-up, interleaved repeats, medians.

The peer is timm's CoaT with the same weights (timm's state dict carries the authors' key names,
which our loader reads), so every comparison runs both models on the same inputs in one process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import load_state_into, official_to_coat
from .factory import create_model


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


def timm_pair(name: str, **timm_kwargs: object) -> tuple[nn.Module, nn.Module]:
    """(ours, timm's) CoaT ``name`` holding the same (timm-initialised) weights.

    timm's CoaT fixes its token grids at construction: pass ``img_size=(H, W)`` for other inputs.
    """
    try:
        import timm
    except ImportError:
        raise RuntimeError("comparing against timm needs timm: pip install 'coat[peers]'") from None
    peer = timm.create_model(name, **timm_kwargs)
    ours = create_model(name, num_classes=peer.num_classes)
    state, _ = official_to_coat(peer.state_dict())
    load_state_into(ours, state, source=f"timm {name}")
    return ours, peer


def interleaved(fns: dict[str, Callable[[], object]], batch_size: int, warmup: int = 2, repeats: int = 10,
                sync: Callable[[], None] = lambda: None) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, alternating between them so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(name, s, batch_size) for name, s in seconds.items()}
