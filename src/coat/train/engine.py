"""The training loop: ``fit(config)`` trains, evaluates, checkpoints and logs one run.

Launch alone (``coat train ...``) or under torchrun (see ``coat.train.distributed``); the code
path is the same. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_state_into, save_checkpoint
from ..data.datasets import EMBEDDED_NAME, DataError, collate_skipping_none, embedded_splits, folder_splits
from ..data.transforms import batch_mixing, eval_transform, train_transform
from ..factory import create_model
from ..models.coat import CoaT
from .config import TrainConfig, to_yaml
from .distributed import DistInfo, RepeatedAugSampler, ShardSampler, all_reduce_sum, barrier, init_distributed, pick_device
from .optim import build_optimizer, warmup_cosine
from .run_log import RunLog
from .state import load_training_state, restore_rng, rng_state, save_training_state

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.safetensors", "summary.json", "plots", "tensorboard")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what was kept."""


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent
    top5: float  # percent
    confusion: torch.Tensor  # [num_classes, num_classes], rows = true class
    count: int
    skipped: int

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (100.0 * self.confusion.diag() / totals).tolist()


# ---------------------------------------------------------------------------- steps
def autocast_context(device: torch.device, config: TrainConfig) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=amp_dtype(device, config)) if config.amp else contextlib.nullcontext()


