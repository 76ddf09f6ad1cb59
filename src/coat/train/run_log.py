"""What a training run shows and keeps: metrics.jsonl, TensorBoard, PNG plots (rank 0 only)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from ..extras import pyplot, require
from ..files import atomic_write


class RunLog:
    def __init__(self, output: Path, enabled: bool, panels: dict[str, list[str]]) -> None:
        """``panels``: one PNG per entry, plotting those record keys against the epoch."""
        self.output, self.enabled, self.panels = output, enabled, panels
        self.history: list[dict[str, Any]] = []
        self.writer = None
        if enabled:
            require("train")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output / "tensorboard"))

    def restore(self, history: list[dict[str, Any]]) -> None:
        self.history = list(history)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.writer:
            self.writer.add_scalar("train/loss_step", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        with (self.output / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
        self.writer.flush()
        self.plot()

    def plot(self) -> None:
        plots = self.output / "plots"
        plots.mkdir(exist_ok=True)
        epochs = [r["epoch"] for r in self.history]
        plt = pyplot()
        for name, keys in self.panels.items():
            fig, ax = plt.subplots(figsize=(6, 4))
            for key in keys:
                values = [r.get(key) for r in self.history]
                if any(v is not None for v in values):
                    ax.plot(epochs, values, marker="o", label=key)
            ax.set_xlabel("epoch")
            ax.set_ylabel({"loss": "loss", "lr": "learning rate"}.get(name, "percent"))
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            atomic_write(plots / f"{name}.png", partial(fig.savefig, dpi=100, format="png"))
            plt.close(fig)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
