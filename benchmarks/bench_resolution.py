"""Cost against pixels: 896x896 over 224x224 at batch 1 (16x the pixels), eager fp32 inference.

    python benchmarks/bench_resolution.py [--models coat_lite_tiny coat_tiny | --all] [--large 896]

For each implementation: the time ratio (medians, all four runs interleaved) and the activation
memory ratio (peak tensor bytes of one forward pass in inference mode, from torch.profiler's
allocation events). Linear cost in pixels means both ratios are at most 16.
"""

from __future__ import annotations

import timm
import torch

from coat.bench import (
    bench_arguments,
    check_same_outputs,
    interleaved,
    machine_line,
    model_names,
    peak_bytes,
    timm_pair,
)


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], batch_size=1, repeats=10)
    parser.add_argument("--large", type=int, default=896)
    args = parser.parse_args()
    sizes = (args.size, args.large)
    print(machine_line())
    print(
        f"| model | impl | {sizes[0]} ms | {sizes[1]} ms | time ratio | {sizes[0]} act. MiB | {sizes[1]} act. MiB "
        "| memory ratio |\n|---|---|---|---|---|---|---|---|"
    )
    inputs = {size: torch.randn(args.batch_size, 3, size, size) for size in sizes}
    for name in model_names(args):
        ours, small_peer = timm_pair(name, img_size=sizes[0])
        large_peer = timm.create_model(name, img_size=sizes[1])  # timm fixes its grids at construction
        large_peer.load_state_dict(small_peer.state_dict())
        models = {
            "ours": {size: ours.eval() for size in sizes},
            "timm": {sizes[0]: small_peer.eval(), sizes[1]: large_peer.eval()},
        }
        for size in sizes:
            check_same_outputs(ours, models["timm"][size], inputs[size])
        calls = {
            (impl, size): (lambda m=m, x=inputs[size]: m(x))
            for impl, per_size in models.items()
            for size, m in per_size.items()
        }
        with torch.inference_mode():
            t = interleaved(calls, args.batch_size, repeats=args.repeats)
            peaks = {key: peak_bytes(call) / 2**20 for key, call in calls.items()}
        for impl in models:
            small, large = (impl, sizes[0]), (impl, sizes[1])
            print(
                f"| {name} | {impl} | {1000 * t[small].median:.1f} | {1000 * t[large].median:.1f} | "
                f"{t[large].median / t[small].median:.1f}x | {peaks[small]:.1f} | {peaks[large]:.1f} | "
                f"{peaks[large] / peaks[small]:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
