"""``coat detect train`` options: the shared run options plus COCO paths, the detector and its schedule.

Recipes: ``coco`` is the authors' Mask R-CNN 1x (AdamW lr 1e-4, weight decay 0.05, 12 epochs with
lr x0.1 after epochs 8 and 11, 500-iteration linear warm-up, short side 480-800 / max 1333, flip,
total batch 16); ``shapes`` fits the generated shapes set (``coat detect make-shapes``) on a CPU.
Precedence as for ``coat train``: defaults < recipe < ``--config`` YAML < flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    frozen_stages: int = 0
    frozen_norms: bool = False
    workers: int = 4


RECIPES: dict[str, dict[str, Any]] = {
    "coco": {},
    # Images of 128-160 px with 1-4 large shapes, from scratch: about 40 minutes on 2 CPU cores for 300 images.
    "shapes": {
        "epochs": 5,
        "batch_size": 4,
        "lr": 3e-4,
        "lr_steps": (4,),
        "warmup_iters": 50,
        "min_sizes": (128, 144, 160),
        "max_size": 256,
        "box_batch_size_per_image": 128,
        "rpn_post_nms_top_n_train": 500,
        "amp": False,
        "workers": 0,
        "drop_path": 0.0,
    },
}


def resolve(cli: dict[str, Any], yaml_path: str | None = None) -> DetectConfig:
    """Combine recipe, YAML file and flags (``None`` values in ``cli`` mean "not given")."""
    given = given_options(cli, yaml_path, DetectConfig)
    recipe = given.get("recipe", DetectConfig.recipe)
    check_recipe(recipe, RECIPES)
    model = check_model(given, DetectConfig.model)
    values: dict[str, Any] = {
        "drop_path": DETECTION_DROP_PATH.get(model, 0.1),
        **RECIPES[recipe],
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
            (config.detector in DETECTORS, f"--detector must be one of {', '.join(DETECTORS)}"),
            (bool(config.min_sizes) and min(config.min_sizes) >= 32, "--min-sizes must be short sides of at least 32"),
            (config.lr is not None and config.lr > 0, "--lr must be positive"),
            (0 <= config.frozen_stages <= 4, "--frozen-stages must be in 0..4"),
        ],
    )
    return config
