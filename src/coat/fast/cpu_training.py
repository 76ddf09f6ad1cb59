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

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..models.layers import ConvRelPosEnc, Grid, nchw_to_tokens, resize_image_tokens, tokens_to_nchw
from .grouped_conv import GroupedDepthwiseConv
from .tiled_mlp import TILE_HIDDEN_ELEMENTS, NormMlpFunction, tile_rows
from .trunk import ValueEncoder, factorized_attention, run_trunk

# The MLP recomputes only where its hidden activations fill at least 4 tiles (8 MiB): below that the memory
# saved is small and the recomputation costs time (coat_lite_tiny, batch 64 at 32x32, median step: 470 ms
# with this threshold, 505 ms when every MLP recomputed).
RECOMPUTE_MIN_HIDDEN_ELEMENTS = 4 * TILE_HIDDEN_ELEMENTS

# Below 16x16 stage-1 tokens per image the path's copies cost more than they save (coat_lite_tiny training
# step, fused AdamW, Xeon VM: 32x32 at batch 128 0.88-0.96x of the reference, 64x64 at batch 64 1.04x,
# 96x96 1.07x, 224x224 at batch 16 1.51x; BENCHMARKS.md "The demo").
MIN_STAGE1_TOKENS = 256


def applies(model: nn.Module, x: torch.Tensor) -> bool:
    """CPU float32 with autograd on (no autocast), the released co-scale mode, inputs of 16x16+ stage-1 tokens."""
    patch = model.config.patch_sizes[0]
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and model.config.coscale == "interpolate"
        and (x.shape[-2] // patch) * (x.shape[-1] // patch) >= MIN_STAGE1_TOKENS
    )


def tokens(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[Grid]]:
    """``forward_tokens`` of ``model`` for ``x``."""

    def parallel_block(block: nn.Module, *args: object) -> list[torch.Tensor]:
        return _checkpointed(model.grad_checkpointing, _parallel_block, block, *args)

    return run_trunk(model, x, _stage, parallel_block)


def _checkpointed(enabled: bool, fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)``, recomputing its activations in backward when checkpointing is on."""
    return checkpoint(fn, *args, use_reentrant=False) if enabled else fn(*args)


def _stage(stage: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, Grid]:
    x, grid = stage.embed(images)  # [B, 1+H*W, C]
    encode_values = _grouped_crpe(stage.crpe)
    for block in stage.blocks:
        x = _checkpointed(stage.grad_checkpointing, _serial_block, block, x, grid, encode_values)
    return x, grid


def _serial_block(block: nn.Module, x: torch.Tensor, grid: Grid, encode_values: ValueEncoder) -> torch.Tensor:
    x = block.cpe(x, grid)
    x = x + block.drop_path(factorized_attention(block.attn, block.norm1(x), grid, encode_values, False))
    return x + block.drop_path(_mlp_branch(x, block.norm2, block.mlp))


def _parallel_block(block: nn.Module, xs: list[torch.Tensor], grids: Sequence[Grid]) -> list[torch.Tensor]:
    xs = [cpe(x, grid) for cpe, x, grid in zip(block.cpes, xs, grids)]
    outs = [factorized_attention(attn, norm(x), grid, _grouped_crpe(attn.crpe), False)
            for attn, norm, x, grid in zip(block.attns, block.norms1, xs, grids)]
    mixed = _mix_by_interpolation(outs, grids)
    xs = [x + block.drop_path(m) for x, m in zip(xs, mixed)]
    return [x + block.drop_path(_mlp_branch(x, norm, block.mlp)) for norm, x in zip(block.norms2, xs)]


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
    branch = NormMlpFunction.apply(rows, norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight,
                                   mlp.fc2.bias, norm.eps, tile_rows(mlp.fc1.out_features))
    return branch.view_as(x)


def _mix_by_interpolation(outs: list[torch.Tensor], grids: Sequence[Grid]) -> list[torch.Tensor]:
    """``models.blocks.interpolation_mix`` with resizes that receive a contiguous gradient in backward."""
    cls_sum = sum(out[:, :1] for out in outs)  # [B, 1, C]
    mixed = []
    for i, (out, grid) in enumerate(zip(outs, grids)):
        others = [_resize_with_contiguous_gradient(other, grids[j], grid) for j, other in enumerate(outs) if j != i]
        mixed.append(torch.cat((cls_sum, sum(others, out[:, 1:])), dim=1))  # [B, 1+H_i*W_i, C]
    return mixed


def _resize_with_contiguous_gradient(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """``resize_image_tokens`` whose backward receives a contiguous gradient (a channels-last image gradient)."""
    resized = resize_image_tokens(x, grid, target)  # [B, h*w, C]
    if resized.requires_grad:
        resized.register_hook(torch.Tensor.contiguous)
    return resized
