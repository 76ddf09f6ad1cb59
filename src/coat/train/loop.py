"""The task-agnostic training loop: ``run(task)`` trains, evaluates, checkpoints and logs one run.

A task (classification in ``coat.train.classify``, detection in ``coat.detection.task``) says how
to build its data, model and schedule, how to compute a batch's loss and how to evaluate; this
module does the rest the same way for every task: devices and torchrun, the output folder,
``last.pt`` with every rank's RNG state and exact ``--resume``, EMA, AMP, gradient clipping,
progress bars, metrics.jsonl / TensorBoard / plots and ``best.safetensors``.

Launch alone or under torchrun (see ``coat.train.distributed``); the code path is the same.
Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_state_into
from ..data.datasets import DataError
from .config import RunConfig, to_yaml
from .distributed import DistInfo, barrier, gather_objects, init_distributed, pick_device
from .loss_monitor import LossMonitor, LossReading
from .optim import build_optimizer
from .run_log import RunLog
from .state import load_training_state, restore_rng, rng_state, save_training_state
from ..errors import CoatError
from ..files import write_json, write_text

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.safetensors", "summary.json", "plots", "tensorboard")


class TrainingError(CoatError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what was kept."""


class Task(Protocol):
    """What a task plugs into the loop. ``score`` names the metric (higher is better) that picks best.safetensors."""

    config: RunConfig
    score: str
    plot_panels: dict[str, list[str]]

    def build_data(self, info: DistInfo) -> tuple[DataLoader, DataLoader]: ...

    def build_model(self) -> nn.Module: ...

    def peak_lr(self, world_size: int) -> float: ...

    def build_scheduler(self, optimizer: torch.optim.Optimizer, peak_lr: float,
                        steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler: ...

    def batch_loss(self, model: nn.Module, batch: Any, device: torch.device,
                   autocast: contextlib.AbstractContextManager) -> tuple[torch.Tensor, int]:
        """The loss of one batch (forward only) and how many samples it held (0: nothing readable)."""

    def skipped_in(self, batch: Any) -> int: ...

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, info: DistInfo,
                 autocast: contextlib.AbstractContextManager) -> dict[str, Any]:
        """Metrics over ``loader`` (summed over processes); must hold ``score``; may hold ``skipped``."""

    def save_best(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> None: ...

    def describe(self, info: DistInfo, device: torch.device, peak_lr: float) -> str: ...


# ---------------------------------------------------------------------------- steps
def amp_enabled(device: torch.device, config: RunConfig) -> bool:
    """``--amp`` / ``--no-amp``; unset (``None``, the small recipe): bf16 autocast only where it was measured to
    pay, CPUs with AMX matrix units (coat_lite_tiny, batch 128, 32x32 training step: 294 vs 384 ms; BENCHMARKS.md)."""
    if config.amp is not None:
        return config.amp
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return device.type == "cpu" and has_amx()


def autocast_context(device: torch.device, config: RunConfig) -> contextlib.AbstractContextManager:
    if not amp_enabled(device, config):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device, config))


