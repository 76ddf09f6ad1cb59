"""Figures written as PNG files (matplotlib, the ``plots`` extra): the confusion matrix of an evaluation."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from .extras import pyplot
from .files import atomic_write

LABELLED_CLASSES_MAX = 40  # above this many classes the axes carry no names
COUNTED_CLASSES_MAX = 20  # above this many classes the cells carry no counts


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """The confusion matrix ``[true, predicted]`` as row-normalised rates (counts written in the cells of small
    matrices), to ``path``."""
    plt = pyplot()
    n = len(class_names)
    side = min(2 + 0.5 * n, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= LABELLED_CLASSES_MAX:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
    if n <= COUNTED_CLASSES_MAX:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(
                        j,
                        i,
                        int(confusion[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    atomic_write(path, partial(fig.savefig, dpi=100, format="png"))
    plt.close(fig)
    return path
