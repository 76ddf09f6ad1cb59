"""Eager CPU float32 training: the reference math with three parts that cost less time or memory there.

Measured on 2-core AMD EPYC (AVX2) and Intel Xeon (AVX-512) VMs, training step and peak memory at batch 16
(BENCHMARKS.md):
- the MLP branch (norm, fc1, GELU, fc2) as one row-tiled autograd function that keeps only its input
  and recomputes the rest tile by tile in backward (peak memory 1.02x -> 0.51x of timm's on
  coat_lite_tiny), where a branch's hidden activations fill at least 8 MiB;
- CRPE's window groups as one autograd function of per-group depthwise convs on channels-last copies
  that it does not keep (oneDNN's backward of these is the costliest conv backward otherwise);
- the co-scale resizes hand their backward a contiguous gradient (the CPU upsample backward reads the
  strided slice of the mixed tokens' gradient about 7x slower).
Nothing is written in place into a tensor autograd or a caller holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.layers import ConvRelPosEnc, Grid, nchw_to_tokens, resize_image_tokens, tokens_to_nchw
from .grouped_conv import GroupedDepthwiseConv
from .kernels import Kernels, ScaleAttention, ValueEncoder, factorized_attention
from .path import FLOAT32, NO_CPU_AUTOCAST, ON_CPU, SIZE_FIELDS, Condition, FastPath
from .tiled_mlp import TILE_HIDDEN_ELEMENTS, NormMlpFunction, tile_rows

# The MLP recomputes only where its hidden activations fill at least 4 tiles (8 MiB): below that the memory
# saved is small and the recomputation costs time (coat_lite_tiny, batch 64 at 32x32, median step: 470 ms
# with this threshold, 505 ms when every MLP recomputed).
RECOMPUTE_MIN_HIDDEN_ELEMENTS = 4 * TILE_HIDDEN_ELEMENTS

# Below 16x16 stage-1 tokens per image the path's copies cost more than they save (coat_lite_tiny training
# step, fused AdamW, Xeon VM: 32x32 at batch 128 0.88-0.96x of the reference, 64x64 at batch 64 1.04x,
# 96x96 1.07x, 224x224 at batch 16 1.51x; BENCHMARKS.md "The demo").
MIN_STAGE1_TOKENS = 256


class TrainingKernels(Kernels):
    """A recomputing row-tiled MLP, CRPE as one autograd function, resizes with contiguous gradients."""

    def attention_for_scale(self, crpe: ConvRelPosEnc) -> ScaleAttention:
        encode_values = _grouped_crpe(crpe)
        return lambda attn, x, grid: factorized_attention(attn, x, grid, encode_values, False)

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


PATH = FastPath(
    "cpu_training",
    TrainingKernels(),
    conditions=(
        ON_CPU,
        FLOAT32,
        Condition("autograd on", lambda model, x: torch.is_grad_enabled()),
        NO_CPU_AUTOCAST,
        Condition(
            f"{MIN_STAGE1_TOKENS}+ stage-1 tokens per image (16x16 at stride 4: 64x64 pixels)", _enough_stage1_tokens
        ),
    ),
    config={**SIZE_FIELDS, "coscale": ("interpolate",)},
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
