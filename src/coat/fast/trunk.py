"""What the fast paths share: the trunk's order of work, and attention on ``[B, N, C]`` projections."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..models.layers import FactorizedAttention, Grid, tokens_to_nchw
from .grouped_conv import channels_last

# encode_values(v, grid): CRPE's depthwise convs of the values' image tokens, [B, N, C] -> [B, H*W, C]
ValueEncoder = Callable[[torch.Tensor, Grid], torch.Tensor]


def run_trunk(
    model: nn.Module,
    x: torch.Tensor,
    run_stage: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, Grid]],
    run_parallel_block: Callable[..., list[torch.Tensor]],
) -> tuple[list[torch.Tensor], list[Grid]]:
    """``CoaT.reference_tokens`` with each stage run by ``run_stage(stage, images)`` and each parallel block by
    ``run_parallel_block(block, scales, grids)``.

    The images enter channels-last: stage 1's patch convolution then writes its tokens as a view instead of
    an NCHW output that the norm has to copy (batch 16: 46 -> 14 ms); later stages read channels-last views.
    """
    tokens, grids = [], []
    feature = channels_last(x)
    for stage in model.stages:
        out, grid = run_stage(stage, feature)
        tokens.append(out)
        grids.append(grid)
        feature = tokens_to_nchw(out, grid)  # the next stage's input [B, C, H, W], a view
    if model.parallel_blocks:
        scales = tokens[1:]
        for block in model.parallel_blocks:
            scales = run_parallel_block(block, scales, grids[1:])
        tokens = tokens[:1] + list(scales)
    return tokens, grids


def factorized_attention(
    attn: FactorizedAttention, x: torch.Tensor, grid: Grid, encode_values: ValueEncoder, heads_as_slices: bool
) -> torch.Tensor:
    """``FactorizedAttention``'s math on the ``[B, N, C]`` projections: ``[B, N, C]`` -> ``[B, N, C]``.

    q, k and v stay strided views of one projection. With ``heads_as_slices`` each head's product reads
    its channel slice in place (BLAS takes strided views: no permuted copies; pays in inference on long
    sequences); otherwise batched einsums over ``[B, N, h, d]`` views. The attention scale multiplies the
    small context instead of the output, and CRPE is added into the output (made here) in place.
    """
    q, k, v = attn.qkv(x).chunk(3, dim=-1)  # [B, N, C] each
    weights = k.softmax(dim=1)  # over tokens
    if heads_as_slices:
        heads = _head_slices(x.shape[-1], attn.num_heads)
        context = torch.stack([weights[:, :, s].transpose(1, 2) @ v[:, :, s] for s in heads], dim=1)  # [B, h, d, d]
        context = context * attn.scale
        out = torch.cat([q[:, :, s] @ context[:, i] for i, s in enumerate(heads)], dim=-1)  # [B, N, C]
    else:
        context = torch.einsum("bnhk,bnhv->bhkv", _split_heads(weights, attn), _split_heads(v, attn)) * attn.scale
        out = torch.einsum("bnhk,bhkv->bnhv", _split_heads(q, attn), context).flatten(2)  # [B, N, C]
    out[:, 1:].addcmul_(q[:, 1:], encode_values(v, grid))  # CRPE on image tokens, zero for CLS
    return attn.proj(out)


def _split_heads(x: torch.Tensor, attn: FactorizedAttention) -> torch.Tensor:
    return x.unflatten(-1, (attn.num_heads, -1))  # [B, N, C] -> [B, N, h, d]


def _head_slices(channels: int, num_heads: int) -> list[slice]:
    d = channels // num_heads
    return [slice(i * d, (i + 1) * d) for i in range(num_heads)]
