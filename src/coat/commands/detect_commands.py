"""``coat detect train | eval | predict | make-shapes``: CoaT-backed Mask R-CNN / Faster R-CNN / Deformable DETR on
COCO-format data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OutputExistsError
from .call import call_with_options

_HELP = {
    "train_images": "folder of the training images (file_name in the annotations is relative to it)",
    "train_annotations": "COCO instances JSON of the training images",
    "val_images": "folder of the validation images",
    "val_annotations": "COCO instances JSON of the validation images",
    "recipe": "coco (the authors' 1x recipe for the detector), coco-3x (their 3x schedule of the R-CNNs) or shapes "
    "(the generated set, CPU-sized)",
    "detector": "maskrcnn (boxes + masks), fasterrcnn (boxes), cascade-mask (Cascade Mask R-CNN: boxes + masks), "
    "cascade (Cascade R-CNN: boxes) or deformable-detr (boxes; the hf extra)",
    "backbone_lr_scale": "lr multiplier of CoaT's parameters",
    "sampling_lr_scale": "lr multiplier of Deformable DETR's sampling offsets and reference points",
    "random_crop": "probability of DETR's resize-and-crop augmentation (the coco recipes: 0.5 for Deformable DETR "
    "and the cascades)",
    "detections_per_image": "R-CNNs: detections kept per image in evaluation and prediction (COCO: 100)",
    "rpn_post_nms_top_n_test": "R-CNNs: proposals per image in evaluation and prediction (fewer: faster on a CPU, "
    "above all for the cascades)",
    "num_queries": "Deformable DETR's object queries",
    "transformer_layers": "Deformable DETR's encoder layers and decoder layers (each)",
    "lr_steps": "epochs after which the lr drops 10x",
    "min_sizes": "short sides for multi-scale training; the last one is also the test size",
    "pretrained": "backbone weights: a released weights name (coat_lite_small) or any classification checkpoint",
    "resume": "'auto' (OUTPUT/last.pt if present) or the path of a last.pt",
    "frozen_stages": "freeze the patch embeddings and blocks of the first N scales",
    "overwrite": "replace the run already in --output",
    "skip_corrupt": "skip unreadable images and annotated images without a file (counted) instead of stopping",
}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    from ..detection.config import DetectConfig
    from .config_flags import add_config_flags

    detect = subparsers.add_parser("detect", help="object detection / instance segmentation on COCO-format data")
    actions = detect.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = actions.add_parser(
        "train",
        help="train Mask R-CNN / Faster R-CNN / Deformable DETR with a CoaT backbone",
        description="Every option overrides the recipe; --config FILE.yaml sets many at once.",
    )
    add_config_flags(train, DetectConfig, _HELP)
    train.set_defaults(func=run_train, extras=("detect", "train"))

    ev = actions.add_parser("eval", help="COCO box and mask AP of a detector checkpoint (pycocotools)")
    ev.add_argument("--checkpoint", required=True, help="best.safetensors of a `coat detect train` run")
    ev.add_argument("--images", required=True, help="folder of the images")
    ev.add_argument("--annotations", required=True, help="COCO instances JSON of the images")
    ev.add_argument(
        "--output",
        type=Path,
        help="folder for results.json and detections.json (default: eval/ next to the checkpoint)",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per forward; padding a batch to one size "
        "changes the features slightly, so 1 (as in training's evaluation) reproduces its metrics",
    )
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--overwrite", action="store_true", help="replace earlier results in --output")
    ev.add_argument("--skip-corrupt", action="store_true", help=_HELP["skip_corrupt"])
    ev.set_defaults(func=run_eval, extras=("detect",))

    pr = actions.add_parser("predict", help="draw detections on images (PNG) and write them as COCO results JSON")
    pr.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    pr.add_argument("--checkpoint", required=True, help="best.safetensors of a `coat detect train` run")
    pr.add_argument("--output", type=Path, default=Path("detections"), help="folder for the PNGs and detections.json")
    pr.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--overwrite", action="store_true", help="replace earlier results in --output")
    pr.set_defaults(func=run_predict, extras=("detect",))

    shapes = actions.add_parser("make-shapes", help="write a small generated COCO set (coloured shapes) to try it")
    shapes.add_argument("output", type=Path, help="folder to create")
    shapes.add_argument("--train-images", type=int, default=300)
    shapes.add_argument("--val-images", type=int, default=60)
    shapes.add_argument("--overwrite", action="store_true")
    shapes.set_defaults(func=run_make_shapes)


def run_train(args: argparse.Namespace) -> int:
    from ..detection.config import DetectConfig, resolve
    from ..detection.task import fit
    from .config_flags import given_flags

    summary = fit(resolve(given_flags(args, DetectConfig), args.config))
    mask = f", mask AP {summary['final_mask_ap']:.1f}" if summary.get("final_mask_ap") is not None else ""
    print(
        f"best box AP {summary['best_box_ap']:.1f}, final box AP {summary['final_box_ap']:.1f}{mask} after "
        f"{summary['epochs']} epochs; checkpoint {summary['checkpoint']}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..detection.inference import evaluate_detector_checkpoint

    report = call_with_options(evaluate_detector_checkpoint, args)
    metrics = report.metrics
    shown = "  ".join(
        f"{k} {v:.1f}" for k, v in metrics.items() if k.endswith(("_ap", "_ap50", "_ap75")) and v is not None
    )
    skipped = metrics["skipped"] + report.missing_images
    print(
        f"{shown}  on {metrics['images']} images{f' ({skipped} skipped)' if skipped else ''}; wrote "
        f"{report.results_path} and {report.detections_path}"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..detection.inference import predict_detections

    predictions, json_path = call_with_options(predict_detections, args)
    for image in predictions:
        print(f"{image.path}: {len(image.results)} detection(s) -> {image.picture}")
    total = sum(len(image.results) for image in predictions)
    print(f"wrote {json_path} ({total} detections, COCO results format, score >= {args.score_threshold})")
    return 0


def run_make_shapes(args: argparse.Namespace) -> int:
    from ..detection.shapes import make_shapes

    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise OutputExistsError(f"{args.output} is not empty; pass --overwrite or another folder")
    paths = make_shapes(args.output, args.train_images, args.val_images)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in paths.items())
    print(
        f"wrote {args.train_images} train / {args.val_images} val images with instance masks to {args.output}\n"
        f"train with: coat detect train --recipe shapes {flags}"
    )
    return 0
