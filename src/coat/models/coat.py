"""The CoaT / CoaT-Lite model: four stages built in a loop, optional co-scale parallel blocks."""

# Annotations here are evaluated (no ``from __future__ import annotations``): FX copies ``forward``'s
# into the code it generates, which TorchScript then has to resolve.
import dataclasses
import itertools
import operator
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import fast
from ..data.preprocessing import Preprocessing
from .blocks import LN_EPS, ParallelBlock, Stage
from .config import CoaTConfig
from .layers import Grid, tokens_to_nchw
from .shared import save_shared_once

MIN_INPUT_SIZE = 32  # patch strides 4*2*2*2: scale 4 needs at least one token per side
FIRST_CONV = "stages.0.patch_embed.proj"  # the module that reads the input channels


class CoaT(nn.Module):
    """Co-Scale Conv-Attentional Image Transformer (Xu et al., ICCV 2021).

    ``forward(x)`` maps images ``[B, 3, H, W]`` (any H, W >= 32) to logits ``[B, num_classes]``.
    """

    # TorchScript skips these properties (it reads this list itself: no ClassVar tuple)
    __jit_unused_properties__ = ["num_classes", "head_hidden_size", "pretrained_cfg", "default_cfg"]  # noqa: RUF012

    def __init__(self, config: CoaTConfig) -> None:
        super().__init__()
        self.config = config
        self.preprocessing = Preprocessing()  # what the weights expect; set by create_model / load_model
        dims = config.embed_dims
        in_dims = (config.in_chans, *dims[:-1])
        self.stages = nn.ModuleList(
            Stage(
                in_dims[i],
                dims[i],
                config.patch_sizes[i],
                config.serial_depths[i],
                config.num_heads,
                config.mlp_ratios[i],
                config.qkv_bias,
                config.crpe_windows,
                config.drop_path_rate,
            )
            for i in range(4)
        )
        reductions = list(itertools.accumulate(config.patch_sizes, operator.mul))  # 4, 8, 16, 32
        # where each scale's output comes from: its stage, or for CoaT's scales 2-4 the last parallel block
        last = "stages.{}" if config.is_lite else f"parallel_blocks.{config.parallel_depth - 1}"
        self.feature_info = [
            {"num_chs": dims[i], "reduction": reductions[i], "module": f"stages.{i}" if i == 0 else last.format(i)}
            for i in range(4)
        ]
        self.parallel_blocks = nn.ModuleList(
            ParallelBlock(
                dims[1],
                config.num_heads,
                config.mlp_ratios[1],
                config.qkv_bias,
                config.drop_path_rate,
                config.coscale,
                [stage.cpe for stage in self.stages[1:]],
                [stage.crpe for stage in self.stages[1:]],
            )
            for _ in range(config.parallel_depth)
        )
        self.grad_checkpointing = False
        # Lite classifies from scale 4's CLS token; CoaT mixes the CLS tokens of scales 2-4.
        head_scales = 1 if config.is_lite else 3
        self.head_norms = nn.ModuleList(nn.LayerNorm(dims[-1], eps=LN_EPS) for _ in range(head_scales))
        self.aggregate = None if config.is_lite else nn.Conv1d(3, 1, kernel_size=1)
        self.num_features = dims[-1]
        self.head = self._make_head(config.num_classes)
        save_shared_once(self)  # each scale's CPE / CRPE under its stage's name only
        self.apply(init_weights)
        for stage in self.stages:
            nn.init.trunc_normal_(stage.cls_token, std=0.02)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ----------------------------------------------------------------- public API
    def forward_tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[Grid]]:
        """Final tokens ``[B, 1+H_s*W_s, C_s]`` of the four scales and their grids.

        The speed seam: ``coat.fast`` picks, once per call, the implementation of this whole
        computation (the reference modules below, or a faster one of the same math measured to pay
        on this device and mode).
        """
        if not torch.jit.is_scripting():  # TorchScript compiles the reference modules only
            _check_input(x, self.config.in_chans)
            return fast.choose(self, x).run(self, x)
        return self.reference_tokens(x)

    def reference_tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[Grid]]:
        """``forward_tokens`` through the reference modules: the four stages, then the parallel blocks."""
        tokens, grids = self._serial_stages(x, len(self.stages))
        if len(self.parallel_blocks) > 0:  # co-scale: scales 2-4 together, sharing each scale's CPE and CRPE
            scales = tokens[1:]
            for block in self.parallel_blocks:
                if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                    scales = checkpoint(block, scales, grids[1:], use_reentrant=False)  # recomputed in backward
                else:
                    scales = block(scales, grids[1:])
            tokens = tokens[:1] + scales
        return tokens, grids

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: ``(forward_features(x), maps)``, or ``maps`` alone with ``intermediates_only``.

        ``maps`` are the scales' feature maps ``[B, C_s, H/r, W/r]`` (r = 4, 8, 16, 32; CLS removed;
        ``output_fmt="NHWC"``: channels last) for ``indices``: all (None), the last n (an int), or those
        listed (negative counts from the end). ``norm`` applies the head's norm of a scale where it has
        one (scale 4 in CoaT-Lite, scales 2-4 in CoaT). ``stop_early`` runs only the stages needed
        (CoaT's parallel blocks need all four scales, so only a scale-1-only request stops there);
        the final features are then the last computed stage's tokens.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be NCHW or NHWC, got {output_fmt!r}")
        take = feature_indices(len(self.stages), indices)
        stop = max(take) + 1 if stop_early and (self.config.is_lite or max(take) == 0) else len(self.stages)
        if stop == len(self.stages):
            tokens, grids = self.forward_tokens(x)
        else:
            _check_input(x, self.config.in_chans)
            tokens, grids = self._serial_stages(x, stop)
        maps = []
        for i in take:
            scale_tokens = self._head_norm(i)(tokens[i]) if norm else tokens[i]
            feature = tokens_to_nchw(scale_tokens, grids[i])  # [B, C, H_s, W_s]
            maps.append(
                feature.permute(0, 2, 3, 1)
                if output_fmt == "NHWC"
                else feature.contiguous(memory_format=torch.channels_last)
            )
        if intermediates_only:
            return maps
        return (self.head_features(tokens) if stop == len(self.stages) and self.head_norms else tokens[-1]), maps

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Remove what the maps at ``indices`` do not need (timm's semantics); returns those indices.

        CoaT-Lite drops the stages after the last index; CoaT's parallel blocks need all four scales, so
        its stages 2-4 and parallel blocks go only when scale 1 alone is kept. ``prune_head`` removes the
        classifier (and CoaT's CLS aggregation), ``prune_norm`` the head's norms; both go with removed
        stages. Afterwards the model serves ``forward_intermediates`` of the kept indices.
        """
        take = feature_indices(len(self.stages), indices)
        if self.config.is_lite or max(take) == 0:
            del self.stages[max(take) + 1 :]
            if max(take) < 3:
                self.parallel_blocks = nn.ModuleList()
                self.feature_info = self.feature_info[: len(self.stages)]
        pruned_stages = len(self.stages) < 4
        if prune_norm or pruned_stages:
            self.head_norms = nn.ModuleList()
        if prune_head or pruned_stages:
            self.aggregate = None
            self.reset_classifier(0)
        return take

    def _serial_stages(self, x: torch.Tensor, count: int) -> tuple[list[torch.Tensor], list[Grid]]:
        """Tokens and grids of the first ``count`` serial stages (reference modules)."""
        tokens: list[torch.Tensor] = []
        grids: list[Grid] = []
        feature = x
        for i, stage in enumerate(self.stages):
            if i < count:
                out, grid = stage(feature)
                tokens.append(out)
                grids.append(grid)
                feature = tokens_to_nchw(out, grid)  # the next stage's input [B, C, H, W]
        return tokens, grids

    def _head_norm(self, scale: int) -> nn.Module:
        """The head's norm of ``scale`` (0-3), or identity where the head reads no token of that scale."""
        first_normed = len(self.stages) - len(self.head_norms)
        return self.head_norms[scale - first_normed] if scale >= first_normed else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized CLS tokens the head reads: ``[B, 1, C]`` (Lite) or ``[B, 3, C]`` (CoaT)."""
        return self.head_features(self.forward_tokens(x)[0])

    def head_features(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """``forward_features`` from the four scales' tokens (of ``forward_tokens``)."""
        first = len(tokens) - len(self.head_norms)  # the head reads the last len(head_norms) scales
        return torch.cat([norm(tokens[first + i][:, :1]) for i, norm in enumerate(self.head_norms)], dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, S, C]`` from ``forward_features`` -> logits ``[B, num_classes]`` (or ``[B, C]``)."""
        pooled = features[:, 0] if self.aggregate is None else self.aggregate(features).squeeze(1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ----------------------------------------------------------------- timm's model contract
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def head_hidden_size(self) -> int:
        """Width of the features the classifier reads (``forward_head(..., pre_logits=True)``)."""
        return self.num_features

    @property
    def pretrained_cfg(self) -> dict:
        """timm's description of the weights: preprocessing, classes and the first conv / classifier names."""
        pre = self.preprocessing
        return {
            "architecture": getattr(self, "variant", None),
            "input_size": (self.config.in_chans, pre.input_size, pre.input_size),
            "crop_pct": pre.crop_pct,
            "interpolation": pre.interpolation,
            "crop_mode": pre.crop_mode,
            "mean": pre.mean,
            "std": pre.std,
            "num_classes": self.num_classes,
            "first_conv": FIRST_CONV,
            "classifier": "head",
        }

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.head

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """timm's layer groups (for layer-wise lr decay), input to output: stage 1's embedding, then each stage's
        embedding and blocks (one group per block, or per stage with ``coarse``), the parallel blocks, the head's
        norms and aggregation; the classifier (unmatched) comes last."""
        stage_parts = r"(?:cls_token|patch_embed|cpe|crpe)"
        blocks = (
            [(r"^stages\.(\d+)", None)]
            if coarse
            else [(rf"^stages\.(\d+)\.{stage_parts}", (-1,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]
        )
        return {
            "stem": rf"^stages\.0\.{stage_parts}",
            "blocks": blocks,
            "parallel_blocks": [(r"^parallel_blocks\.(\d+)", None), (r"^head_norms|^aggregate", (99999,))],
        }

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` (0 removes it)."""
        self.head = self._make_head(num_classes)
        self.head.apply(init_weights)
        self.config = dataclasses.replace(self.config, num_classes=num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations during backward (less memory, same gradients)."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names that get no weight decay beyond norms and biases: the CLS tokens."""
        return {f"stages.{i}.cls_token" for i in range(len(self.stages))}


def feature_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's index convention: None -> all, n -> the last n, a sequence -> those (negative from the end)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices={indices} asks for the last {indices} of {count} feature maps")
        return list(range(count - indices, count))
    chosen = [i % count if -count <= i < count else None for i in indices]
    if None in chosen:
        raise ValueError(f"indices {list(indices)} out of range for {count} feature maps")
    return sorted(set(chosen))


def _check_input(x: torch.Tensor, in_chans: int) -> None:
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing: no values to check
        return
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"CoaT expects images shaped [B, {in_chans}, H, W], got {shape}")
    if x.shape[1] != in_chans:
        raise ValueError(f"CoaT expects {in_chans} input channels, got {x.shape[1]}; convert the images to RGB")
    if not x.is_floating_point():
        raise ValueError(f"CoaT expects a floating-point tensor, got {x.dtype}; convert with x.float() / 255")
    if x.shape[2] < MIN_INPUT_SIZE or x.shape[3] < MIN_INPUT_SIZE:
        raise ValueError(
            f"input {x.shape[2]}x{x.shape[3]} is too small: CoaT needs at least "
            f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels; resize or pad the images"
        )


def init_weights(module: nn.Module) -> None:
    """CoaT's initialisation of a module: truncated-normal (0.02) linear weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def find_coat(module: nn.Module) -> tuple[str, CoaT]:
    """The CoaT inside ``module`` (a detector, a segmenter, ...) and its module name ("" for ``module`` itself)."""
    return next((name, inner) for name, inner in module.named_modules() if isinstance(inner, CoaT))