def amp_dtype(device: torch.device, config: TrainConfig) -> torch.dtype:
    if config.amp_dtype == "fp16" or (config.amp_dtype == "auto" and device.type == "cuda"
                                      and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
               label_smoothing: float = 0.0, autocast: contextlib.AbstractContextManager | None = None,
               scaler: torch.amp.GradScaler | None = None, clip_grad: float = 0.0) -> torch.Tensor:
    """One optimizer step on a batch; returns the (detached) loss. ``targets`` may be soft."""
    with autocast or contextlib.nullcontext():
        loss = F.cross_entropy(model(images), targets, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int,
             info: DistInfo = DistInfo(), autocast: contextlib.AbstractContextManager | None = None,
             progress: str | None = None) -> EvalResult:
    """Loss, top-1/top-5 and the confusion matrix over ``loader`` (summed over processes)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.long, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    skipped = 0
    bar = tqdm(loader, desc=progress, leave=False, disable=progress is None or not info.is_main)
    for images, targets, n_skipped in bar:
        skipped += n_skipped
        if not len(targets):
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        top = logits.topk(min(5, num_classes), dim=1).indices  # [B, 5]
        top5_hits += (top == targets[:, None]).any(dim=1).sum()
        confusion += torch.bincount(targets * num_classes + top[:, 0], minlength=num_classes * num_classes)
    totals = torch.stack([loss_sum, top5_hits.double(), torch.tensor(float(skipped), device=device,
                                                                     dtype=torch.float64)])
    all_reduce_sum(totals, info)
    all_reduce_sum(confusion, info)
    confusion = confusion.view(num_classes, num_classes).cpu()
    count = int(confusion.sum())
    if count == 0:
        raise DataError("the evaluation set yielded no readable images")
    return EvalResult(loss=totals[0].item() / count, top1=100.0 * confusion.diag().sum().item() / count,
                      top5=100.0 * totals[1].item() / count, confusion=confusion, count=count,
                      skipped=int(totals[2].item()))


# ---------------------------------------------------------------------------- set-up
def prepare_output(config: TrainConfig, info: DistInfo) -> Path:
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


def build_data(config: TrainConfig, info: DistInfo) -> tuple[Dataset, Dataset, list[str], DataLoader, DataLoader]:
    train_tf = train_transform(config.input_size, config.scale_min, config.hflip, config.randaugment_magnitude,
                               config.random_erasing, config.mean, config.std)
    val_tf = eval_transform(config.input_size, config.crop_pct, config.mean, config.std)
    if config.data is None:
        train_set, val_set = embedded_splits(train_tf, val_tf)
    else:
        train_set, val_set = folder_splits(config.data, train_tf, val_tf, config.skip_corrupt)
    classes = train_set.classes
    global_batch = config.batch_size * info.world_size
    if len(train_set) < global_batch:
        raise DataError(f"the training set has {len(train_set)} images, fewer than one global batch of "
                        f"{global_batch}; lower --batch-size")
    sampler = RepeatedAugSampler(len(train_set), info, config.repeated_aug, shuffle=True, seed=config.seed)
    loader_args = {"num_workers": config.workers, "collate_fn": collate_skipping_none,
                   "pin_memory": torch.cuda.is_available(), "persistent_workers": False}
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True, **loader_args)
    val_loader = DataLoader(val_set, batch_size=config.batch_size, sampler=ShardSampler(len(val_set), info),
                            **loader_args)
    return train_set, val_set, classes, train_loader, val_loader


def build_model(config: TrainConfig, num_classes: int) -> CoaT:
    model = create_model(config.model, pretrained=config.pretrained, num_classes=num_classes,
                         drop_path_rate=config.drop_path or 0.0, input_size=config.input_size,
                         crop_pct=config.crop_pct, mean=tuple(config.mean), std=tuple(config.std))
    model.set_grad_checkpointing(config.grad_checkpointing)
    return model


# ---------------------------------------------------------------------------- the run
def fit(config: TrainConfig) -> dict[str, Any]:
    """Train ``config`` to the end (or resume it) and return the summary written to summary.json."""
    device = pick_device(config.device, _local_rank())
    info = init_distributed(device)
    output = prepare_output(config, info)
    resume_path = _resume_path(config, output)
    random.seed(config.seed + info.rank)
    torch.manual_seed(config.seed + info.rank)

    _, val_set, classes, train_loader, val_loader = build_data(config, info)
    model = build_model(config, len(classes)).to(device)
    peak_lr = config.lr if config.lr is not None else config.base_lr * config.batch_size * info.world_size / 512
    optimizer = build_optimizer(model, peak_lr, config.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = warmup_cosine(optimizer, peak_lr, config.warmup_lr, config.min_lr,
                              int(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
           if config.ema_decay > 0 else None)
    use_scaler = config.amp and device.type == "cuda" and amp_dtype(device, config) == torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    log = RunLog(output, info.is_main)
    start_epoch, best_top1, seconds_training, images_trained = 0, -1.0, 0.0, 0

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
        start_epoch, best_top1 = state["epoch"], state["best_top1"]
        seconds_training, images_trained = state["seconds_training"], state["images_trained"]
        log.restore(state["history"])
        restore_rng(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
        if info.is_main:
            tqdm.write(f"resumed {resume_path} after epoch {start_epoch}")
    elif info.is_main:
        (output / "config.yaml").write_text(to_yaml(config))

    train_model: nn.Module = DistributedDataParallel(model) if info.enabled else model
    if config.compile:
        train_model = torch.compile(train_model)
    mixing = batch_mixing(config.mixup, config.cutmix, len(classes))
    autocast = autocast_context(device, config)
    if info.is_main:
        source = EMBEDDED_NAME if config.data is None else config.data
        tqdm.write(f"training {config.model} ({config.recipe} recipe) on {source}: {len(train_loader.dataset)} train / "
                   f"{len(val_set)} val images, {len(classes)} classes, {info.world_size} process(es) on {device}, "
                   f"global batch {config.batch_size * info.world_size}, peak lr {peak_lr:.2e}")

    for epoch in range(start_epoch, config.epochs):
        train_loader.sampler.set_epoch(epoch)
        model.train()
        loss_sum, seen, skipped = torch.zeros((), device=device, dtype=torch.float64), 0, 0
        started = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not info.is_main,
                   dynamic_ncols=True)
        for step, (images, targets, n_skipped) in enumerate(bar):
            skipped += n_skipped
            if not len(targets):
                continue
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if mixing is not None:
                images, targets = mixing(images, targets)
            loss = train_step(train_model, images, targets, optimizer, config.label_smoothing, autocast, scaler,
                              config.clip_grad)
            if not torch.isfinite(loss):
                kept = f"the last good checkpoint is {output / 'last.pt'}" if (output / "last.pt").exists() \
                    else "no checkpoint was written yet"
                raise TrainingError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopped, "
                                    f"{kept}; lower --lr or set --clip-grad")
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.double() * len(targets)
            seen += len(targets)
            if step % config.log_interval == 0 or step == steps_per_epoch - 1:
                lr = optimizer.param_groups[0]["lr"]
                rate = seen * info.world_size / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                log.step(epoch * steps_per_epoch + step, loss.item(), lr)
        epoch_seconds = time.perf_counter() - started
        bar.close()
        train_totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), device=device,
                                                                          dtype=torch.float64)]), info)
        seconds_training += epoch_seconds
        images_trained += int(train_totals[1].item())

        result = evaluate(model, val_loader, device, len(classes), info, autocast)
        record = {"epoch": epoch + 1, "train_loss": train_totals[0].item() / max(1.0, train_totals[1].item()),
                  "val_loss": result.loss, "val_top1": result.top1, "val_top5": result.top5,
                  "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": epoch_seconds,
                  "images_per_second": train_totals[1].item() / epoch_seconds}
        candidates = [(result.top1, model)]
        if ema is not None:
            ema_result = evaluate(ema.module, val_loader, device, len(classes), info, autocast)
            record.update(val_ema_loss=ema_result.loss, val_ema_top1=ema_result.top1, val_ema_top5=ema_result.top5)
            candidates.append((ema_result.top1, ema.module))
        if skipped or result.skipped:
            record["skipped_images"] = skipped + result.skipped
        log.epoch(record)
        epoch_best, best_model = max(candidates, key=lambda c: c[0])
        improved = epoch_best > best_top1
        best_top1 = max(best_top1, epoch_best)
        if info.is_main:
            if improved:
                save_checkpoint(best_model, output / "best.safetensors", variant=config.model,
                                metadata={"class_names": json.dumps(classes), "epoch": str(epoch + 1),
                                          "top1": f"{epoch_best:.4f}"})
            save_training_state(output / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch + 1, "best_top1": best_top1, "history": log.history, "model_name": config.model,
                "class_names": classes, "seconds_training": seconds_training, "images_trained": images_trained,
                "rng": _gather_rng(info),
            })
            ema_text = f"  ema_top1 {record['val_ema_top1']:6.2f}" if ema is not None else ""
            tqdm.write(f"epoch {epoch + 1:>3}/{config.epochs}  train_loss {record['train_loss']:.4f}  "
                       f"val_loss {result.loss:.4f}  val_top1 {result.top1:6.2f}  val_top5 {result.top5:6.2f}{ema_text}"
                       f"  lr {record['lr']:.2e}  {record['images_per_second']:.0f} img/s  {epoch_seconds:.1f}s"
                       + ("  (best)" if improved else ""))
        else:
            _gather_rng(info)
        barrier(info)

    final = log.history[-1] if log.history else {}
    summary = {
        "model": config.model, "recipe": config.recipe, "data": config.data or EMBEDDED_NAME,
        "epochs": config.epochs, "best_top1": best_top1, "final_top1": final.get("val_top1"),
        "final_top5": final.get("val_top5"), "final_ema_top1": final.get("val_ema_top1"),
        "images_per_second": images_trained / seconds_training if seconds_training else None,
        "training_seconds": seconds_training, "world_size": info.world_size, "device": str(device),
        "checkpoint": str(output / "best.safetensors"), "last_checkpoint": str(output / "last.pt"),
        "plots": str(output / "plots"), "metrics": str(output / "metrics.jsonl"),
    }
    if info.is_main:
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.close()
    return summary


def _gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    """Every process's RNG state (rank order), so a resumed multi-process run replays exactly."""
    state = rng_state()
    if not info.enabled:
        return [state]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def _resume_path(config: TrainConfig, output: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        last = output / "last.pt"
        return last if last.exists() else None  # a first start under torchrun's elastic restarts
    return Path(config.resume)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
