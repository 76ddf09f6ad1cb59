"""A fast path as data: its kernels, the calls it serves, and the architectures it was written for."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..models.config import CoaTConfig
from ..models.layers import Grid
from .kernels import Kernels
from .trunk import run_trunk

Tokens = tuple[list[torch.Tensor], list[Grid]]
ANY_VALUE = None  # in ``FastPath.config``: the path runs every value of that field


@dataclass(frozen=True)
class Condition:
    """Something a call must have for a path to run it: ``holds(model, x)``, described as ``what`` ("eval mode")."""

    what: str
    holds: Callable[[nn.Module, torch.Tensor], bool]


def _detect_native_bf16() -> bool:
    has = [getattr(torch.cpu, f"_is_{unit}_supported", lambda: False)() for unit in ("amx_tile", "avx512_bf16")]
    return any(has)


# read once: the seam also asks while torch.compile traces it, which may not call torch.cpu's probes
_NATIVE_BF16 = _detect_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AMX tiles (Xeons since Sapphire Rapids) or AVX-512 BF16 dot
    products (AMD EPYC since Zen 4, Xeons since Cooper Lake). Elsewhere oneDNN emulates bf16 (0.09-0.11x float32
    on an AVX2 CPU, BENCHMARKS.md)."""
    return _NATIVE_BF16


# The conditions of the eager CPU paths (their kernels are measured in float32 without autocast).
ON_CPU = Condition("a CPU tensor", lambda model, x: x.device.type == "cpu")
FLOAT32 = Condition("float32 inputs", lambda model, x: x.dtype == torch.float32)
NO_CPU_AUTOCAST = Condition("no CPU autocast", lambda model, x: not torch.is_autocast_enabled("cpu"))
AUTOGRAD_ON = Condition("autograd on", lambda model, x: torch.is_grad_enabled())
AUTOGRAD_OFF = Condition("autograd off (torch.no_grad or inference_mode)", lambda model, x: not torch.is_grad_enabled())
EVAL_MODE = Condition("eval mode", lambda model, x: not model.training)
NATIVE_BF16 = Condition(
    "a CPU with AMX or AVX-512 BF16 (where it was measured)", lambda model, x: cpu_has_native_bf16()
)


@dataclass(frozen=True)
class FastPath:
    """A faster implementation of ``CoaT.forward_tokens``.

    ``conditions`` say which calls it serves (device, dtype, modes); ``config`` names every ``CoaTConfig``
    field with the values it runs (``ANY_VALUE``: all). A field it does not name, or a value outside its
    list, sends the call to the reference, so a new architecture option never runs on kernels not written
    for it. ``measured``: used by default only where a benchmark showed it pays; unmeasured paths run
    only inside ``coat.fast.only(name)``.
    """

    name: str
    kernels: Kernels
    conditions: tuple[Condition, ...]
    config: Mapping[str, tuple | None]
    measured: bool = True

    def why_not(self, model: nn.Module, x: torch.Tensor) -> str | None:
        """Why this path cannot run ``model(x)`` (the first unmet need), or None where it can."""
        unmet = next((condition.what for condition in self.conditions if not condition.holds(model, x)), None)
        return f"needs {unmet}" if unmet else self.unsupported_config(model.config)

    def unsupported_config(self, config: CoaTConfig) -> str | None:
        """The first field of ``config`` this path does not run, described; None if it runs them all."""
        for field in dataclasses.fields(config):
            if field.name not in self.config:
                return f"was not written for CoaTConfig.{field.name}"
            values = self.config[field.name]
            if values is not ANY_VALUE and getattr(config, field.name) not in values:
                return f"runs {field.name} in {values} only, not {getattr(config, field.name)!r}"
        return None

    def tokens(self, model: nn.Module, x: torch.Tensor) -> Tokens:
        """``forward_tokens`` of ``model`` for ``x`` on this path's kernels."""
        return run_trunk(model, x, self.kernels)


# The fields whose every value the kernels run: they set sizes (widths, depths, heads, windows, classes)
# that the kernels read from the modules. Named one by one: a new field is in no path's list until added.
SIZE_FIELDS: dict[str, tuple | None] = dict.fromkeys(
    (
        "embed_dims",
        "serial_depths",
        "parallel_depth",
        "mlp_ratios",
        "num_heads",
        "patch_sizes",
        "in_chans",
        "num_classes",
        "qkv_bias",
        "crpe_windows",
        "drop_path_rate",
    ),
    ANY_VALUE,
)
