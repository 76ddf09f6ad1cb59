"""Activation memory of a training step: bytes autograd saves for backward, ours vs timm's CoaT.

    python benchmarks/bench_memory.py [--models coat_lite_tiny coat_tiny] [--batch-size 16] [--size 224]

Counted with ``torch.autograd.graph.saved_tensors_hooks`` (each saved tensor's storage once), so
the figure is exact and independent of the allocator; parameters and optimizer state are excluded.
"""

from __future__ import annotations

import argparse

import torch

from coat.bench import timm_pair


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd keeps for one forward pass of ``model`` (train mode)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["coat_lite_tiny", "coat_tiny"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    print("| model | timm MiB | ours MiB | ratio | ours + grad checkpointing MiB | ratio |\n|---|---|---|---|---|---|")
    for name in args.models:
        ours, peer = timm_pair(name, img_size=args.size)
        peer_bytes, our_bytes = saved_bytes(peer, x), saved_bytes(ours, x)
        ours.set_grad_checkpointing(True)
        ckpt_bytes = saved_bytes(ours, x)
        mib = 2 ** 20
        print(f"| {name} | {peer_bytes / mib:.0f} | {our_bytes / mib:.0f} | {our_bytes / peer_bytes:.2f}x | "
              f"{ckpt_bytes / mib:.0f} | {ckpt_bytes / peer_bytes:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
