"""``coat info`` and ``coat convert``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checkpoint import is_mmdet_file, read_checkpoint, save_checkpoint
from ..complexity import variant_summaries
from ..errors import OutputExistsError
from ..factory import create_model, infer_variant
from ..models.config import VARIANTS


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser("info", help="list the variants with params, GMACs and paper accuracy")
    info.add_argument("name", nargs="?", choices=list(VARIANTS), metavar="NAME", help="one variant in detail")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=run_info)

    convert = subparsers.add_parser(
        "convert",
        help="turn any readable checkpoint into this library's format (the authors' mmdetection Mask R-CNN / "
        "Cascade Mask R-CNN files into detector checkpoints)",
    )
    convert.add_argument("src", type=Path, help="authors' .pth (classifier or mmdetection detector), timm, or ours")
    convert.add_argument("dst", type=Path, help="output .safetensors file")
    convert.add_argument("--model", choices=list(VARIANTS), help="variant (inferred from the weights if omitted)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    convert.set_defaults(func=run_convert)


def run_info(args: argparse.Namespace) -> int:
    rows = variant_summaries([args.name] if args.name else list(VARIANTS))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<22}{'kind':<11}{'params (M)':>11}{'GMACs':>8}{'input':>7}{'top-1 (paper)':>15}  weights")
    for r in rows:
        print(
            f"{r['name']:<22}{r['kind']:<11}{r['params_m']:>11.2f}{r['gmacs']:>8.2f}"
            f"{r['input_size']:>7}{r['paper_top1']:>15.1f}  {', '.join(r['weights'])}"
        )
    if args.name:
        print(json.dumps(VARIANTS[args.name].config.to_dict(), indent=2))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    if args.dst.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.dst} already exists; pass --overwrite to replace it")
    if is_mmdet_file(args.src):
        from ..detection.mmdet_convert import save_converted_detector

        spec = save_converted_detector(args.src, args.dst)
        print(
            f"converted {args.src} (mmdetection {spec.detector} on {spec.variant}, {len(spec.class_names)} COCO "
            f"classes) -> {args.dst}: use it with `coat detect eval` / `coat detect predict`"
        )
        return 0
    checkpoint = read_checkpoint(args.src)
    name = args.model or checkpoint.variant or infer_variant(checkpoint.state_dict)
    model = create_model(name, pretrained=checkpoint)
    save_checkpoint(model, args.dst, variant=name)
    notes = "; ".join(checkpoint.notes) or "no key changes"
    print(f"converted {args.src} ({checkpoint.source_format} format, {name}) -> {args.dst}: {notes}")
    return 0
