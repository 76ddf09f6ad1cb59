"""``coat segment train`` against segmentation-models-pytorch peers, trained from scratch on the same folder with
the same crops, augmentation, optimiser, schedule, epochs and evaluation (the loop and data of ``coat segment``;
only the network differs). Needs the ``hf`` and ``smp`` extras.

Peers:
- ``upernet-coat``: what ``coat segment train`` builds (UperNet on ``--model``);
- ``fpn-resnet18``: smp's FPN on a ResNet-18, the usual small baseline;
- ``fpn-coat``: smp's FPN on the same CoaT variant (our smp encoder).

    python benchmarks/bench_segment_peers.py --data data/camvid --output runs/peers-camvid --json camvid.json
    python benchmarks/bench_segment_peers.py --data data/human --peers upernet-coat fpn-resnet18 --lr 2e-3

Every ``coat segment train`` option applies to every peer (the recipe defaults to ``small``; ``--resume auto``
re-scores finished runs); each peer trains in ``--output``/NAME. ``--test-data DIR`` also scores each peer's best
checkpoint on a held-out folder. Prints one markdown row per peer: best and final validation mIoU, final pixel
accuracy, test mIoU, parameters, seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from coat.checkpoint import load_state_into, save_model_state
from coat.commands.config_flags import add_config_flags, given_flags
from coat.segmentation.config import SegmentConfig, resolve
from coat.segmentation.data import IGNORE_INDEX, read_split
from coat.segmentation.dataset import SegmentationSet
from coat.segmentation.evaluate import evaluate_segmenter
from coat.segmentation.task import SegmentationTask, collate_segmentation
from coat.train.loop import run

SMP_STRIDE = 32  # smp's FPN needs sides divisible by its encoder's output stride


class SmpSegmenter(nn.Module):
    """An smp model behind the interface UperNet has in ``coat segment``'s loop: ``forward(pixel_values,
    labels=None)`` -> ``.logits`` at the input size and ``.loss`` (cross-entropy, label 255 ignored)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        height, width = pixel_values.shape[-2:]
        pad_bottom, pad_right = -height % SMP_STRIDE, -width % SMP_STRIDE
        padded = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
        logits = self.network(padded)[..., :height, :width]
        loss = None if labels is None else F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return SimpleNamespace(logits=logits, loss=loss)


class SmpTask(SegmentationTask):
    """``coat segment``'s task with an smp network in place of UperNet."""

    def __init__(self, config, label: str, build: Callable[[int], nn.Module]) -> None:
        super().__init__(config)
        self.label, self.build = label, build

    def build_model(self) -> nn.Module:
        return SmpSegmenter(self.build(len(self.spec.class_names)))

    def save_best(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
        save_model_state(model, path, metadata)

    def describe(self, runtime, peak_lr: float) -> str:
        return super().describe(runtime, peak_lr).replace(f"UperNet on {self.config.model}", f"smp's {self.label}")


def smp_builder(architecture: str, encoder: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp

        import coat.segmentation.smp_encoders  # noqa: F401  (registers the CoaT encoders)

        return getattr(smp, architecture)(encoder, encoder_weights=None, classes=num_classes)

    return build


def train_peer(name: str, config) -> SegmentationTask:
    if name == "upernet-coat":
        return SegmentationTask(config)
    if name == "fpn-resnet18":
        return SmpTask(config, "FPN-ResNet-18", smp_builder("FPN", "resnet18"))
    if name == "fpn-coat":
        return SmpTask(config, f"FPN-{config.model}", smp_builder("FPN", config.model))
    raise SystemExit(f"unknown peer {name}; choose upernet-coat, fpn-resnet18 or fpn-coat")


def held_out_miou(task: SegmentationTask, test_data: str) -> float:
    """mIoU of the run's best checkpoint on ``test_data``, evaluated as the validation during training."""
    model = task.build_model()
    load_state_into(model, load_file(Path(task.config.output) / "best.safetensors"))
    split = read_split(test_data, "train", task.spec.class_names)
    loader = DataLoader(
        SegmentationSet.for_evaluation(split, task.config.base_scale), batch_size=1, collate_fn=collate_segmentation
    )
    config = task.config
    options = {"mode": config.eval_mode, "window": config.input_size, "stride": config.eval_stride}
    return evaluate_segmenter(model, loader, torch.device("cpu"), task.spec.class_names, **options)["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flags(parser, SegmentConfig, {})  # coat segment train's options
    parser.set_defaults(recipe="small", output="runs/segment-peers")
    parser.add_argument("--peers", nargs="+", default=["upernet-coat", "fpn-resnet18"])
    parser.add_argument("--test-data", help="a held-out folder to score each peer's best checkpoint on")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = []
    print(
        "| network | best val mIoU | final val mIoU | final pixel acc | test mIoU | params (M) | s/epoch |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name in args.peers:
        given = given_flags(args, SegmentConfig)
        config = resolve({**given, "output": str(Path(args.output) / name)}, args.config)
        task = train_peer(name, config)
        summary = run(task)
        lines = (Path(config.output) / "metrics.jsonl").read_text().splitlines()
        final = json.loads(lines[-1])
        params = sum(p.numel() for p in task.build_model().parameters()) / 1e6
        row = {
            "network": name,
            "best_miou": summary["best_miou"],
            "final_miou": final["val_miou"],
            "final_pixel_accuracy": final["val_pixel_accuracy"],
            "test_miou": held_out_miou(task, args.test_data) if args.test_data else None,
            "params_m": params,
            "seconds_per_epoch": sum(json.loads(line)["epoch_seconds"] for line in lines) / len(lines),
            "config": {"recipe": config.recipe, "epochs": config.epochs, "lr": config.lr, "model": config.model},
        }
        rows.append(row)
        test = "-" if row["test_miou"] is None else f"{row['test_miou']:.1f}"
        print(
            f"| {name} | {row['best_miou']:.1f} | {row['final_miou']:.1f} | {row['final_pixel_accuracy']:.1f} | "
            f"{test} | {params:.1f} | {row['seconds_per_epoch']:.0f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
