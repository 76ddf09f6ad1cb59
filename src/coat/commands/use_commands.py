"""``coat predict``, ``coat export``, ``coat explain`` and ``coat bench``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import torch

from ..export import DEFAULT_OPSET
from ..extras import require
from ..models.config import VARIANTS
from ..runtimes import CPU_RUNTIMES, DTYPES, RUNTIMES
from .call import call_with_options

EXPORTED_FILES = (
    ", or what `coat export` wrote: the IR folder (with --runtime openvino) or the .onnx file (with --runtime "
    "onnxruntime)"
)


def _add_model_source(parser: argparse.ArgumentParser, required_checkpoint: bool = False, ir: bool = False) -> None:
    parser.add_argument(
        "--checkpoint",
        required=required_checkpoint,
        help="weights: released weights by name (coat_lite_small, coat_lite_small.authors; "
        "`coat download --list`), ours (.safetensors), the authors' .pth, timm's "
        ".pth/.safetensors, a Hugging Face folder or hf-hub:ORG/NAME" + (EXPORTED_FILES if ir else ""),
    )
    parser.add_argument("--model", choices=list(VARIANTS), help="variant (inferred from the weights if omitted)")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="pytorch",
        help="openvino: compiled by OpenVINO for the CPU; onnxruntime: ONNX Runtime on the CPU (fp32)",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="fp32", help="bf16 pays on CPUs with AMX or AVX-512 BF16 (BENCHMARKS.md)"
    )


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser("predict", help="top-k classes for images, folders or glob patterns")
    predict.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    _add_model_source(predict, required_checkpoint=True, ir=True)
    predict.add_argument("--topk", type=int, default=5)
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--workers", type=int, default=0)
    predict.add_argument("--input-size", type=int, help="default: the checkpoint's")
    predict.add_argument("--crop-pct", type=float, help="default: the checkpoint's")
    add_runtime_options(predict)
    fmt = predict.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    fmt.add_argument("--csv", action="store_true", help="print CSV: path, rank, label, index, prob")
    predict.set_defaults(func=run_predict)

    export = subparsers.add_parser(
        "export", help="export to ONNX or an OpenVINO IR (dynamic batch and size), checked against PyTorch"
    )
    _add_model_source(export)
    export.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    export.add_argument("--output", type=Path, required=True, help="the .onnx file, or the IR's folder (openvino)")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=run_export)

    quantize = subparsers.add_parser(
        "quantize",
        help="int8 OpenVINO IR calibrated on your images (NNCF), with its held-out accuracy against float32",
    )
    quantize.add_argument(
        "--checkpoint",
        required=True,
        help="our .safetensors (e.g. runs/demo/best.safetensors) or any weights `coat predict` reads",
    )
    quantize.add_argument("--model", dest="model_name", choices=list(VARIANTS), help="variant, if not in the weights")
    quantize.add_argument(
        "--calibration",
        required=True,
        help="images to calibrate on: a folder (searched recursively; labels unused, e.g. DATA/train), files or a glob",
    )
    quantize.add_argument("--samples", type=int, default=300, help="calibration images used (default: %(default)s)")
    quantize.add_argument(
        "--data",
        help="labelled held-out images to measure the accuracy change on, as `coat eval --data` reads them "
        "(default: the embedded held-out digits)",
    )
    quantize.add_argument("--split", default="val", help="the split of --data (as `coat eval --split`)")
    quantize.add_argument(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="what the layers left in float compute in while measuring (bf16 on CPUs with AMX or AVX-512 BF16)",
    )
    quantize.add_argument("--output", type=Path, required=True, help="the int8 IR's folder")
    quantize.add_argument("--batch-size", type=int, default=32)
    quantize.add_argument("--workers", type=int, default=0)
    quantize.add_argument("--overwrite", action="store_true")
    quantize.set_defaults(func=run_quantize, extras=("quantize",))

    explain = subparsers.add_parser("explain", help="PNG of the input, per-scale feature energy and Grad-CAM")
    explain.add_argument("image")
    _add_model_source(explain, required_checkpoint=True)
    explain.add_argument("--output", type=Path, help="PNG path (default: IMAGE_explain.png beside the image)")
    explain.add_argument("--overwrite", action="store_true")
    explain.set_defaults(func=run_explain, extras=("plots",))

    bench = subparsers.add_parser("bench", help="images/s and latency: eager/compiled, fp32/bf16, optionally vs timm")
    bench.add_argument("--model", choices=list(VARIANTS), default="coat_lite_tiny")
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--size", type=int, default=224)
    bench.add_argument(
        "--modes",
        nargs="+",
        choices=["eager", "compiled", *CPU_RUNTIMES],
        default=["eager"],
        help="openvino: our model compiled by OpenVINO for the CPU; onnxruntime: our model exported to ONNX, on "
        "ONNX Runtime's CPU provider (fp32) (timm's CoaT runs in PyTorch modes only)",
    )
    bench.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--compare", choices=["timm"], help="run timm's CoaT with the same weights in the same process")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=run_bench)


def run_predict(args: argparse.Namespace) -> int:
    from ..inference import find_images, predict
    from ..runtimes import load_predictor

    predictor = load_predictor(args.checkpoint, args.model, args.runtime, args.dtype)
    paths = find_images(args.inputs)
    results = predict(predictor, paths, args.topk, args.batch_size, args.workers, args.input_size, args.crop_pct)
    if args.json:
        print(json.dumps(results, indent=2))
    elif args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "label", "index", "prob"])
        for r in results:
            for rank, t in enumerate(r["topk"], start=1):
                writer.writerow([r["path"], rank, t["label"], t["index"], f"{t['prob']:.6f}"])
        sys.stdout.write(buffer.getvalue())
    else:
        width = max(len(r["path"]) for r in results)
        for r in results:
            best = ", ".join(f"{t['label']} {t['prob']:.1%}" for t in r["topk"])
            print(f"{r['path']:<{width}}  {best}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..inference import load_for_inference

    require("openvino" if args.format == "openvino" else "export")  # before loading the weights
    loaded = load_for_inference(args.checkpoint, args.model)
    if args.format == "openvino":
        from ..openvino_runtime import export_openvino

        diffs = export_openvino(loaded.model, args.output, loaded.class_names, overwrite=args.overwrite)
        written, runtime = f"{args.output}/model.xml, model.bin (OpenVINO IR", "OpenVINO"
    else:
        from ..export import export_onnx

        diffs = export_onnx(
            loaded.model, args.output, args.opset, overwrite=args.overwrite, class_names=loaded.class_names
        )
        written, runtime = f"{args.output} (opset {args.opset}", "ONNX Runtime"
    checks = ", ".join(f"{size}: {diff:.1e}" for size, diff in diffs.items())
    print(f"wrote {written}; dynamic batch, height, width); {runtime} vs PyTorch max abs diff {checks}")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from ..quantize import REPORT_FILE, quantize_checkpoint

    record = call_with_options(quantize_checkpoint, args).record
    print(
        f"wrote {args.output}/model.xml, model.bin (int8 OpenVINO IR, {record['calibration_images']} calibration "
        f"images) and {REPORT_FILE}; top-1 on {record['images']} held-out images: float32 "
        f"{record['float32_top1']:.2f}%, int8 {record['int8_top1']:.2f}% ({record['top1_change']:+.2f}); serve it "
        "with --runtime openvino"
    )
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from ..explain import explain
    from ..inference import load_for_inference

    image = Path(args.image)
    output = args.output or image.with_name(f"{image.stem}_explain.png")
    result = explain(load_for_inference(args.checkpoint, args.model), image, output, overwrite=args.overwrite)
    print(f"top class {result['label']} ({result['prob']:.1%}); wrote {output}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from ..bench import benchmark_table
    from ..train.distributed import pick_device

    rows = benchmark_table(
        args.model,
        args.batch_size,
        args.size,
        args.modes,
        args.dtypes,
        pick_device(args.device),
        args.compare,
        args.warmup,
        args.repeats,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.model}, batch {args.batch_size}, {args.size}x{args.size}, {torch.get_num_threads()} CPU threads")
    print(f"{'impl':<6}{'mode':<10}{'dtype':<7}{'img/s':>9}{'latency ms':>12}{'vs timm':>9}")
    for r in rows:
        ratio = f"{r['speedup_vs_timm']:.2f}x" if r.get("speedup_vs_timm") else ""
        print(
            f"{r['impl']:<6}{r['mode']:<10}{r['dtype']:<7}{r['images_per_second']:>9.2f}"
            f"{r['latency_ms']:>12.1f}{ratio:>9}"
        )
    return 0
