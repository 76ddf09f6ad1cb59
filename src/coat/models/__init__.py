"""The reference model, as the paper states it, one class per concept.

- ``layers``: patch embedding, CPE, CRPE, factorized attention, the MLP (token layout ``[B, 1+H*W, C]``);
- ``blocks``: the serial block, the stage that owns a scale's blocks, the co-scale parallel block;
- ``coat``: ``CoaT``, four stages built in a loop, the optional parallel blocks and the head;
- ``config``: ``CoaTConfig`` and the released variants; ``features``: timm's ``features_only`` model;
- ``shared``: modules shared by several parents (a scale's CPE / CRPE) saved once.

Faster implementations of the same math live in ``coat.fast``.
"""

from .coat import CoaT
from .config import VARIANTS, CoaTConfig

__all__ = ["VARIANTS", "CoaT", "CoaTConfig"]
