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
Every write in place follows the rule stated in ``kernels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.layers import ConvPosEnc, ConvRelPosEnc, Grid, resize_image_tokens, tokens_to_nchw
from .kernels import BlockRunner, Kernels, ScaleAttention, factorized_attention, merged_crpe
from .path import AUTOGRAD_OFF, EVAL_MODE, FLOAT32, NO_CPU_AUTOCAST, ON_CPU, SIZE_FIELDS, FastPath
from .tiled_mlp import tile_rows

CHUNK_ELEMENTS = 2**20  # samples per chunk: tokens of about 4 MiB of float32
SLICED_HEADS_MIN_TOKENS = 1024  # 56x56 (stage 1 at 224) uses head slices; 28x28 and smaller use einsum


class InferenceKernels(Kernels):
    """Cache-sized chunks and tiles, CRPE as one conv, additions into tensors this call made."""

    def attention_for_scale(self, crpe: ConvRelPosEnc) -> ScaleAttention:
        encode_values = merged_crpe(crpe)
        return lambda attn, x, grid: factorized_attention(attn, x, grid, encode_values, _sliced(x))

    def add_position(self, cpe: ConvPosEnc, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``ConvPosEnc`` added into the image tokens of ``x`` (no concatenation with the CLS token)."""
        image = tokens_to_nchw(x, grid)  # [B, C, H, W] view
        image += cpe.proj(image)
        return x

    def add_mlp(self, x: torch.Tensor, norm: nn.LayerNorm, mlp: nn.Module, drop_path: nn.Module) -> torch.Tensor:
        """``x + mlp(norm(x))`` added into ``x`` (eval mode: no drop path): after one norm over all rows (one call
        costs less than one per tile), each tile of rows runs fc1 -> GELU -> fc2 and adds into its rows, its hidden
        activations staying in cache (MKL's addmm beats oneDNN's fused linear + GELU on these shapes)."""
        rows = x.view(-1, x.shape[-1])  # [B*N, C]
        rows_per_tile = tile_rows(mlp.fc1.out_features)
        for tile, normed in zip(rows.split(rows_per_tile), norm(rows).split(rows_per_tile)):
            hidden = torch.addmm(mlp.fc1.bias, normed, mlp.fc1.weight.t())  # [rows, H]
            torch.ops.aten.gelu_(hidden)
            tile.addmm_(hidden, mlp.fc2.weight.t()).add_(mlp.fc2.bias)  # [rows, C]
        return x

    def mix(self, outs: list[torch.Tensor], grids: Sequence[Grid]) -> list[torch.Tensor]:
        """``models.blocks.interpolation_mix`` added into the attention outputs (made in this call)."""
        cls_sum = sum(out[:, :1] for out in outs)  # [B, 1, C]
        resized = [
            [resize_image_tokens(other, grids[j], grid) for j, other in enumerate(outs) if j != i]
            for i, grid in enumerate(grids)
        ]  # every resize reads the outputs before any is changed
        for out, others in zip(outs, resized):
            for other in others:
                out[:, 1:] += other
            out[:, :1] = cls_sum
        return outs

    def run_blocks(self, stage: nn.Module, x: torch.Tensor, block: BlockRunner) -> torch.Tensor:
        """The blocks on chunks of samples (samples are independent): a few at a time stay in cache."""
        outs = []
        for chunk in x.split(samples_per_chunk(x)):
            for serial_block in stage.blocks:
                chunk = block(serial_block, chunk)
            outs.append(chunk)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


PATH = FastPath(
    "cpu_inference",
    InferenceKernels(),
    conditions=(
        ON_CPU,
        FLOAT32,
        AUTOGRAD_OFF,
        NO_CPU_AUTOCAST,
        EVAL_MODE,
    ),
    config={**SIZE_FIELDS, "coscale": ("interpolate",)},
)


def samples_per_chunk(tokens: torch.Tensor) -> int:
    """How many samples of ``[B, N, C]`` make a chunk of about ``CHUNK_ELEMENTS`` floats (at least one)."""
    return max(1, CHUNK_ELEMENTS // (tokens.shape[1] * tokens.shape[2]))


def _sliced(x: torch.Tensor) -> bool:
    return x.shape[1] >= SLICED_HEADS_MIN_TOKENS
