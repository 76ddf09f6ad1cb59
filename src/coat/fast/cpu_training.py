"""Eager CPU float32 training: the reference math with parts that cost less time or memory there.

Measured on 2-core AMD EPYC (AVX2) and Intel Xeon (AVX-512) VMs (the last part on the AMD VM only), training
step and peak memory (BENCHMARKS.md):
- the MLP branch (norm, fc1, GELU, fc2) as one row-tiled autograd function that keeps only its input
  and recomputes the rest tile by tile in backward (peak memory 1.02x -> 0.51x of timm's on
  coat_lite_tiny), where a branch's hidden activations fill at least 8 MiB;
- CRPE's window groups as one autograd function of per-group depthwise convs on channels-last copies
  that it does not keep (oneDNN's backward of these is the costliest conv backward otherwise);
- the co-scale resizes hand their backward a contiguous gradient (the CPU upsample backward reads the
  strided slice of the mixed tokens' gradient about 7x slower);
- CPE's and CRPE's depthwise convolutions on grids narrower than their kernel as tap matrices
  (``small_grid_conv``; 64x64 at batch 64 on the AMD VM: 853 -> 767 ms a step).
Below 16x16 stage-1 tokens only the last part pays: ``SMALL_IMAGES_PATH`` (``cpu_training_small``) runs the
reference modules with it (coat_lite_tiny, 32x32, batch 128, AMD VM: 828 -> 570 ms a step; coat_tiny
1747 -> 1227 ms), in float32 and under CPU bf16 autocast (Zen 4 EPYC, whose oneDNN bf16 backward is slow also
for 5x5 and 7x7 windows on 4x4 and 8x8 grids: coat_lite_tiny 228 -> 185 ms, coat_tiny 720 -> 559 ms).
Nothing is written in place into a tensor autograd or a caller holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.layers import (
    ConvPosEnc,
    ConvRelPosEnc,
    Grid,
    add_to_image_tokens,
    nchw_to_tokens,
    resize_image_tokens,
    tokens_to_nchw,
)
from .grouped_conv import GroupedDepthwiseConv
from .kernels import (
    Kernels,
    ScaleAttention,
    ValueEncoder,
    factorized_attention,
    largest_window,
    merged_crpe,
    merged_crpe_weights,
)
from .path import AUTOGRAD_ON, FLOAT32, NO_CPU_AUTOCAST, ON_CPU, SIZE_FIELDS, Condition, FastPath
from .small_grid_conv import depthwise_conv_tokens, runs_as_tap_matrices
from .tiled_mlp import TILE_HIDDEN_ELEMENTS, NormMlpFunction, tile_rows

# The MLP recomputes only where its hidden activations fill at least 4 tiles (8 MiB): below that the memory
# saved is small and the recomputation costs time (coat_lite_tiny, batch 64 at 32x32, median step: 470 ms
# with this threshold, 505 ms when every MLP recomputed).
RECOMPUTE_MIN_HIDDEN_ELEMENTS = 4 * TILE_HIDDEN_ELEMENTS

# Below 16x16 stage-1 tokens per image the path's copies cost more than they save (coat_lite_tiny training
# step, fused AdamW, Xeon VM: 32x32 at batch 128 0.88-0.96x of the reference, 64x64 at batch 64 1.04x,
# 96x96 1.07x, 224x224 at batch 16 1.51x; BENCHMARKS.md "The demo").
MIN_STAGE1_TOKENS = 256


class SmallGridKernels(Kernels):
    """CPE's and CRPE's depthwise convolutions as tap matrices on grids narrower than their kernel
    (``small_grid_conv``); the reference modules otherwise."""

    def add_position(self, cpe: ConvPosEnc, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        conv = cpe.proj
        if not runs_as_tap_matrices(conv.kernel_size[0], grid):
            return cpe(x, grid)
        return add_to_image_tokens(x, depthwise_conv_tokens(x[:, 1:], conv.weight, conv.bias, grid))

    def attention_for_scale(self, crpe: ConvRelPosEnc) -> ScaleAttention:
        window = largest_window(crpe)
        on_larger_grids = self.values_on_larger_grids(crpe)

        def encode_values(v: torch.Tensor, grid: Grid) -> torch.Tensor:
            if not runs_as_tap_matrices(window, grid):
                return on_larger_grids(v, grid)
            weight, bias, _ = merged_crpe_weights(crpe)  # the windows zero-padded to the largest: [C, 1, k, k]
            return depthwise_conv_tokens(v[:, 1:], weight, bias, grid)

        return lambda attn, x, grid: factorized_attention(attn, x, grid, encode_values, False)

    def values_on_larger_grids(self, crpe: ConvRelPosEnc) -> ValueEncoder:
        """CRPE's convolutions where the grid is not narrower than the windows: one merged convolution."""
        return merged_crpe(crpe)


