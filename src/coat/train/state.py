"""``last.pt``: everything needed to resume a run exactly, as one dataclass, written atomically.

The file holds tensors and plain Python values only, so it is read back with
``torch.load(weights_only=True)``; model weights for use elsewhere go to ``best.safetensors`` in the
library's own format. ``save_training_state`` and ``load_training_state`` are the only writer and
reader; files written before the format had a version (the same keys) still load.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..files import atomic_write

STATE_FORMAT_VERSION = 2  # 1: the same keys without "format_version"


@dataclass
class Progress:
    """How far a run has come: what the loop carries from epoch to epoch (and across a resume)."""

    epoch: int = 0  # epochs completed
    best_score: float = float("-inf")  # the task's score of best.safetensors
    seconds_training: float = 0.0
    images_trained: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per epoch


@dataclass
class TrainingState:
    """The contents of ``last.pt`` after an epoch: the run's progress and every stateful object's state."""

    model_name: str
    progress: Progress
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    ema: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: list[dict[str, Any]]  # every rank's RNG states (rank order), so a resumed DDP run replays exactly

    def rng_of(self, rank: int) -> dict[str, Any]:
        """The RNG states ``rank`` saved (rank 0's for a rank the saved run did not have)."""
        return self.rng[rank] if rank < len(self.rng) else self.rng[0]


def save_training_state(path: Path, state: TrainingState) -> None:
    """Write ``state`` to ``path`` (temp + rename)."""
    flat = {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainingState) if f.name != "progress"}
    flat.update({f.name: getattr(state.progress, f.name) for f in dataclasses.fields(Progress)})
    flat["format_version"] = STATE_FORMAT_VERSION
    atomic_write(path, lambda tmp: torch.save(flat, tmp))


def load_training_state(path: Path) -> TrainingState:
    """Read a ``last.pt``, or raise ``CheckpointError`` naming the file and what to do."""
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist; pass --resume auto or the path of a last.pt")
    try:
        flat = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or pickled-code files all end here
        raise CheckpointError(
            f"cannot resume from {path}: not a readable training checkpoint "
            f"({type(err).__name__}); start a new run or point --resume at a last.pt"
        ) from None
    required = {"model", "optimizer", "scheduler", "epoch", "model_name", "rng"}
    if not isinstance(flat, dict) or not required <= flat.keys():
        raise CheckpointError(f"cannot resume from {path}: it is not a `coat train` checkpoint")
    if flat.get("format_version", 1) > STATE_FORMAT_VERSION:
        raise CheckpointError(
            f"cannot resume from {path}: it was written by a newer coat (format "
            f"{flat['format_version']}); upgrade coat-pytorch"
        )
    defaults = Progress()
    progress = Progress(**{f.name: flat.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(Progress)})
    return TrainingState(
        model_name=flat["model_name"],
        progress=progress,
        model=flat["model"],
        optimizer=flat["optimizer"],
        scheduler=flat["scheduler"],
        ema=flat.get("ema"),
        scaler=flat.get("scaler"),
        rng=flat["rng"],
    )


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, Python, and CUDA where present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
