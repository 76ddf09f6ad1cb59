"""Training checkpoints: everything needed to resume exactly, written atomically.

``last.pt`` holds tensors and plain Python values only, so it is read back with
``torch.load(weights_only=True)``; model weights for use elsewhere go to ``best.safetensors``
in the library's own format.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError
from ..files import atomic_write


def rng_state() -> dict[str, Any]:
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


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist; pass --resume auto or the path of a last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign or pickled-code files all end here
        raise CheckpointError(f"cannot resume from {path}: not a readable training checkpoint "
                              f"({type(err).__name__}); start a new run or point --resume at a last.pt") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"cannot resume from {path}: it is not a `coat train` checkpoint")
    return state
