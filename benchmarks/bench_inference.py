"""Eager fp32 inference: ours vs timm's CoaT, same weights, same inputs, one process, interleaved.

    python benchmarks/bench_inference.py [--models coat_lite_tiny coat_tiny | --all] [--batch-size 16]
    python benchmarks/bench_inference.py --batch-size 1 --repeats 30     # batch-1 latency

Checks that the outputs agree (max abs diff < 1e-4) before timing; prints a Markdown table of
images/s, median latency and the speed-up (timm's median time / ours).
"""

from __future__ import annotations

from functools import partial

import torch

from coat.bench import bench_arguments, check_same_outputs, interleaved, machine_line, model_names, timm_pair


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0]).parse_args()
    print(machine_line())
    print("| model | batch | ours img/s | timm img/s | ours ms | timm ms | speed-up |\n|---|---|---|---|---|---|---|")
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    for name in model_names(args):
        ours, peer = timm_pair(name, img_size=args.size)
        ours.eval(), peer.eval()
        check_same_outputs(ours, peer, x)
        with torch.inference_mode():
            t = interleaved({"ours": partial(ours, x), "timm": partial(peer, x)}, args.batch_size, repeats=args.repeats)
        print(
            f"| {name} | {args.batch_size} | {t['ours'].images_per_second:.2f} | "
            f"{t['timm'].images_per_second:.2f} | {1000 * t['ours'].median:.1f} | {1000 * t['timm'].median:.1f} | "
            f"{t['timm'].median / t['ours'].median:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