def amp_dtype(device: torch.device, config: RunConfig) -> torch.dtype:
    if config.amp_dtype == "fp16" or (config.amp_dtype == "auto" and device.type == "cuda"
                                      and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor],
                      scaler: torch.amp.GradScaler | None = None, clip_grad: float = 0.0) -> None:
    """Backward through ``loss``, clip, step (with fp16 loss scaling when ``scaler`` is given)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad > 0:
        nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


# ---------------------------------------------------------------------------- set-up
def prepare_output(config: RunConfig, info: DistInfo) -> Path:
    """Refuse to mix runs: an existing run needs --resume or --overwrite (which removes only run files)."""
    output = Path(config.output)
    existing = [name for name in RUN_FILES if (output / name).exists()]
    if existing and config.resume is None and not config.overwrite:
        raise DataError(f"{output} already holds a run ({', '.join(existing[:3])}); pass --resume auto to continue "
                        "it, --overwrite to replace it, or choose another --output")
    if info.is_main:
        if existing and config.overwrite and config.resume is None:
            for name in existing:
                path = output / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        output.mkdir(parents=True, exist_ok=True)
    barrier(info)
    return output


# ---------------------------------------------------------------------------- the run
def run(task: Task) -> dict[str, Any]:
    """Train ``task`` to the end (or resume it) and return the summary written to summary.json."""
    config = task.config
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(device)
    output = prepare_output(config, info)
    resume_path = _resume_path(config, output)
    random.seed(config.seed + info.rank)
    torch.manual_seed(config.seed + info.rank)

    train_loader, val_loader = task.build_data(info)
    model = task.build_model().to(device)
    peak_lr = task.peak_lr(info.world_size)
    optimizer = build_optimizer(model, peak_lr, config.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = task.build_scheduler(optimizer, peak_lr, steps_per_epoch)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
           if config.ema_decay > 0 else None)
    use_scaler = amp_enabled(device, config) and device.type == "cuda" and amp_dtype(device, config) == torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    log = RunLog(output, info.is_main, task.plot_panels)
    start_epoch, best_score, seconds_training, images_trained = 0, float("-inf"), 0.0, 0

    if resume_path is not None:
        state = load_training_state(resume_path)
        if state.get("model_name") != config.model:
            raise CheckpointError(f"{resume_path} is a checkpoint of {state.get('model_name')}, not {config.model}; "
                                  "pass the same --model or another --output")
        load_state_into(model, state["model"], source=str(resume_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_score = state["epoch"], state["best_score"]
        seconds_training, images_trained = state["seconds_training"], state["images_trained"]
        log.restore(state["history"])
        restore_rng(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
        if info.is_main:
            tqdm.write(f"resumed {resume_path} after epoch {start_epoch}")
    elif info.is_main:
        write_text(output / "config.yaml", to_yaml(config))

    train_model: nn.Module = DistributedDataParallel(model) if info.enabled else model
    eval_model, eval_ema = model, (ema.module if ema is not None else None)
    if config.compile:  # training and evaluation: each its own graphs (train/eval mode differ)
        train_model, eval_model = torch.compile(train_model), torch.compile(model)
        eval_ema = torch.compile(eval_ema) if eval_ema is not None else None
    autocast = autocast_context(device, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if info.is_main:
        tqdm.write(task.describe(info, device, peak_lr))

    for epoch in range(start_epoch, config.epochs):
        train_loader.sampler.set_epoch(epoch)
        model.train()
        losses, skipped = LossMonitor(device), 0
        started = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not info.is_main,
                   dynamic_ncols=True)
        for step, batch in enumerate(bar):
            skipped += task.skipped_in(batch)
            loss, count = task.batch_loss(train_model, batch, device, autocast)
            if count > 0:
                backward_and_step(loss, optimizer, trainable, scaler, config.clip_grad)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                losses.add(loss, count)
            if step % config.log_interval == 0 or step == steps_per_epoch - 1:  # the host reads the loss here only
                reading = _checked(losses.read(info), epoch, step, output)
                lr = optimizer.param_groups[0]["lr"]
                rate = reading.samples / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{reading.mean_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
                if count > 0:
                    log.step(epoch * steps_per_epoch + step, loss.item(), lr)
        epoch_seconds = time.perf_counter() - started
        bar.close()
        seconds_training += epoch_seconds
        images_trained += reading.samples  # read at the epoch's last step

        metrics = task.evaluate(eval_model, val_loader, device, info, autocast)
        skipped += metrics.pop("skipped", 0)
        record = {"epoch": epoch + 1, "train_loss": reading.mean_loss,
                  **{f"val_{k}": v for k, v in metrics.items()}, "lr": optimizer.param_groups[0]["lr"],
                  "epoch_seconds": epoch_seconds, "images_per_second": reading.samples / epoch_seconds}
        candidates = [(metrics[task.score], model)]
        if ema is not None:
            ema_metrics = task.evaluate(eval_ema, val_loader, device, info, autocast)
            ema_metrics.pop("skipped", 0)
            record.update({f"val_ema_{k}": v for k, v in ema_metrics.items()})
            candidates.append((ema_metrics[task.score], ema.module))
        if skipped:
            record["skipped_images"] = skipped
        log.epoch(record)
        epoch_best, best_model = max(candidates, key=lambda c: c[0])
        improved = epoch_best > best_score
        best_score = max(best_score, epoch_best)
        if info.is_main:
            if improved:
                task.save_best(best_model, output / "best.safetensors",
                               {"epoch": str(epoch + 1), task.score: f"{epoch_best:.4f}"})
            save_training_state(output / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch + 1, "best_score": best_score, "history": log.history, "model_name": config.model,
                "seconds_training": seconds_training, "images_trained": images_trained,
                "rng": gather_objects(rng_state(), info),  # every rank's, so a resumed DDP run replays exactly
            })
            tqdm.write(_epoch_line(record, config.epochs, task.plot_panels) + ("  (best)" if improved else ""))
        else:
            gather_objects(rng_state(), info)
        barrier(info)

    final = log.history[-1] if log.history else {}
    summary = {
        "model": config.model, "recipe": config.recipe, "epochs": config.epochs,
        f"best_{task.score}": best_score,
        **{f"final_{k[len('val_'):]}": v for k, v in final.items() if k.startswith("val_")},
        "images_per_second": images_trained / seconds_training if seconds_training else None,
        "training_seconds": seconds_training, "world_size": info.world_size, "device": str(device),
        "checkpoint": str(output / "best.safetensors"), "last_checkpoint": str(output / "last.pt"),
        "plots": str(output / "plots"), "metrics": str(output / "metrics.jsonl"),
    }
    if info.is_main:
        write_json(output / "summary.json", summary)
    log.close()
    return summary


def _checked(reading: LossReading, epoch: int, step: int, output: Path) -> LossReading:
    """``reading``, or TrainingError if a loss was not finite (every process raises at the same step)."""
    if reading.non_finite:
        kept = f"the last good checkpoint is {output / 'last.pt'}" if (output / "last.pt").exists() \
            else "no checkpoint was written yet"
        raise TrainingError(f"the loss was not finite in {reading.non_finite} step(s) (over all processes) of epoch "
                            f"{epoch + 1} up to step {step + 1}; every process stopped, {kept}; lower --lr or set "
                            "--clip-grad")
    return reading


def _epoch_line(record: dict[str, Any], epochs: int, plot_panels: dict[str, list[str]]) -> str:
    """``epoch   3/10  train_loss 0.4120  val_loss 0.3011  val_top1  97.30 ...``: the plotted metrics."""
    plotted = {key for name, keys in plot_panels.items() if name != "lr" for key in keys}
    shown = [f"{k} {v:.4f}" if "loss" in k else f"{k} {v:6.2f}" for k, v in record.items()
             if k in plotted and isinstance(v, float)]
    return (f"epoch {record['epoch']:>3}/{epochs}  " + "  ".join(shown)
            + f"  lr {record['lr']:.2e}  {record['images_per_second']:.1f} img/s  {record['epoch_seconds']:.1f}s")


def _resume_path(config: RunConfig, output: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        last = output / "last.pt"
        return last if last.exists() else None  # a first start under torchrun's elastic restarts
    return Path(config.resume)
