"""What a variant costs: parameters and multiply-accumulates, counted on the meta device (no compute).

from coat.complexity import count_gmacs, variant_summaries
count_gmacs("coat_lite_small")            # 3.96 (at the variant's input size, 224)
count_gmacs("coat_lite_small", size=512)  # at another size
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .factory import variant_config
from .models.coat import CoaT
from .models.config import VARIANTS
from .weights import list_weights


def count_gmacs(name: str, size: int | None = None) -> float:
    """Multiply-accumulates (10^9; what papers call GFLOPs) of one forward pass of variant ``name`` on a
    ``size`` x ``size`` image (default: the variant's input size)."""
    size = size or VARIANTS[name].input_size
    with torch.device("meta"):
        model = CoaT(variant_config(name))
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2e9


def count_parameters(name: str) -> int:
    """Parameters of variant ``name`` (shared CPE / CRPE counted once)."""
    with torch.device("meta"):
        return sum(p.numel() for p in CoaT(variant_config(name)).parameters())


def variant_summaries(names: list[str]) -> list[dict[str, Any]]:
    """Per variant: measured parameters (M) and GMACs next to the paper's, input size, top-1 and weights."""
    rows = []
    for name in names:
        info = VARIANTS[name]
        rows.append(
            {
                "name": name,
                "params_m": round(count_parameters(name) / 1e6, 2),
                "gmacs": round(count_gmacs(name), 2),
                "input_size": info.input_size,
                "weights": list_weights(name),
                "paper_top1": info.top1,
                "paper_params_m": info.params_m,
                "paper_gmacs": info.gmacs,
                "kind": "CoaT-Lite" if info.config.is_lite else "CoaT",
            }
        )
    return rows
