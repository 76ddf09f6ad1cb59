"""Modules shared by several parents are saved once, under the first name that reaches them.

Each scale's CPE and CRPE belong to its stage and are used by every block of that scale, so each
block holds them as submodules (``stages.1.blocks.0.cpe`` is ``stages.1.cpe``, and so is
``parallel_blocks.0.cpes.0``). PyTorch's state dicts would list such a tensor once per name, and
safetensors refuses to save tensors that share memory; ``save_shared_once`` keeps one name each, as
``named_parameters`` does, and fills the other names from it when loading.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def save_shared_once(model: nn.Module) -> None:
    """Make ``model.state_dict()`` hold each shared tensor under its first name only, and
    ``model.load_state_dict`` load such a state dict (every name gets the value of the first)."""
    model.register_state_dict_post_hook(_drop_second_names)
    model.register_load_state_dict_pre_hook(_fill_second_names)


def second_names(model: nn.Module) -> dict[str, str]:
    """``{second name: first name}`` of every parameter or buffer reachable under more than one name."""
    first: dict[int, str] = {}
    seconds = {}
    for named in (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        for name, tensor in named:
            if id(tensor) in first:
                seconds[name] = first[id(tensor)]
            else:
                first[id(tensor)] = name
    return seconds


def _drop_second_names(model: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for name in second_names(model):
        state_dict.pop(prefix + name, None)


def _fill_second_names(model: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    for second, first in second_names(model).items():
        if prefix + first in state_dict and prefix + second not in state_dict:
            state_dict[prefix + second] = state_dict[prefix + first]
