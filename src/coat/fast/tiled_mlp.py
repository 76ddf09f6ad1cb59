"""The MLP branch of a block, ``fc2(gelu(fc1(layer_norm(x))))``, as one autograd function over row tiles.

Used by ``cpu_training``. Tokens are independent in this branch, so forward and backward both run
tile by tile over the rows ``[M, C]`` of the token matrix, and each tile's hidden activations
(``H = r * C`` wide, the widest tensors of the model) stay in cache. For backward it keeps only
the input ``x``; the norm, fc1 and the GELU are recomputed tile by tile, so the activation memory
of the branch drops from ``C + 2H`` floats per token (what autograd keeps: the norm's output, fc1's
output, the GELU's output) to nothing beyond ``x``, which the residual stream holds anyway.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

# 2 MiB of float32 hidden activations per row tile, kept in cache: the best of the 0.25-8 MiB tiles
# measured on a 2-core EPYC (BENCHMARKS.md)
TILE_HIDDEN_ELEMENTS = 2**19


def tile_rows(hidden_dim: int, hidden_elements: int = TILE_HIDDEN_ELEMENTS) -> int:
    """Rows per tile so that one tile's hidden activations hold about ``hidden_elements`` numbers."""
    return max(1, hidden_elements // hidden_dim)


def _tiles(num_rows: int, rows_per_tile: int) -> Iterator[slice]:
    for start in range(0, num_rows, rows_per_tile):
        yield slice(start, min(start + rows_per_tile, num_rows))


class NormMlpFunction(torch.autograd.Function):
    """``fc2(gelu(fc1(layer_norm(x))))`` for ``x`` of shape ``[M, C]``; returns ``[M, C]``."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
        fc1_weight: torch.Tensor,
        fc1_bias: torch.Tensor,
        fc2_weight: torch.Tensor,
        fc2_bias: torch.Tensor,
        eps: float,
        rows_per_tile: int,
    ) -> torch.Tensor:
        out = x.new_empty(x.shape[0], fc2_weight.shape[0])  # [M, C]
        for rows in _tiles(x.shape[0], rows_per_tile):
            normed = F.layer_norm(x[rows], x.shape[-1:], norm_weight, norm_bias, eps)  # [R, C]
            hidden = F.gelu(F.linear(normed, fc1_weight, fc1_bias))  # [R, H]
            torch.addmm(fc2_bias, hidden, fc2_weight.t(), out=out[rows])
        ctx.save_for_backward(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight)
        ctx.eps, ctx.rows_per_tile = eps, rows_per_tile
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # [M, C]
        grad_x = torch.empty_like(x)
        grad_norm_weight, grad_norm_bias = torch.zeros_like(norm_weight), torch.zeros_like(norm_bias)
        grad_fc1_weight, grad_fc1_bias = torch.zeros_like(fc1_weight), torch.zeros_like(fc1_bias)
        grad_fc2_weight = torch.zeros_like(fc2_weight)
        for rows in _tiles(x.shape[0], ctx.rows_per_tile):
            # recompute the tile's forward: norm (with its statistics), fc1, GELU
            normed, mean, rstd = torch.native_layer_norm(x[rows], x.shape[-1:], norm_weight, norm_bias, ctx.eps)
            pre_act = F.linear(normed, fc1_weight, fc1_bias)  # [R, H]
            grad_fc2_weight.addmm_(grad_out[rows].t(), F.gelu(pre_act))
            grad_pre_act = torch.ops.aten.gelu_backward(grad_out[rows] @ fc2_weight, pre_act)  # [R, H]
            grad_fc1_weight.addmm_(grad_pre_act.t(), normed)
            grad_fc1_bias += grad_pre_act.sum(0)
            grad_x[rows], grad_w, grad_b = torch.ops.aten.native_layer_norm_backward(
                grad_pre_act @ fc1_weight,
                x[rows],
                x.shape[-1:],
                mean,
                rstd,
                norm_weight,
                norm_bias,
                [True, True, True],
            )
            grad_norm_weight += grad_w
            grad_norm_bias += grad_b
        return (
            grad_x,
            grad_norm_weight,
            grad_norm_bias,
            grad_fc1_weight,
            grad_fc1_bias,
            grad_fc2_weight,
            grad_out.sum(0),
            None,
            None,
        )
