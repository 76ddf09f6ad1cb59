"""The eager CPU inference paths inside ``torch.compile``: one registered operator whose inputs are the trunk's weights.

On CPU the eager fast paths beat the code Inductor generates for the blocks (BENCHMARKS.md: ``cpu_inference`` in
float32; ``cpu_bf16`` in bf16, where a compiled bf16 model ran at 0.68-0.82x our eager path), and an operator,
unlike a graph break, also works with ``fullgraph=True``. The model's state travels as the operator's tensor inputs;
the operator runs the named eager path on a weightless copy of the architecture (one per configuration and thread,
on the meta device) with those tensors swapped in.
"""

from __future__ import annotations

import json
import threading

import torch
from torch import nn

from . import cpu_bf16, cpu_inference
from .path import FastPath

# the eager paths the operator runs, by name
EAGER_PATHS: dict[str, FastPath] = {path.name: path for path in (cpu_inference.PATH, cpu_bf16.PATH)}
OPERATOR = "coat::cpu_eager_tokens"

_skeletons = threading.local()


class _EagerTokens(nn.Module):
    """``path.tokens`` of the wrapped model, as a module for ``torch.func.functional_call``."""

    def __init__(self, model: nn.Module, path: FastPath) -> None:
        super().__init__()
        self.model, self.path = model, path

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.path.tokens(self.model, x)[0]


def _trunk_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The stages' and parallel blocks' parameters, named as in ``_EagerTokens``."""
    return {
        f"model.{name}": p for name, p in model.named_parameters() if name.startswith(("stages.", "parallel_blocks."))
    }


def _skeleton(config_json: str, path_name: str) -> tuple[_EagerTokens, list[str]]:
    """The weightless architecture for ``config_json`` on the eager path ``path_name``, and the names its trunk
    parameters take."""
    cache = _skeletons.__dict__.setdefault("by_config", {})
    key = (config_json, path_name)
    if key not in cache:
        from ..models.coat import CoaT
        from ..models.config import CoaTConfig

        with torch.device("meta"):
            model = CoaT(CoaTConfig.from_dict(json.loads(config_json))).eval()
        skeleton = _EagerTokens(model, EAGER_PATHS[path_name])
        cache[key] = skeleton, list(_trunk_parameters(skeleton.model))
    return cache[key]


@torch.library.custom_op(OPERATOR, mutates_args=())
def _tokens_op(x: torch.Tensor, weights: list[torch.Tensor], path_name: str, config_json: str) -> list[torch.Tensor]:
    """The four scales' tokens ``[B, 1+H_s*W_s, C_s]`` of the eager path ``path_name``."""
    skeleton, names = _skeleton(config_json, path_name)
    return torch.func.functional_call(skeleton, dict(zip(names, weights)), (x,))


@_tokens_op.register_fake
def _tokens_shapes(
    x: torch.Tensor, weights: list[torch.Tensor], path_name: str, config_json: str
) -> list[torch.Tensor]:
    config = json.loads(config_json)
    grids = _grids(config["patch_sizes"], *x.shape[2:])
    return [x.new_empty(x.shape[0], 1 + h * w, dim) for (h, w), dim in zip(grids, config["embed_dims"])]


def _grids(patch_sizes: list[int], height: int, width: int) -> list[tuple[int, int]]:
    """Each stage's token grid for an image of ``height`` x ``width`` (floor division per stage, as the patch
    convolutions do)."""
    grids = []
    for patch in patch_sizes:
        height, width = height // patch, width // patch
        grids.append((height, width))
    return grids


@torch.compiler.assume_constant_result
def _config_json(model: nn.Module) -> str:
    """The architecture as the operator's key (computed once while tracing)."""
    return json.dumps(model.config.to_dict(), sort_keys=True)


def eager_tokens(path: FastPath, model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """``path.tokens`` (an eager path of ``EAGER_PATHS``) through the operator (what ``torch.compile`` records)."""
    weights = list(_trunk_parameters(model).values())
    out = _tokens_op(x, weights, path.name, _config_json(model))
    return list(out), _grids(model.config.patch_sizes, *x.shape[2:])
