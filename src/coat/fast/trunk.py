"""The trunk's order of work, stated once for every fast path: ``CoaT.reference_tokens`` with kernels.

Stages 1-4 each embed their input and run their serial blocks; CoaT's parallel blocks then run on
scales 2-4. Which code runs each piece (attention, CPE, the MLP, the co-scale mix, how a stage loops
over its blocks) is the path's ``Kernels``; the order here matches ``SerialBlock.forward``,
``Stage.forward``, ``ParallelBlock.forward`` and ``CoaT.reference_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from ..models.layers import Grid, tokens_to_nchw
from .grouped_conv import channels_last
from .kernels import Kernels, ScaleAttention, checkpointed


def run_trunk(model: nn.Module, x: torch.Tensor, kernels: Kernels) -> tuple[list[torch.Tensor], list[Grid]]:
    """The four scales' tokens ``[B, 1+H_s*W_s, C_s]`` and grids of ``model`` for images ``x``.

    The images enter channels-last: stage 1's patch convolution then writes its tokens as a view instead of
    an NCHW output that the norm has to copy (batch 16: 46 -> 14 ms); later stages read channels-last views.
    """
    tokens, grids, attentions = [], [], []
    feature = channels_last(x)
    for stage in model.stages:
        out, grid = stage.embed(feature)  # [B, 1+H*W, C]
        attention = kernels.attention_for_scale(stage.crpe)
        # bound now: grad checkpointing runs the blocks again in backward, after this loop has moved on
        out = kernels.run_blocks(stage, out, partial(_serial_block, kernels, grid=grid, attention=attention))
        tokens.append(out)
        grids.append(grid)
        attentions.append(attention)
        feature = tokens_to_nchw(out, grid)  # the next stage's input [B, C, H, W], a view
    if model.parallel_blocks:
        scales = tokens[1:]
        for block in model.parallel_blocks:
            scales = checkpointed(
                model.grad_checkpointing, _parallel_block, kernels, block, scales, grids[1:], attentions[1:]
            )
        tokens = tokens[:1] + list(scales)
    return tokens, grids


def _serial_block(
    kernels: Kernels, block: nn.Module, x: torch.Tensor, grid: Grid, attention: ScaleAttention
) -> torch.Tensor:
    """``SerialBlock.forward``: CPE, attention residual, MLP residual."""
    x = kernels.add_position(block.cpe, x, grid)
    x = x + block.drop_path(attention(block.attn, block.norm1(x), grid))
    return kernels.add_mlp(x, block.norm2, block.mlp, block.drop_path)


def _parallel_block(
    kernels: Kernels,
    block: nn.Module,
    xs: list[torch.Tensor],
    grids: Sequence[Grid],
    attentions: Sequence[ScaleAttention],
) -> list[torch.Tensor]:
    """``ParallelBlock.forward`` (feature interpolation): per-scale CPE and attention, the mix, the shared MLP."""
    xs = [kernels.add_position(cpe, x, grid) for cpe, x, grid in zip(block.cpes, xs, grids)]
    outs = [
        attention(attn, norm(x), grid)
        for attention, attn, norm, x, grid in zip(attentions, block.attns, block.norms1, xs, grids)
    ]
    xs = [x + block.drop_path(mixed) for x, mixed in zip(xs, kernels.mix(outs, grids))]
    return [kernels.add_mlp(x, norm, block.mlp, block.drop_path) for norm, x in zip(block.norms2, xs)]
