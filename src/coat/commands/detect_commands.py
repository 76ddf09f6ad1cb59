"""``coat detect train | eval | predict | make-shapes``: CoaT-backed Mask R-CNN / Faster R-CNN on COCO-format data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm
from ..errors import OutputExistsError, UsageError

_HELP = {
    "train_images": "folder of the training images (file_name in the annotations is relative to it)",
    "train_annotations": "COCO instances JSON of the training images",
    "val_images": "folder of the validation images",
    "val_annotations": "COCO instances JSON of the validation images",
    "recipe": "coco (the authors' Mask R-CNN 1x) or shapes (the generated set, CPU-sized)",
    "detector": "maskrcnn (boxes + masks) or fasterrcnn (boxes)",
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

    train = actions.add_parser("train", help="train Mask R-CNN / Faster R-CNN with a CoaT backbone",
                               description="Every option overrides the recipe; --config FILE.yaml sets many at once.")
    add_config_flags(train, DetectConfig, _HELP)
    train.set_defaults(func=run_train, extras=("detect", "train"))

    ev = actions.add_parser("eval", help="COCO box and mask AP of a detector checkpoint (pycocotools)")
    ev.add_argument("--checkpoint", required=True, help="best.safetensors of a `coat detect train` run")
    ev.add_argument("--images", required=True, help="folder of the images")
    ev.add_argument("--annotations", required=True, help="COCO instances JSON of the images")
    ev.add_argument("--output", type=Path, help="folder for results.json and detections.json "
                    "(default: eval/ next to the checkpoint)")
    ev.add_argument("--batch-size", type=int, default=1, help="images per forward; padding a batch to one size "
                    "changes the features slightly, so 1 (as in training's evaluation) reproduces its metrics")
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
    print(f"best box AP {summary['best_box_ap']:.1f}, final box AP {summary['final_box_ap']:.1f}{mask} after "
          f"{summary['epochs']} epochs; checkpoint {summary['checkpoint']}")
    return 0


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite or another --output")


def run_eval(args: argparse.Namespace) -> int:
    from ..detection.coco_eval import evaluate_detector
    from ..detection.data import CocoDetectionSet, collate_detection, detection_transform, read_coco
    from ..detection.weights import load_detector
    from ..train.distributed import pick_device

    output = args.output or Path(args.checkpoint).resolve().parent / "eval"
    results_path, detections_path = output / "results.json", output / "detections.json"
    _refuse_overwrite([results_path, detections_path], args.overwrite)
    model, spec = load_detector(args.checkpoint)
    index = read_coco(args.annotations, args.images, args.skip_corrupt)
    if index.category_ids != spec.category_ids:
        raise UsageError(f"{args.annotations} lists categories {index.category_ids} but the checkpoint detects "
                         f"{spec.category_ids}; evaluate on data with the training categories")
    with_masks = spec.detector == "maskrcnn" and index.has_masks  # without ground-truth masks, boxes only
    device = pick_device(args.device)
    dataset = CocoDetectionSet(index, detection_transform(0.0), with_masks=False,  # COCOeval reads the JSON's
                               skip_corrupt=args.skip_corrupt)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_detection)
    metrics, detections = evaluate_detector(model.to(device), loader, device, index.coco, spec.category_ids,
                                            with_masks, progress="eval")
    output.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(args.checkpoint), "images_folder": str(args.images),
              "annotations": str(args.annotations), "missing_images": len(index.missing_images),
              "degenerate_boxes_dropped": index.dropped_boxes, **metrics}
    results_path.write_text(json.dumps(record, indent=2) + "\n")
    detections_path.write_text(json.dumps(detections) + "\n")
    shown = "  ".join(f"{k} {v:.1f}" for k, v in metrics.items() if k.endswith(("_ap", "_ap50", "_ap75"))
                      and v is not None)
    skipped = metrics["skipped"] + len(index.missing_images)
    print(f"{shown}  on {metrics['images']} images{f' ({skipped} skipped)' if skipped else ''}; wrote "
          f"{results_path} and {detections_path}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..data.datasets import load_rgb
    from ..detection.coco_eval import to_coco_results
    from ..detection.draw import draw_detections, keep_confident
    from ..detection.weights import load_detector
    from ..inference import find_images
    from ..train.distributed import pick_device

    if not 0 <= args.score_threshold <= 1:
        raise UsageError("--score-threshold must be in [0, 1]")
    paths = find_images(args.inputs)
    pictures = [args.output / f"{path.stem}.png" for path in paths]
    if len(set(pictures)) < len(pictures):
        raise UsageError("two inputs share a file name stem, so their pictures would collide; predict them apart")
    json_path = args.output / "detections.json"
    _refuse_overwrite([json_path, *pictures], args.overwrite)
    model, spec = load_detector(args.checkpoint)
    device = pick_device(args.device)
    model.to(device)
    args.output.mkdir(parents=True, exist_ok=True)
    results, counts = [], []
    with torch.no_grad():
        for image_id, (path, picture) in enumerate(tqdm(list(zip(paths, pictures)), desc="detect", leave=False), 1):
            image = TF.pil_to_tensor(load_rgb(str(path)))  # [3, H, W] uint8
            output = keep_confident(model([TF.to_dtype(image, torch.float32, scale=True).to(device)])[0],
                                    args.score_threshold)
            output = {k: v.cpu() for k, v in output.items()}
            TF.to_pil_image(draw_detections(image, output, spec.class_names)).save(picture)
            results += [{**r, "file_name": str(path)} for r in to_coco_results(output, image_id, spec.category_ids)]
            counts.append(len(output["scores"]))
    json_path.write_text(json.dumps(results) + "\n")
    for path, picture, count in zip(paths, pictures, counts):
        print(f"{path}: {count} detection(s) -> {picture}")
    print(f"wrote {json_path} ({len(results)} detections, COCO results format, score >= {args.score_threshold})")
    return 0


def run_make_shapes(args: argparse.Namespace) -> int:
    from ..detection.shapes import make_shapes

    if args.output.exists() and any(args.output.iterdir()) and not args.overwrite:
        raise OutputExistsError(f"{args.output} is not empty; pass --overwrite or another folder")
    paths = make_shapes(args.output, args.train_images, args.val_images)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in paths.items())
    print(f"wrote {args.train_images} train / {args.val_images} val images with instance masks to {args.output}\n"
          f"train with: coat detect train --recipe shapes {flags}")
    return 0