class TrainingKernels(SmallGridKernels):
    """A recomputing row-tiled MLP, CRPE as one autograd function, resizes with contiguous gradients."""

    def values_on_larger_grids(self, crpe: ConvRelPosEnc) -> ValueEncoder:
        return _grouped_crpe(crpe)

    def add_mlp(self, x: torch.Tensor, norm: nn.LayerNorm, mlp: nn.Module, drop_path: nn.Module) -> torch.Tensor:
        return x + drop_path(_mlp_branch(x, norm, mlp))

    def mix(self, outs: list[torch.Tensor], grids: Sequence[Grid]) -> list[torch.Tensor]:
        """``models.blocks.interpolation_mix`` with resizes that receive a contiguous gradient in backward."""
        cls_sum = sum(out[:, :1] for out in outs)  # [B, 1, C]
        mixed = []
        for i, (out, grid) in enumerate(zip(outs, grids)):
            others = [_resize_with_contiguous_gradient(other, grids[j], grid) for j, other in enumerate(outs) if j != i]
            mixed.append(torch.cat((cls_sum, sum(others, out[:, 1:])), dim=1))  # [B, 1+H_i*W_i, C]
        return mixed


def _enough_stage1_tokens(model: nn.Module, x: torch.Tensor) -> bool:
    patch = model.config.patch_sizes[0]
    return (x.shape[-2] // patch) * (x.shape[-1] // patch) >= MIN_STAGE1_TOKENS


_TRAINING = (ON_CPU, FLOAT32, AUTOGRAD_ON, NO_CPU_AUTOCAST)
_CONFIG = {**SIZE_FIELDS, "coscale": ("interpolate",)}

PATH = FastPath(
    "cpu_training",
    TrainingKernels(),
    conditions=(
        *_TRAINING,
        Condition(
            f"{MIN_STAGE1_TOKENS}+ stage-1 tokens per image (16x16 at stride 4: 64x64 pixels)", _enough_stage1_tokens
        ),
    ),
    config=_CONFIG,
)

SMALL_IMAGES_PATH = FastPath(
    "cpu_training_small",
    SmallGridKernels(),
    conditions=(
        ON_CPU,
        FLOAT32,
        AUTOGRAD_ON,  # float32 or under CPU bf16 autocast
        Condition(
            f"under {MIN_STAGE1_TOKENS} stage-1 tokens per image (under 64x64 pixels)",
            lambda model, x: not _enough_stage1_tokens(model, x),
        ),
    ),
    config=_CONFIG,
)


def _grouped_crpe(crpe: ConvRelPosEnc) -> ValueEncoder:
    weights_then_biases = [conv.weight for conv in crpe.convs] + [conv.bias for conv in crpe.convs]

    def encode_values(v: torch.Tensor, grid: Grid) -> torch.Tensor:
        return nchw_to_tokens(GroupedDepthwiseConv.apply(tokens_to_nchw(v, grid), *weights_then_biases))

    return encode_values


def _mlp_branch(x: torch.Tensor, norm: nn.LayerNorm, mlp: nn.Module) -> torch.Tensor:
    """``mlp(norm(x))``: as ``NormMlpFunction`` where the branch's hidden activations fill at least
    ``RECOMPUTE_MIN_HIDDEN_ELEMENTS``; below that the memory saved is small and recomputing costs time."""
    hidden_elements = x.numel() // x.shape[-1] * mlp.fc1.out_features
    if hidden_elements < RECOMPUTE_MIN_HIDDEN_ELEMENTS:
        return mlp(norm(x))
    rows = x.reshape(-1, x.shape[-1])  # [B*N, C]
    branch = NormMlpFunction.apply(
        rows,
        norm.weight,
        norm.bias,
        mlp.fc1.weight,
        mlp.fc1.bias,
        mlp.fc2.weight,
        mlp.fc2.bias,
        norm.eps,
        tile_rows(mlp.fc1.out_features),
    )
    return branch.view_as(x)


def _resize_with_contiguous_gradient(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """``resize_image_tokens`` whose backward receives a contiguous gradient (a channels-last image gradient)."""
    resized = resize_image_tokens(x, grid, target)  # [B, h*w, C]
    if resized.requires_grad:
        resized.register_hook(torch.Tensor.contiguous)
    return resized
