"""CoaT configuration: one dataclass and the released variants (the paper's Table 1, the authors' release)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

COSCALE_MODES = ("interpolate", "attention")


@dataclass(frozen=True)
class CoaTConfig:
    """Everything that determines a CoaT model's architecture (preprocessing travels with the weights:
    ``coat.weights``, ``CoaT.preprocessing``).

    ``parallel_depth == 0`` gives CoaT-Lite (serial blocks only, head on scale 4's CLS token);
    otherwise the co-scale parallel blocks run on scales 2-4 and the head mixes their CLS tokens.
    """

    embed_dims: tuple[int, int, int, int] = (64, 128, 256, 320)
    serial_depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    parallel_depth: int = 0
    mlp_ratios: tuple[float, float, float, float] = (8, 8, 4, 4)
    num_heads: int = 8
    patch_sizes: tuple[int, int, int, int] = (4, 2, 2, 2)
    in_chans: int = 3
    num_classes: int = 1000
    qkv_bias: bool = True
    # CRPE: depthwise window size -> number of heads using it, in channel order.
    crpe_windows: dict[int, int] = field(default_factory=lambda: {3: 2, 5: 3, 7: 3})
    drop_path_rate: float = 0.0
    coscale: str = "interpolate"

    def __post_init__(self) -> None:
        if self.coscale not in COSCALE_MODES:
            raise UsageError(f"coscale must be one of {COSCALE_MODES}, got {self.coscale!r}")
        if sum(self.crpe_windows.values()) != self.num_heads:
            raise UsageError(
                f"crpe_windows {self.crpe_windows} assigns {sum(self.crpe_windows.values())} heads "
                f"but num_heads is {self.num_heads}; make the head counts add up"
            )
        for dim in self.embed_dims:
            if dim % self.num_heads:
                raise UsageError(f"embed dim {dim} is not divisible by num_heads={self.num_heads}")
        if self.parallel_depth and len(set(self.embed_dims[1:])) != 1:
            raise UsageError(
                "parallel blocks share one MLP across scales 2-4, so embed_dims[1:] must be equal, "
                f"got {self.embed_dims[1:]}"
            )

    @property
    def is_lite(self) -> bool:
        return self.parallel_depth == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (dict keys become strings)."""
        data = dataclasses.asdict(self)
        data["crpe_windows"] = {str(k): v for k, v in self.crpe_windows.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoaTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown CoaTConfig fields {unknown}; known fields: {sorted(known)}")
        values = dict(data)
        if "crpe_windows" in values:
            values["crpe_windows"] = {int(k): int(v) for k, v in values["crpe_windows"].items()}
        for name in ("embed_dims", "serial_depths", "mlp_ratios", "patch_sizes"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclass(frozen=True)
class VariantInfo:
    """A released variant: its config and the facts the paper reports for it (at ``input_size``)."""

    config: CoaTConfig
    params_m: float
    gmacs: float
    top1: float
    input_size: int = 224


def _lite(dims: tuple, depths: tuple, ratios: tuple = (8, 8, 4, 4), **kw: Any) -> CoaTConfig:
    return CoaTConfig(embed_dims=dims, serial_depths=depths, mlp_ratios=ratios, **kw)


def _coat(dims: tuple) -> CoaTConfig:
    return CoaTConfig(embed_dims=dims, serial_depths=(2, 2, 2, 2), parallel_depth=6, mlp_ratios=(4, 4, 4, 4))


_MEDIUM = ((128, 256, 320, 512), (3, 6, 10, 8), (4, 4, 4, 4))

VARIANTS: dict[str, VariantInfo] = {
    "coat_lite_tiny": VariantInfo(_lite((64, 128, 256, 320), (2, 2, 2, 2)), 5.72, 1.60, 77.5),
    "coat_lite_mini": VariantInfo(_lite((64, 128, 320, 512), (2, 2, 2, 2)), 11.01, 2.00, 79.1),
    "coat_lite_small": VariantInfo(_lite((64, 128, 320, 512), (3, 4, 6, 3)), 19.84, 3.96, 81.9),
    "coat_lite_medium": VariantInfo(_lite(*_MEDIUM), 44.57, 9.81, 83.6),
    "coat_lite_medium_384": VariantInfo(_lite(*_MEDIUM), 44.57, 28.73, 84.5, input_size=384),
    "coat_tiny": VariantInfo(_coat((152, 152, 152, 152)), 5.50, 4.35, 78.3),
    "coat_mini": VariantInfo(_coat((152, 216, 216, 216)), 10.34, 6.82, 81.0),
    "coat_small": VariantInfo(_coat((152, 320, 320, 320)), 21.69, 12.61, 82.1),
}
