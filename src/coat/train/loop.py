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
from dataclasses import dataclass
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
from ..errors import CoatError
from ..fast.path import cpu_has_native_bf16
from ..files import write_json, write_text
from .config import RunConfig, to_yaml
from .distributed import (
    DistInfo,
    barrier,
    broadcast_buffers,
    gather_objects,
    init_distributed,
    pick_device,
    sync_batch_norm,
)
from .loaders import set_epoch
from .loss_monitor import LossMonitor, LossReading
from .optim import build_optimizer
from .run_log import RunLog
from .state import Progress, TrainingState, load_training_state, restore_rng, rng_state, save_training_state

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.safetensors", "summary.json", "plots", "tensorboard")


class TrainingError(CoatError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what was kept."""


@dataclass(frozen=True)
class Runtime:
    """Where a run computes: its device, its place among the processes, and the autocast its forwards run in."""

    device: torch.device
    info: DistInfo
    autocast: contextlib.AbstractContextManager


class Task(Protocol):
    """What a task plugs into the loop. ``score`` names the metric (higher is better) that picks best.safetensors."""

    config: RunConfig
    score: str
    plot_panels: dict[str, list[str]]

    def build_data(self, info: DistInfo) -> tuple[DataLoader, DataLoader]: ...

    def build_model(self) -> nn.Module: ...

    def peak_lr(self, world_size: int) -> float: ...

    def lr_scales(self, model: nn.Module) -> dict[str, float]:
        """``model``'s learning-rate multipliers by parameter-name pattern (``coat.train.optim.param_groups``)."""

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, peak_lr: float, steps_per_epoch: int
    ) -> torch.optim.lr_scheduler.LRScheduler: ...

    def batch_loss(self, model: nn.Module, batch: Any, runtime: Runtime) -> tuple[torch.Tensor, int]:
        """The loss of one batch (forward only) and how many samples it held (0: nothing readable)."""

    def skipped_in(self, batch: Any) -> int: ...

    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict[str, Any]:
        """Metrics over ``loader`` (summed over processes); must hold ``score``; may hold ``skipped``."""

    def save_best(self, model: nn.Module, path: Path, metadata: dict[str, str]) -> None: ...

    def describe(self, runtime: Runtime, peak_lr: float) -> str: ...


# ---------------------------------------------------------------------------- steps
def amp_enabled(device: torch.device, config: RunConfig) -> bool:
    """``--amp`` / ``--no-amp``; unset (``None``, recipes small, digits): bf16 autocast only where it was measured to
    pay, CPUs that multiply bf16 in hardware (coat_lite_tiny, batch 128, 32x32 training step: 294 vs 384 ms on a Xeon
    with AMX, 242 vs 347 ms on an AMD EPYC with AVX-512 BF16; BENCHMARKS.md)."""
    if config.amp is not None:
        return config.amp
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast_context(device: torch.device, config: RunConfig) -> contextlib.AbstractContextManager:
    if not amp_enabled(device, config):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device, config))


def amp_dtype(device: torch.device, config: RunConfig) -> torch.dtype:
    if config.amp_dtype == "fp16" or (
        config.amp_dtype == "auto" and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    ):
        return torch.float16
    return torch.bfloat16


def backward_and_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[torch.Tensor],
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float = 0.0,
) -> None:
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
        raise DataError(
            f"{output} already holds a run ({', '.join(existing[:3])}); pass --resume auto to continue "
            "it, --overwrite to replace it, or choose another --output"
        )
    if info.is_main:
        if existing and config.overwrite and config.resume is None:
            for name in existing:
                path = output / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        output.mkdir(parents=True, exist_ok=True)
    barrier(info)
    return output


# ---------------------------------------------------------------------------- the run
@dataclass
class Training:
    """What one run trains with: built by ``_build``, stepped by ``_train_epoch``, saved in ``last.pt``."""

    model: nn.Module  # the model itself (DDP and torch.compile wrap it in ``train_model``)
    train_model: nn.Module
    eval_models: dict[str, nn.Module]  # "" (the model) and "ema_" (its average), as evaluated
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler | None


