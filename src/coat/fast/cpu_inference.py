"""Eager CPU float32 inference: the reference math in cache-sized pieces, updating its own tensors in place.

Measured on 2-core AMD EPYC (AVX2) and Intel Xeon (AVX-512) VMs against timm's CoaT and the plain
modules (BENCHMARKS.md, "What each optimisation bought"):
- each stage runs its serial blocks on chunks of samples whose tokens hold about 4 MiB, so a chunk's
  activations stay in cache and in the allocator's heap;
- the MLP runs in row tiles after one layer norm over all rows: MKL ``addmm``, in-place GELU, and
  ``addmm_`` straight into the residual, so each tile's hidden activations stay in cache;
- CRPE's three window groups run as one depthwise conv with kernels zero-padded to the largest window;
- heads are channel slices of the ``[B, N, C]`` projections on sequences of 1024+ tokens;
- CPE, CRPE and the co-scale mixing are added into tensors made in this call instead of concatenated.
Every tensor written in place is made in this call; the input never is, and the seam sends models
with hooks to the reference, so no caller or hook holds a tensor that changes later.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import ConvPosEnc, ConvRelPosEnc, Grid, nchw_to_tokens, resize_image_tokens, tokens_to_nchw
from .tiled_mlp import tile_rows
from .trunk import ValueEncoder, factorized_attention, run_trunk

CHUNK_ELEMENTS = 2**20  # samples per chunk: tokens of about 4 MiB of float32
SLICED_HEADS_MIN_TOKENS = 1024  # 56x56 (stage 1 at 224) uses head slices; 28x28 and smaller use einsum


def applies(model: nn.Module, x: torch.Tensor) -> bool:
    """Gradient-free eval-mode CPU float32 inference (no autocast) of the released co-scale mode."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not model.training
        and model.config.coscale == "interpolate"
    )


def tokens(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[Grid]]:
    """``forward_tokens`` of ``model`` for ``x``."""
    return run_trunk(model, x, _stage, _parallel_block)


def samples_per_chunk(tokens: torch.Tensor) -> int:
    """How many samples of ``[B, N, C]`` make a chunk of about ``CHUNK_ELEMENTS`` floats (at least one)."""
    return max(1, CHUNK_ELEMENTS // (tokens.shape[1] * tokens.shape[2]))


def _stage(stage: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, Grid]:
    x, grid = stage.embed(images)  # [B, 1+H*W, C]
    encode_values = _merged_crpe(stage.crpe)
    outs = []
    for chunk in x.split(samples_per_chunk(x)):  # samples are independent: a few at a time stay in cache
        for block in stage.blocks:
            chunk = _serial_block(block, chunk, grid, encode_values)
        outs.append(chunk)
    return (outs[0] if len(outs) == 1 else torch.cat(outs)), grid


def _serial_block(block: nn.Module, x: torch.Tensor, grid: Grid, encode_values: ValueEncoder) -> torch.Tensor:
    _add_position_encoding_(x, grid, block.cpe)
    x = x + factorized_attention(block.attn, block.norm1(x), grid, encode_values, _sliced(x))
    return _add_mlp_(x, block.norm2, block.mlp)


def _parallel_block(block: nn.Module, xs: list[torch.Tensor], grids: Sequence[Grid]) -> list[torch.Tensor]:
    for x, grid, cpe in zip(xs, grids, block.cpes):
        _add_position_encoding_(x, grid, cpe)
    outs = [factorized_attention(attn, norm(x), grid, _merged_crpe(attn.crpe), _sliced(x))
            for attn, norm, x, grid in zip(block.attns, block.norms1, xs, grids)]
    _mix_by_interpolation_(outs, grids)
    xs = [x + out for x, out in zip(xs, outs)]
    return [_add_mlp_(x, norm, block.mlp) for norm, x in zip(block.norms2, xs)]


def _sliced(x: torch.Tensor) -> bool:
    return x.shape[1] >= SLICED_HEADS_MIN_TOKENS


def _add_position_encoding_(x: torch.Tensor, grid: Grid, cpe: ConvPosEnc) -> None:
    """``ConvPosEnc`` added into the image tokens of ``x`` (no concatenation with the CLS token)."""
    image = tokens_to_nchw(x, grid)  # [B, C, H, W] view
    image += cpe.proj(image)


def _merged_crpe(crpe: ConvRelPosEnc) -> ValueEncoder:
    """CRPE's window groups as one depthwise conv, the smaller kernels zero-padded to the largest window: the
    same numbers in one call, without copying each group's channels out of ``v``."""
    largest = max(conv.kernel_size[0] for conv in crpe.convs)
    weight = torch.cat([F.pad(conv.weight, [(largest - conv.kernel_size[0]) // 2] * 4) for conv in crpe.convs])
    bias = torch.cat([conv.bias for conv in crpe.convs])

    def encode_values(v: torch.Tensor, grid: Grid) -> torch.Tensor:
        v_image = tokens_to_nchw(v, grid)  # [B, C, H, W] view
        return nchw_to_tokens(F.conv2d(v_image, weight, bias, padding=largest // 2, groups=weight.shape[0]))

    return encode_values


def _add_mlp_(x: torch.Tensor, norm: nn.LayerNorm, mlp: nn.Module) -> torch.Tensor:
    """``x + mlp(norm(x))`` added into ``x``: after one norm over all rows (one call costs less than one per
    tile), each tile of rows runs fc1 -> GELU -> fc2 and adds into its rows, its hidden activations staying in
    cache (MKL's addmm beats oneDNN's fused linear + GELU on these shapes)."""
    rows = x.view(-1, x.shape[-1])  # [B*N, C]
    rows_per_tile = tile_rows(mlp.fc1.out_features)
    for tile, normed in zip(rows.split(rows_per_tile), norm(rows).split(rows_per_tile)):
        hidden = torch.addmm(mlp.fc1.bias, normed, mlp.fc1.weight.t())  # [rows, H]
        torch.ops.aten.gelu_(hidden)
        tile.addmm_(hidden, mlp.fc2.weight.t()).add_(mlp.fc2.bias)  # [rows, C]
    return x


def _mix_by_interpolation_(outs: list[torch.Tensor], grids: Sequence[Grid]) -> None:
    """``models.blocks.interpolation_mix`` added into the attention outputs (made in this call)."""
    cls_sum = sum(out[:, :1] for out in outs)  # [B, 1, C]
    resized = [[resize_image_tokens(other, grids[j], grid) for j, other in enumerate(outs) if j != i]
               for i, grid in enumerate(grids)]  # every resize reads the outputs before any is changed
    for out, others in zip(outs, resized):
        for other in others:
            out[:, 1:] += other
        out[:, :1] = cls_sum
