"""``coat segment train | eval | predict | make-shapes``: UperNet on CoaT for semantic segmentation."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OutputExistsError
from .call import call_with_options

_HELP = {
    "data": "a segmentation folder: VOC (JPEGImages/ + SegmentationClassPNG/), ADE20K (images/training/ + "
    "annotations/training/) or images/ + masks/",
    "val_data": "validation folder in one of those layouts (default: --data's own validation split)",
    "recipe": "ade20k (the standard UperNet recipe) or small (a few thousand images on a CPU)",
    "input_size": "side of the square training crops (and of the sliding windows)",
    "base_scale": "LONG SHORT: images are rescaled to fit this (x a random ratio of --scale-range in training)",
    "scale_range": "LOW HIGH: the random rescale ratios of training",
    "cat_max_ratio": "redraw a training crop (up to 10 times) while one class covers this share of it; 1: off",
    "eval_mode": "whole (the rescaled image at once) or slide (windows of --input-size)",
    "decoder_channels": "UperNet's channels (512 in the ADE20K tables)",
    "pretrained": "backbone weights: a released weights name (coat_lite_small) or any classification checkpoint",
    "resume": "'auto' (OUTPUT/last.pt if present) or the path of a last.pt",
    "overwrite": "replace the run already in --output",
}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    from ..segmentation.config import SegmentConfig
    from .config_flags import add_config_flags

    segment = subparsers.add_parser("segment", help="semantic segmentation (UperNet on CoaT)")
    actions = segment.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = actions.add_parser(
        "train",
        help="train UperNet with a CoaT backbone",
        description="Every option overrides the recipe; --config FILE.yaml sets many at once.",
    )
    add_config_flags(train, SegmentConfig, _HELP)
    train.set_defaults(func=run_train, extras=("hf", "train"))

    ev = actions.add_parser("eval", help="mIoU, per-class IoU and accuracies of a segmentation checkpoint")
    ev.add_argument("--checkpoint", required=True, help="best.safetensors of a `coat segment train` run")
    ev.add_argument("--data", required=True, help="folder to score (its validation split, or all of it)")
    ev.add_argument("--output", type=Path, help="folder for results.json (default: eval/ next to the checkpoint)")
    ev.add_argument("--mode", default="whole", help=_HELP["eval_mode"])
    ev.add_argument("--stride", type=int, help="slide: window step (default: 2/3 of the window)")
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--overwrite", action="store_true", help="replace earlier results in --output")
    ev.set_defaults(func=run_eval, extras=("hf",))

    pr = actions.add_parser("predict", help="write the class mask and a colour overlay (PNG) per image")
    pr.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    pr.add_argument("--checkpoint", required=True, help="best.safetensors of a `coat segment train` run")
    pr.add_argument("--output", type=Path, default=Path("segmentations"), help="folder for the PNGs")
    pr.add_argument("--mode", default="whole", help=_HELP["eval_mode"])
    pr.add_argument("--device", default="auto")
    pr.add_argument("--overwrite", action="store_true", help="replace earlier results in --output")
    pr.set_defaults(func=run_predict, extras=("hf",))

    shapes = actions.add_parser("make-shapes", help="write a small generated segmentation set to try it")
    shapes.add_argument("output", type=Path, help="folder to create")
    shapes.add_argument("--layout", default="voc", choices=("voc", "ade20k", "plain"))
    shapes.add_argument("--train-images", type=int, default=200)
    shapes.add_argument("--val-images", type=int, default=50)
    shapes.add_argument("--overwrite", action="store_true")
    shapes.set_defaults(func=run_make_shapes)


def run_train(args: argparse.Namespace) -> int:
    from ..segmentation.config import SegmentConfig, resolve
    from ..segmentation.task import fit
    from .config_flags import given_flags

    summary = fit(resolve(given_flags(args, SegmentConfig), args.config))
    print(
        f"best mIoU {summary['best_miou']:.1f}, final mIoU {summary['final_miou']:.1f} after {summary['epochs']} "
        f"epochs; checkpoint {summary['checkpoint']}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..segmentation.inference import evaluate_segmenter_checkpoint

    report = call_with_options(evaluate_segmenter_checkpoint, args)
    metrics = report.metrics
    print(
        f"mIoU {metrics['miou']:.1f}  pixel accuracy {metrics['pixel_accuracy']:.1f}  mean accuracy "
        f"{metrics['mean_accuracy']:.1f}  on {metrics['images']} images; wrote {report.results_path}"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..segmentation.inference import predict_segmentation

    for image in call_with_options(predict_segmentation, args):
        print(f"{image.path}: {image.mask}, {image.overlay}")
    return 0


def run_make_shapes(args: argparse.Namespace) -> int:
    from ..segmentation.shapes import make_segmentation_shapes

    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise OutputExistsError(f"{args.output} is not empty; pass --overwrite or another folder")
    make_segmentation_shapes(args.output, args.layout, args.train_images, args.val_images)
    print(
        f"wrote {args.train_images} train / {args.val_images} val images with class masks ({args.layout} layout) "
        f"to {args.output}\ntrain with: coat segment train --recipe small --data {args.output}"
    )
    return 0
