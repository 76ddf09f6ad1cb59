"""``coat segment train`` options: the shared run options plus the data folders, crops, rescaling and evaluation.

Recipes:
- ``ade20k``: the UperNet recipe backbones are compared with on ADE20K (mmsegmentation's Swin / ConvNeXt
  configs): AdamW lr 6e-5, weight decay 0.01, 1500-iteration linear warm-up from 1e-6 x lr then poly decay
  (power 1) to 0, 512x512 crops of images rescaled to fit 2048x512 x 0.5-2.0 (no class over 75% of a crop where
  10 draws allow: ``cat_max_ratio``), flip, photometric distortion,
  total batch 16 (2 per GPU on 8) for 160k iterations: 127 epochs of ADE20K's 20,210 training images.
  Evaluation rescales to fit 2048x512 and scores at the annotation's size.
- ``small``: a few hundred to a few thousand images on a CPU, from scratch: 128-pixel crops of images rescaled to
  fit 256x128 x 0.5-2.0, with the crop cap of ``ade20k``; a 128-channel head; lr 1e-3, weight decay 0.05,
  50 warm-up iterations, batch 8, 30 epochs. Checked on CamVid, photographs of people and generated shapes
  against smp's FPN-ResNet-18 (BENCHMARKS.md, "Semantic segmentation on real photographs").
Precedence as for ``coat train``: defaults < recipe < ``--config`` YAML < flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..train.config import RunConfig, check_model, check_recipe, given_options, validate
from .evaluate import default_stride

EVAL_MODES = ("whole", "slide")


@dataclass
class SegmentConfig(RunConfig):
    data: str | None = None  # a folder in one of the layouts of coat.segmentation.data
    val_data: str | None = None  # None: the data folder's own validation split
    output: str = "runs/segment"
    recipe: str = "ade20k"
    epochs: int = 127
    batch_size: int = 2  # per process
    lr: float | None = 6e-5
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6  # the warm-up starts at this fraction of lr
    poly_power: float = 1.0
    input_size: int = 512  # training crops are input_size x input_size
    base_scale: tuple[int, ...] = (2048, 512)  # (long side, short side) the images are rescaled to fit
    scale_range: tuple[float, ...] = (0.5, 2.0)  # training rescales by a random ratio of base_scale in this range
    cat_max_ratio: float = 0.75  # redraw crops (up to 10) where one class covers this share of the labelled pixels
    hflip: float = 0.5
    photometric: bool = True
    eval_mode: str = "whole"  # whole: the rescaled image at once; slide: input_size windows
    eval_stride: int | None = None  # slide: window step in pixels; None: 2/3 of input_size (341 for 512)
    drop_path: float | None = 0.1
    decoder_channels: int = 512  # UperNet's hidden size
    workers: int = 4


RECIPES: dict[str, dict[str, Any]] = {
    "ade20k": {},
    # Images of about 100-500 pixels a side, a few hundred to a few thousand of them, from scratch on a CPU.
    "small": {
        "epochs": 30,
        "batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 0.05,
        "warmup_iters": 50,
        "input_size": 128,
        "base_scale": (256, 128),
        "decoder_channels": 128,
        "drop_path": 0.0,
        "amp": None,
        "workers": 0,
    },
}


def resolve(cli: dict[str, Any], yaml_path: str | None = None) -> SegmentConfig:
    """Combine recipe, YAML file and flags (``None`` values in ``cli`` mean "not given")."""
    given = given_options(cli, yaml_path, SegmentConfig)
    recipe = given.get("recipe", SegmentConfig.recipe)
    check_recipe(recipe, RECIPES)
    check_model(given, SegmentConfig.model)
    values: dict[str, Any] = {**RECIPES[recipe], **given, "recipe": recipe}
    for name, kind in (("base_scale", int), ("scale_range", float)):
        values[name] = tuple(kind(v) for v in values.get(name, getattr(SegmentConfig, name)))
    config = SegmentConfig(**values)
    if config.eval_stride is None:
        config.eval_stride = default_stride(config.input_size)
    validate(
        config,
        [
            (
                config.data is not None,
                "--data required: a segmentation folder (`coat segment make-shapes DIR` writes one)",
            ),
            (config.lr is not None and config.lr > 0, "--lr must be positive"),
            (
                config.batch_size >= 2,
                "--batch-size must be at least 2 per process: UperNet's pyramid pooling batch-normalises a 1x1 map",
            ),
            (config.input_size >= 32, "--input-size must be at least 32"),
            (len(config.base_scale) == 2 and min(config.base_scale) >= 32, "--base-scale takes LONG SHORT, each >= 32"),
            (
                len(config.scale_range) == 2 and 0 < config.scale_range[0] <= config.scale_range[1],
                "--scale-range takes LOW HIGH with 0 < LOW <= HIGH",
            ),
            (0 < config.cat_max_ratio <= 1, "--cat-max-ratio must be in (0, 1]; 1 turns the redrawing off"),
            (config.eval_mode in EVAL_MODES, f"--eval-mode must be one of {', '.join(EVAL_MODES)}"),
            (0 < config.eval_stride <= config.input_size, "--eval-stride must be in 1..--input-size"),
            (config.decoder_channels > 0, "--decoder-channels must be positive"),
        ],
    )
    return config
