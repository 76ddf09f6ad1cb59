"""Semantic segmentation on CoaT: UperNet (transformers, the ``hf`` extra) on the CoaT backbone, the data folders it
trains on, and CoaT as segmentation-models-pytorch encoders (``coat.segmentation.smp_encoders``, the ``smp`` extra).

``upernet_coat`` is imported on first use, so ``coat segment --help`` and the data tools work without the extras.
"""

from __future__ import annotations

from typing import Any

__all__ = ["upernet_coat"]


def __getattr__(name: str) -> Any:
    if name == "upernet_coat":
        from .upernet import upernet_coat

        return upernet_coat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
