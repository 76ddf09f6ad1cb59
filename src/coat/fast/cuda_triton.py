"""CUDA: the reference modules, except factorized attention, whose context and read (with CRPE's product and
the heads merged into channels) are the Triton kernels of ``triton_attention``; CRPE's depthwise convs stay
cuDNN's.

Opt-in (``coat.fast.only("cuda_triton")``) until ``benchmarks/gpu.py`` measures it against the reference
on a GPU: no GPU has run it yet. On CPU it runs under ``TRITON_INTERPRET=1`` only (the tests call
``tokens`` directly).
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.blocks import interpolation_mix
from ..models.layers import FactorizedAttention, Grid
from .trunk import run_trunk


def applies(model: nn.Module, x: torch.Tensor) -> bool:
    """CUDA tensors, the released co-scale mode, no activation checkpointing."""
    return x.device.type == "cuda" and model.config.coscale == "interpolate" and not model.grad_checkpointing


def tokens(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[Grid]]:
    """``forward_tokens`` of ``model`` for ``x``."""
    from .triton_attention import factorized_context, factorized_read  # imports Triton only when the path runs

    def attention(attn: FactorizedAttention, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        q, k, v = attn.project(x)  # [B, h, N, d] views of one projection
        encoded = attn.crpe.encode_values(v, grid)  # [B, h, H*W, d]
        return attn.proj(factorized_read(q, factorized_context(k, v), encoded, attn.scale))  # [B, N, C]

    def stage(stage: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        x, grid = stage.embed(images)  # [B, 1+H*W, C]
        for block in stage.blocks:  # SerialBlock.forward
            x = block.cpe(x, grid)
            x = x + block.drop_path(attention(block.attn, block.norm1(x), grid))
            x = x + block.drop_path(block.mlp(block.norm2(x)))
        return x, grid

    def parallel_block(block: nn.Module, xs: list[torch.Tensor], grids: list[Grid]) -> list[torch.Tensor]:
        xs = [cpe(x, grid) for cpe, x, grid in zip(block.cpes, xs, grids)]  # ParallelBlock.forward
        outs = [attention(attn, norm(x), grid) for attn, norm, x, grid in zip(block.attns, block.norms1, xs, grids)]
        xs = [x + block.drop_path(m) for x, m in zip(xs, interpolation_mix(outs, grids))]
        return [x + block.drop_path(block.mlp(norm(x))) for norm, x in zip(block.norms2, xs)]

    return run_trunk(model, x, stage, parallel_block)
