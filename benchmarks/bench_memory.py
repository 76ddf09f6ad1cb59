"""Memory of a training step (forward + backward), ours vs timm's CoaT, with and without gradient checkpointing.

    python benchmarks/bench_memory.py [--models coat_lite_tiny coat_tiny | --all] [--batch-size 16] [--size 224]

Two exact, allocator-independent figures per model (parameters and optimizer state, equal in
both, are excluded):
- peak: the most tensor bytes live at once during forward + backward, above what was live before
  (activations, their gradients, workspaces and the parameter gradients), from the allocation
  events torch.profiler records;
- saved: bytes of the distinct storages autograd keeps from forward for backward.
"""

from __future__ import annotations

import torch

from coat.bench import (
    bench_arguments,
    check_same_outputs,
    machine_line,
    model_names,
    peak_bytes,
    saved_bytes,
    timm_pair,
)


def step_peak(model: torch.nn.Module, x: torch.Tensor) -> int:
    model.train()
    return peak_bytes(lambda: model(x).sum().backward())


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0]).parse_args()
    print(machine_line())
    print(
        "| model | timm peak MiB | ours peak MiB | ratio | ours + grad ckpt peak MiB | ratio "
        "| timm saved MiB | ours saved MiB | ratio |\n|---|---|---|---|---|---|---|---|---|"
    )
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    mib = 2**20
    for name in model_names(args):
        ours, peer = timm_pair(name, img_size=args.size)
        check_same_outputs(ours.eval(), peer.eval(), x)
        peer_peak, our_peak = step_peak(peer, x), step_peak(ours, x)
        peer_saved, our_saved = saved_bytes(peer, x), saved_bytes(ours, x)
        ours.set_grad_checkpointing(True)
        ckpt_peak = step_peak(ours, x)
        print(
            f"| {name} | {peer_peak / mib:.0f} | {our_peak / mib:.0f} | {our_peak / peer_peak:.2f}x | "
            f"{ckpt_peak / mib:.0f} | {ckpt_peak / peer_peak:.2f}x | {peer_saved / mib:.0f} | "
            f"{our_saved / mib:.0f} | {our_saved / peer_saved:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
