"""When a form of the weights made once (packed for oneDNN, CRPE's windows merged, a bf16 copy) must be made again.

A weight's version counter moves with every in-place change autograd sees, but fused optimizers
(``torch.optim.AdamW(fused=True)``, what ``coat train`` runs on the CPU) update weights in place without moving it
(torch 2.14), and so does anything written through ``.data``. So a form is kept only while the weights' ids and
versions and the count of optimizer steps taken in this process are unchanged: every optimizer step (a hook on all
optimizers) counts as a change of every weight. Tensors made under ``torch.inference_mode`` have no version counter:
their forms are made on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

_optimizer_steps = 0


def _count_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


def signature(tensors: Sequence[torch.Tensor]) -> tuple | None:
    """What a form of ``tensors`` was made from: the optimizer steps so far, each tensor's id and version; None for
    tensors without a version counter (made under ``torch.inference_mode``)."""
    if any(t.is_inference() for t in tensors):
        return None
    return (_optimizer_steps, *((id(t), t._version) for t in tensors))


class FormCache:
    """``form(key)`` of ``key``'s ``tensors(key)``, made again when their ``signature`` changed; keys held weakly."""

    def __init__(self, tensors: Callable[[Any], Sequence[torch.Tensor]], form: Callable[[Any], Any]) -> None:
        self.tensors, self.form = tensors, form
        self._forms = WeakIdKeyDictionary()  # key -> (signature, form)

    def __call__(self, key: Any) -> Any:
        made_from = signature(self.tensors(key))
        cached = self._forms.get(key)
        if made_from is None or cached is None or cached[0] != made_from:
            cached = (made_from, self.form(key))
            if made_from is not None:
                self._forms[key] = cached
        return cached[1]
