"""``coat detect train`` options: the shared run options plus COCO paths, the detector and its schedule.

Recipes, each with values per detector family (``DETECTORS[...].family``), then per detector where one differs from
its family:
- ``coco``: the authors' COCO recipes. R-CNNs: their Mask R-CNN 1x (AdamW lr 1e-4, weight decay 0.05, 12 epochs
  with lr x0.1 after epochs 8 and 11, 500-iteration linear warm-up, short side 480-800 / max 1333, flip, total
  batch 16); their Cascade Mask R-CNN 1x adds DETR's augmentation (below) to half of the images. Deformable
  DETR: AdamW lr 2e-4 (CoaT's parameters and the sampling offsets / reference points x0.1), weight decay 1e-4,
  50 epochs with lr x0.1 after 40, no warm-up, gradient clipping 0.1, total batch 16, DETR's augmentation (flip;
  short side 480-800 / max 1333, before which half of the images are resized to a short side of 400/500/600 and
  cropped to a random 384-600 square-ish window).
- ``coco-3x``: the authors' 3x schedule of the R-CNNs: as ``coco`` over 36 epochs, lr x0.1 after 27 and 33.
- ``shapes``: the generated shapes set (``coat detect make-shapes``) on a CPU, from scratch.
Precedence as for ``coat train``: defaults < recipe < ``--config`` YAML < flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..extras import require
from ..train.config import RunConfig, check_model, check_recipe, given_options, validate
from .builders import DETECTION_DROP_PATH, DETECTORS, MAX_SIDE, TRAIN_SHORT_SIDES


@dataclass
class DetectConfig(RunConfig):
    train_images: str | None = None  # folder the train annotation file's file_names are relative to
    train_annotations: str | None = None  # COCO instances JSON
    val_images: str | None = None
    val_annotations: str | None = None
    output: str = "runs/detect"
    recipe: str = "coco"
    detector: str = "maskrcnn"
    epochs: int = 12
    batch_size: int = 2  # per process; the authors used 8 GPUs x 2
    lr: float | None = 1e-4
    lr_steps: tuple[int, ...] = (8, 11)  # epochs after which lr is multiplied by 0.1
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    min_sizes: tuple[int, ...] = TRAIN_SHORT_SIDES  # short sides for multi-scale training; the last one is tested
    max_size: int = MAX_SIDE
    hflip: float = 0.5
    box_batch_size_per_image: int = 512  # sampled RoIs per image for the box/mask heads in training
    rpn_post_nms_top_n_train: int = 2000  # proposals kept per image in training
    rpn_post_nms_top_n_test: int = 1000  # proposals per image in evaluation and prediction (saved with the checkpoint)
    detections_per_image: int = 100  # R-CNNs: detections kept per image (saved with the checkpoint)
    frozen_stages: int = 0  # R-CNNs
    frozen_norms: bool = False  # R-CNNs
    backbone_lr_scale: float = 1.0  # lr multiplier of CoaT's parameters
    sampling_lr_scale: float = 1.0  # lr multiplier of Deformable DETR's sampling offsets and reference points
    random_crop: float = 0.0  # probability of DETR's resize-and-crop augmentation (Deformable DETR, cascades)
    num_queries: int = 300  # Deformable DETR's object queries
    transformer_layers: int = 6  # Deformable DETR's encoder layers and decoder layers (each)
    workers: int = 4


# Options that only one family of detectors takes; given for the other, they are refused.
FAMILY_OPTIONS = {
    "rcnn": (
        "box_batch_size_per_image",
        "rpn_post_nms_top_n_train",
        "rpn_post_nms_top_n_test",
        "detections_per_image",
        "frozen_stages",
        "frozen_norms",
    ),
    "detr": ("sampling_lr_scale", "num_queries", "transformer_layers"),
}
_SHAPES_DATA = {"min_sizes": (128, 144, 160), "max_size": 256, "amp": False, "workers": 0, "drop_path": 0.0}
_CASCADE_AUGMENTATION = {"random_crop": 0.5}  # the authors' cascade configs: DETR's resize-and-crop for half
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "coco": {
        "rcnn": {},
        "cascade-mask": _CASCADE_AUGMENTATION,
        "cascade": _CASCADE_AUGMENTATION,
        "detr": {
            "epochs": 50,
            "lr": 2e-4,
            "lr_steps": (40,),
            "warmup_iters": 0,
            "weight_decay": 1e-4,
            "clip_grad": 0.1,
            "backbone_lr_scale": 0.1,
            "sampling_lr_scale": 0.1,
            "random_crop": 0.5,
        },
    },
    "coco-3x": {
        "rcnn": {"epochs": 36, "lr_steps": (27, 33)},
        "cascade-mask": _CASCADE_AUGMENTATION,
        "cascade": _CASCADE_AUGMENTATION,
    },
    # Images of 128-160 px with 1-4 large shapes, from scratch on 2 CPU cores. R-CNNs: about 40 minutes for 300
    # images.
    "shapes": {
        "rcnn": {
            **_SHAPES_DATA,
            "epochs": 5,
            "batch_size": 4,
            "lr": 3e-4,
            "lr_steps": (4,),
            "warmup_iters": 50,
            "box_batch_size_per_image": 128,
            "rpn_post_nms_top_n_train": 500,
        },
        # Deformable DETR: about 35 minutes for 300 images; lr 5e-4 reached box AP 34.7 where the authors' 2e-4
        # reached 26.5 (BENCHMARKS.md).
        "detr": {
            **_SHAPES_DATA,
            "epochs": 20,
            "batch_size": 4,
            "lr": 5e-4,
            "lr_steps": (16,),
            "warmup_iters": 0,
            "weight_decay": 1e-4,
            "clip_grad": 0.1,
            "sampling_lr_scale": 0.1,
            "num_queries": 30,
            "transformer_layers": 3,
        },
    },
}


def resolve(cli: dict[str, Any], yaml_path: str | None = None) -> DetectConfig:
    """Combine recipe, YAML file and flags (``None`` values in ``cli`` mean "not given")."""
    given = given_options(cli, yaml_path, DetectConfig)
    recipe = given.get("recipe", DetectConfig.recipe)
    check_recipe(recipe, RECIPES)
    model = check_model(given, DetectConfig.model)
    detector = given.get("detector", DetectConfig.detector)
    if detector not in DETECTORS:
        raise UsageError(f"--detector must be one of {', '.join(DETECTORS)}")
    family = DETECTORS[detector].family
    if family not in RECIPES[recipe]:
        raise UsageError(f"the {recipe} recipe has no values for --detector {detector}; choose another recipe")
    if family == "detr":
        require("hf")  # transformers' Deformable DETR: say so before any data is read
    foreign = [
        f"--{name.replace('_', '-')}"
        for other, names in FAMILY_OPTIONS.items()
        if other != family
        for name in names
        if name in given
    ]
    if foreign:
        raise UsageError(f"{', '.join(foreign)} do(es) not apply to --detector {detector}; leave it out")
    values: dict[str, Any] = {
        "drop_path": DETECTION_DROP_PATH.get(model, 0.1),
        **RECIPES[recipe][family],
        **RECIPES[recipe].get(detector, {}),
        **given,
        "recipe": recipe,
    }
    for name in ("lr_steps", "min_sizes"):
        values[name] = tuple(int(v) for v in values.get(name, getattr(DetectConfig, name)))
    config = DetectConfig(**values)
    missing = [
        f"--{name.replace('_', '-')}"
        for name in ("train_images", "train_annotations", "val_images", "val_annotations")
        if getattr(config, name) is None
    ]
    validate(
        config,
        [
            (
                not missing,
                f"{', '.join(missing)} required (COCO-format data; `coat detect make-shapes DIR` writes a "
                "small set and prints the command)",
            ),
            (bool(config.min_sizes) and min(config.min_sizes) >= 32, "--min-sizes must be short sides of at least 32"),
            (config.lr is not None and config.lr > 0, "--lr must be positive"),
            (0 <= config.frozen_stages <= 4, "--frozen-stages must be in 0..4"),
            (
                config.detections_per_image >= 1 and config.rpn_post_nms_top_n_test >= 1,
                "--detections-per-image and --rpn-post-nms-top-n-test must be at least 1",
            ),
            (config.backbone_lr_scale >= 0 and config.sampling_lr_scale >= 0, "lr scales must be 0 or more"),
            (0 <= config.random_crop <= 1, "--random-crop must be in [0, 1]"),
            (
                config.num_queries > 0 and config.transformer_layers >= 2,
                "--num-queries must be positive and "
                "--transformer-layers at least 2 (transformers' Deformable DETR needs 2 decoder layers)",
            ),
        ],
    )
    return config
