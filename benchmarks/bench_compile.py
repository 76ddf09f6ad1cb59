"""torch.compile inference: ours vs timm's CoaT, both compiled the same way, interleaved.

    python benchmarks/bench_compile.py [--models coat_lite_tiny] [--batch-size 16] [--mode default]

Both models go through ``torch.compile(model, mode=...)`` (Inductor, CPU); compilation happens
during the warm-up, outside the timed rounds. Outputs are checked equal (1e-4) before timing.
"""

from __future__ import annotations

import time

import torch

from coat.bench import bench_arguments, check_same_outputs, interleaved, machine_line, model_names, timm_pair


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], repeats=10)
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.set_defaults(models=["coat_lite_tiny"])
    args = parser.parse_args()
    print(machine_line() + f", torch.compile mode={args.mode}")
    print("| model | batch | ours img/s | timm img/s | speed-up | compile s (ours / timm) |\n|---|---|---|---|---|---|")
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    for name in model_names(args):
        ours, peer = timm_pair(name, img_size=args.size)
        compiled = {impl: torch.compile(m.eval(), mode=args.mode) for impl, m in (("ours", ours), ("timm", peer))}
        compile_seconds = {}
        with torch.inference_mode():
            for impl, model in compiled.items():
                start = time.perf_counter()
                model(x)
                compile_seconds[impl] = time.perf_counter() - start
            check_same_outputs(compiled["ours"], compiled["timm"], x)
            t = interleaved(
                {impl: (lambda m=m: m(x)) for impl, m in compiled.items()}, args.batch_size, repeats=args.repeats
            )
        print(
            f"| {name} | {args.batch_size} | {t['ours'].images_per_second:.2f} | {t['timm'].images_per_second:.2f} | "
            f"{t['timm'].median / t['ours'].median:.2f}x | "
            f"{compile_seconds['ours']:.0f} / {compile_seconds['timm']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
