"""Semantic segmentation on CoaT: UperNet (transformers) on the CoaT backbone. Needs the ``hf`` extra."""

from .upernet import upernet_coat

__all__ = ["upernet_coat"]
