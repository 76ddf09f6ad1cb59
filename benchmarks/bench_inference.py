"""Eager fp32 inference: ours vs timm's CoaT, same weights, same inputs, one process, interleaved.

    python benchmarks/bench_inference.py [--models coat_lite_tiny coat_tiny] [--batch-size 16]

Checks that the outputs agree (max abs diff < 1e-4) before timing; prints a Markdown table of
images/s and the speed-up (timm's median time / ours).
"""

from __future__ import annotations

import argparse
import platform

import torch

from coat.bench import interleaved, timm_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["coat_lite_tiny", "coat_tiny"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| model | batch | ours img/s | timm img/s | speed-up |\n|---|---|---|---|---|")
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    for name in args.models:
        ours, peer = timm_pair(name, img_size=args.size)
        ours.eval(), peer.eval()
        with torch.inference_mode():
            diff = (ours(x) - peer(x)).abs().max().item()
            if diff > 1e-4:
                raise SystemExit(f"{name}: outputs differ from timm's by {diff:.2e}; not timing")
            t = interleaved({"ours": lambda: ours(x), "timm": lambda: peer(x)}, args.batch_size,
                            repeats=args.repeats)
        print(f"| {name} | {args.batch_size} | {t['ours'].images_per_second:.2f} | "
              f"{t['timm'].images_per_second:.2f} | {t['timm'].median / t['ours'].median:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
