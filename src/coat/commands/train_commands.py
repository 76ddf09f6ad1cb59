"""``coat train`` and ``coat eval``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation import evaluate_checkpoint
from ..models.config import VARIANTS
from ..train.classify import fit
from ..train.config import RECIPES, TrainConfig, resolve
from .call import call_with_options
from .config_flags import add_config_flags, given_flags
from .use_commands import EXPORTED_FILES, add_runtime_options

_HELP = {
    "data": "image folder with train/<class>/* and val/<class>/*, wds:DIR (shards of `coat data pack` or timm), or "
    "hfds:NAME_OR_PATH (a Hugging Face dataset; extra hfds) (default: the embedded MNIST subset)",
    "train_split": "with --data hfds:NAME_OR_PATH, a split name; with --data wds:DIR, a split of DIR/_info.json or "
    "shard files as a brace pattern ('train-{000000..000099}.tar' with --train-samples, or timm's 'PATTERN|SAMPLES')",
    "val_split": "as --train-split ('val' also finds a split named 'validation')",
    "train_samples": "samples in a --train-split pattern (the epoch length)",
    "val_samples": "samples in a --val-split pattern",
    "num_classes": "classes of shards whose _info.json names none (class index = name)",
    "recipe": f"named recipe: {', '.join(RECIPES)} (default: imagenet with --data, digits without)",
    "resume": "'auto' (OUTPUT/last.pt if present) or the path of a last.pt",
    "pretrained": "weights to fine-tune from: a released weights name (coat_lite_small, coat_lite_small.authors) "
    "or any checkpoint the library reads; the head is re-initialised",
    "lr": "peak learning rate (default: base_lr x global batch / 512)",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision: bf16 on CPU, fp16/bf16 (--amp-dtype) on CUDA (small, digits: only on CPUs with AMX or "
    "AVX-512 BF16, where it was measured to pay)",
    "compile": "torch.compile the model",
    "last_stage_lr_scale": "learning-rate multiplier of the last stage (small recipe: 0.1; at 32-pixel inputs that "
    "stage sees one image token, and at the full lr it soon gives every image the same CLS token)",
    "overwrite": "replace the run already in --output",
    "skip_corrupt": "skip unreadable images (counted in the metrics) instead of stopping",
    "pixel_augment_on_device": "loader workers only decode, crop and flip (uint8 batches); RandAugment, "
    "normalisation and erasing run per image on the training device. For GPUs whose "
    'workers cannot keep up (BENCHMARKS.md, "Feeding a GPU"); not yet measured on a GPU',
}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train or fine-tune a variant on an image folder or the embedded data",
        description="Every option overrides the recipe; --config FILE.yaml sets many at once.",
    )
    add_config_flags(train, TrainConfig, _HELP)
    train.set_defaults(func=run_train, extras=("train",))

    ev = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix")
    ev.add_argument(
        "--checkpoint",
        required=True,
        help="our .safetensors (e.g. runs/demo/best.safetensors), or an authors'/timm file together with --model"
        + EXPORTED_FILES,
    )
    ev.add_argument(
        "--model", dest="model_name", choices=list(VARIANTS), help="variant, for checkpoints that do not carry a config"
    )
    ev.add_argument(
        "--data",
        help="folder with val/<class>/* or <class>/*, wds:DIR or hfds:NAME_OR_PATH (its val split) (default: the "
        "embedded held-out split)",
    )
    ev.add_argument(
        "--split",
        default="val",
        help="the split to evaluate: a folder's subfolder, a split of wds:/hfds: data ('val' also finds "
        "'validation'), or a brace pattern of shards such as 'val-{0000..0003}.tar' with --samples",
    )
    ev.add_argument("--samples", type=int, help="images in a --split shard pattern (wds: data without _info.json)")
    ev.add_argument("--input-size", type=int, help="default: the checkpoint's")
    ev.add_argument("--crop-pct", type=float, help="center-crop fraction (default: the checkpoint's, e.g. 0.875)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--device", default="auto")
    ev.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for results.json and confusion.png (default: eval/ next to the checkpoint)",
    )
    ev.add_argument("--overwrite", action="store_true", help="replace earlier results in --output")
    ev.add_argument("--skip-corrupt", action="store_true")
    add_runtime_options(ev)
    ev.set_defaults(func=run_eval, extras=("plots",))


def run_train(args: argparse.Namespace) -> int:
    config = resolve(given_flags(args, TrainConfig), args.config)
    summary = fit(config)
    print(
        f"best top-1 {summary['best_top1']:.2f}%, final top-1 {summary['final_top1']:.2f}% after "
        f"{summary['epochs']} epochs ({summary['images_per_second']:.0f} img/s); checkpoint {summary['checkpoint']}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    report = call_with_options(evaluate_checkpoint, args)
    result = report.result
    print(
        f"top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  loss {result.loss:.4f}  on {result.count} images"
        f"{f' ({result.skipped} skipped)' if result.skipped else ''}; wrote {report.results_path} and "
        f"{report.confusion_path}"
    )
    return 0
