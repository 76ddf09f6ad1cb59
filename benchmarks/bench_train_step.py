"""Training step (forward + backward + AdamW): ours vs timm's CoaT, same weights, one process, interleaved.

    python benchmarks/bench_train_step.py [--models coat_lite_tiny coat_tiny | --all] [--batch-size 16] [--size 224]
        [--bf16] [--fused]

``--bf16``: forward under CPU bf16 autocast; ``--fused``: fused AdamW (what ``coat train`` uses on CPU).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from coat.bench import bench_arguments, check_same_outputs, interleaved, machine_line, model_names, timm_pair


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = False, fused: bool = False):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--bf16", action="store_true", help="forward under CPU bf16 autocast")
    parser.add_argument("--fused", action="store_true", help="fused AdamW (coat train's CPU choice)")
    args = parser.parse_args()
    print(machine_line(), f"| bf16 autocast: {args.bf16} | fused AdamW: {args.fused}")
    print("| model | batch | size | ours ms/step | timm ms/step | speed-up |\n|---|---|---|---|---|---|")
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch_size,))
    for name in model_names(args):
        ours, peer = timm_pair(name, img_size=args.size)
        check_same_outputs(ours.eval(), peer.eval(), x)
        steps = {"ours": step_fn(ours, x, y, args.bf16, args.fused), "timm": step_fn(peer, x, y, args.bf16, args.fused)}
        t = interleaved(steps, args.batch_size, warmup=1, repeats=args.repeats)
        print(
            f"| {name} | {args.batch_size} | {args.size} | {1000 * t['ours'].median:.0f} | "
            f"{1000 * t['timm'].median:.0f} | {t['timm'].median / t['ours'].median:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