def run(task: Task) -> dict[str, Any]:
    """Train ``task`` to the end (or resume it) and return the summary written to summary.json.

    Every process runs the same steps. The collective calls, which every rank must make at the same point
    (a call inside a rank branch deadlocks DDP), are: DDP's gradient reduction in each step, the loss
    reading at log intervals (``LossMonitor.read``), the broadcast of rank 0's buffers after each training epoch,
    the task's evaluation (sums over processes) and ``_end_epoch``'s gather and barrier. Only rank 0 writes files.
    """
    config = task.config
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(device)
    runtime = Runtime(device, info, autocast_context(device, config))
    output = prepare_output(config, info)
    resume_path = _resume_path(config, output)
    random.seed(config.seed + info.rank)
    torch.manual_seed(config.seed + info.rank)

    train_loader, val_loader = task.build_data(info)
    peak_lr = task.peak_lr(info.world_size)
    training = _build(task, device, peak_lr, len(train_loader))
    log = RunLog(output, info.is_main, task.plot_panels)
    if resume_path is not None:
        progress = _resume(training, resume_path, config.model, info)
        log.restore(progress.history)
    else:
        progress = Progress()
        if info.is_main:
            write_text(output / "config.yaml", to_yaml(config))
    _wrap_for_running(training, config, info, device)
    if info.is_main:
        tqdm.write(task.describe(runtime, peak_lr))

    for epoch in range(progress.epoch, config.epochs):
        set_epoch(train_loader, epoch)
        reading, seconds, skipped = _train_epoch(task, training, train_loader, epoch, runtime, log, output)
        broadcast_buffers(training.model, info)  # collective: every rank evaluates the model rank 0 saves
        record, best = _evaluate_epoch(task, training, val_loader, runtime)
        record = {
            "epoch": epoch + 1,
            "train_loss": reading.mean_loss,
            **record,
            "lr": training.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "images_per_second": reading.samples / seconds,
        }
        skipped += record.pop("skipped", 0)
        if skipped:
            record["skipped_images"] = skipped
        log.epoch(record)
        improved = best[0] > progress.best_score
        progress = Progress(
            epoch + 1,
            max(progress.best_score, best[0]),
            progress.seconds_training + seconds,
            progress.images_trained + reading.samples,
            log.history,
        )
        _end_epoch(task, training, progress, best if improved else None, output, info)
        if info.is_main:
            tqdm.write(_epoch_line(record, config.epochs, task.plot_panels) + ("  (best)" if improved else ""))

    summary = _summary(task, progress, info, device, output)
    if info.is_main:
        write_json(output / "summary.json", summary)
    log.close()
    return summary


def _build(task: Task, device: torch.device, peak_lr: float, steps_per_epoch: int) -> Training:
    """The model, optimizer, schedule, EMA and loss scaler of a new run (a resume then loads their states)."""
    config = task.config
    model = task.build_model().to(device)
    optimizer = build_optimizer(model, peak_lr, config.weight_decay, task.lr_scales(model))
    scheduler = task.build_scheduler(optimizer, peak_lr, steps_per_epoch)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        if config.ema_decay > 0
        else None
    )
    use_scaler = amp_enabled(device, config) and device.type == "cuda" and amp_dtype(device, config) == torch.float16
    eval_models = {"": model} if ema is None else {"": model, "ema_": ema.module}
    return Training(
        model,
        model,
        eval_models,
        optimizer,
        scheduler,
        ema,
        torch.amp.GradScaler("cuda") if use_scaler else None,
    )


def _resume(training: Training, path: Path, model_name: str, info: DistInfo) -> Progress:
    """Load ``last.pt`` into ``training`` and this rank's RNG; returns the progress it holds."""
    state = load_training_state(path)
    if state.model_name != model_name:
        raise CheckpointError(
            f"{path} is a checkpoint of {state.model_name}, not {model_name}; pass the same --model or another --output"
        )
    load_state_into(training.model, state.model, source=str(path))
    training.optimizer.load_state_dict(state.optimizer)
    training.scheduler.load_state_dict(state.scheduler)
    if training.ema is not None and state.ema is not None:
        training.ema.load_state_dict(state.ema)
    if training.scaler is not None and state.scaler is not None:
        training.scaler.load_state_dict(state.scaler)
    restore_rng(state.rng_of(info.rank))
    if info.is_main:
        tqdm.write(f"resumed {path} after epoch {state.progress.epoch}")
    return state.progress


def _wrap_for_running(training: Training, config: RunConfig, info: DistInfo, device: torch.device) -> None:
    """DDP around the trained model (its BatchNorm synchronised on CUDA); with ``--compile``, training and
    evaluation each their own graphs."""
    if info.enabled:
        training.train_model = DistributedDataParallel(sync_batch_norm(training.model, device, info))
    if config.compile:
        training.train_model = torch.compile(training.train_model)
        training.eval_models = {prefix: torch.compile(m) for prefix, m in training.eval_models.items()}


