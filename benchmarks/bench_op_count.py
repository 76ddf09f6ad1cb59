"""Operators per bf16 training step (forward + backward): ours against timm's CoaT, same weights.

    python benchmarks/bench_op_count.py [--models coat_lite_tiny coat_tiny | --all] [--size 224]

Counts the ATen operators dispatched (views apart), the CPU-side proxy for GPU kernel launches: under
bf16 autocast the seam runs the reference modules, as on a GPU. Batch 2 (the count does not depend on it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from coat.bench import bench_arguments, machine_line, model_names, timm_pair


class OperatorCount(TorchDispatchMode):
    """Counts the operators that run inside it: views, and the rest (each of which launches a kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.views = self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:
            self.views += 1
        else:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def training_step_count(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> OperatorCount:
    model.train()
    with OperatorCount() as count, torch.autocast("cpu", dtype=torch.bfloat16):
        F.cross_entropy(model(x), y).backward()
    return count


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0]).parse_args()
    print(machine_line())
    print("| model | size | ours operators (views) | timm operators (views) | ours / timm |\n|---|---|---|---|---|")
    x, y = torch.randn(2, 3, args.size, args.size), torch.randint(0, 1000, (2,))
    for name in model_names(args):
        ours, peer = timm_pair(name, img_size=args.size)
        a, b = training_step_count(ours, x, y), training_step_count(peer, x, y)
        print(
            f"| {name} | {args.size} | {a.kernels} ({a.views}) | {b.kernels} ({b.views}) | "
            f"{a.kernels / b.kernels:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