def _train_epoch(
    task: Task,
    training: Training,
    loader: DataLoader,
    epoch: int,
    runtime: Runtime,
    log: RunLog,
    output: Path,
) -> tuple[LossReading, float, int]:
    """One pass over ``loader``: (the loss reading over all processes, seconds, batches' skipped images)."""
    config, info = task.config, runtime.info
    training.model.train()
    trainable = [p for p in training.model.parameters() if p.requires_grad]
    losses, skipped, steps = LossMonitor(runtime.device), 0, len(loader)
    started = time.perf_counter()
    bar = tqdm(
        loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not info.is_main, dynamic_ncols=True
    )
    for step, batch in enumerate(bar):
        skipped += task.skipped_in(batch)
        loss, count = task.batch_loss(training.train_model, batch, runtime)
        if count > 0:
            backward_and_step(loss, training.optimizer, trainable, training.scaler, config.clip_grad)
            training.scheduler.step()
            if training.ema is not None:
                training.ema.update_parameters(training.model)
            losses.add(loss, count)
        if step % config.log_interval == 0 or step == steps - 1:  # the host reads the loss here only (a collective)
            reading = _checked(losses.read(info), epoch, step, output)
            lr = training.optimizer.param_groups[0]["lr"]
            rate = reading.samples / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{reading.mean_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
            if count > 0:
                log.step(epoch * steps + step, loss.item(), lr)
    bar.close()
    return reading, time.perf_counter() - started, skipped  # reading: taken at the epoch's last step


def _evaluate_epoch(
    task: Task, training: Training, loader: DataLoader, runtime: Runtime
) -> tuple[dict[str, Any], tuple[float, nn.Module]]:
    """The validation metrics of the model and its EMA (``val_*``, ``val_ema_*``; ``skipped`` from the model's
    pass) and the better of the two: (its score, the model to save)."""
    record: dict[str, Any] = {}
    candidates = []
    for prefix, model in training.eval_models.items():
        metrics = task.evaluate(model, loader, runtime)  # a collective
        skipped = metrics.pop("skipped", 0)
        if not prefix:
            record["skipped"] = skipped
        record.update({f"val_{prefix}{k}": v for k, v in metrics.items()})
        candidates.append((metrics[task.score], training.ema.module if prefix else training.model))
    return record, max(candidates, key=lambda c: c[0])


def _end_epoch(
    task: Task,
    training: Training,
    progress: Progress,
    improved: tuple[float, nn.Module] | None,
    output: Path,
    info: DistInfo,
) -> None:
    """The epoch's collectives (every rank) and its files (rank 0): best.safetensors if the score improved,
    then last.pt with every rank's RNG states."""
    rng_states = gather_objects(rng_state(), info)  # collective
    if info.is_main:
        if improved is not None:
            score, best_model = improved
            task.save_best(
                best_model, output / "best.safetensors", {"epoch": str(progress.epoch), task.score: f"{score:.4f}"}
            )
        save_training_state(
            output / "last.pt",
            TrainingState(
                model_name=task.config.model,
                progress=progress,
                model=training.model.state_dict(),
                optimizer=training.optimizer.state_dict(),
                scheduler=training.scheduler.state_dict(),
                ema=training.ema.state_dict() if training.ema is not None else None,
                scaler=training.scaler.state_dict() if training.scaler is not None else None,
                rng=rng_states,
            ),
        )
    barrier(info)  # collective: no rank starts the next epoch before last.pt is written


def _summary(task: Task, progress: Progress, info: DistInfo, device: torch.device, output: Path) -> dict[str, Any]:
    """summary.json: the run's best and final metrics, speed and where its files are."""
    config = task.config
    final = progress.history[-1] if progress.history else {}
    return {
        "model": config.model,
        "recipe": config.recipe,
        "epochs": config.epochs,
        f"best_{task.score}": progress.best_score,
        **{f"final_{k[len('val_') :]}": v for k, v in final.items() if k.startswith("val_")},
        "images_per_second": (
            progress.images_trained / progress.seconds_training if progress.seconds_training else None
        ),
        "training_seconds": progress.seconds_training,
        "world_size": info.world_size,
        "device": str(device),
        "checkpoint": str(output / "best.safetensors"),
        "last_checkpoint": str(output / "last.pt"),
        "plots": str(output / "plots"),
        "metrics": str(output / "metrics.jsonl"),
    }


def _checked(reading: LossReading, epoch: int, step: int, output: Path) -> LossReading:
    """``reading``, or TrainingError if a loss was not finite (every process raises at the same step)."""
    if reading.non_finite:
        kept = (
            f"the last good checkpoint is {output / 'last.pt'}"
            if (output / "last.pt").exists()
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"the loss was not finite in {reading.non_finite} step(s) (over all processes) of epoch "
            f"{epoch + 1} up to step {step + 1}; every process stopped, {kept}; lower --lr or set "
            "--clip-grad"
        )
    return reading


def _epoch_line(record: dict[str, Any], epochs: int, plot_panels: dict[str, list[str]]) -> str:
    """``epoch   3/10  train_loss 0.4120  val_loss 0.3011  val_top1  97.30 ...``: the plotted metrics."""
    plotted = {key for name, keys in plot_panels.items() if name != "lr" for key in keys}
    shown = [
        f"{k} {v:.4f}" if "loss" in k else f"{k} {v:6.2f}"
        for k, v in record.items()
        if k in plotted and isinstance(v, float)
    ]
    return (
        f"epoch {record['epoch']:>3}/{epochs}  "
        + "  ".join(shown)
        + f"  lr {record['lr']:.2e}  {record['images_per_second']:.1f} img/s  {record['epoch_seconds']:.1f}s"
    )


def _resume_path(config: RunConfig, output: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        last = output / "last.pt"
        return last if last.exists() else None  # a first start under torchrun's elastic restarts
    return Path(config.resume)
