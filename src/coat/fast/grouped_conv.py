"""CRPE's depthwise convolutions for training, as one autograd function that keeps no copies.

CRPE convolves the values ``v`` (a strided view of the qkv projection) with one depthwise window per
group of heads. oneDNN runs these convolutions and their backward passes fastest on contiguous
channels-last inputs, so each group's channels are copied before its convolution; plain autograd
would keep those copies for the weight gradients (one more ``[B, C, H, W]`` tensor per block). This
function keeps only the view of ``v`` and copies each group again in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous channels-last tensor (a copy unless it already is one)."""
    return x.contiguous(memory_format=torch.channels_last)


class GroupedDepthwiseConv(torch.autograd.Function):
    """Depthwise convs of channel groups of ``x [B, C, H, W]``, group ``i`` with ``weights[i]``
    ``[C_i, 1, k_i, k_i]``, ``biases[i]`` and padding ``k_i // 2``; returns ``[B, C, H, W]``."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, *weights_then_biases: torch.Tensor) -> torch.Tensor:
        weights, biases = _halves(weights_then_biases)
        groups = x.split([w.shape[0] for w in weights], dim=1)
        out = torch.cat(
            [
                F.conv2d(channels_last(group), w, b, padding=w.shape[-1] // 2, groups=w.shape[0])
                for group, w, b in zip(groups, weights, biases)
            ],
            dim=1,
        )
        ctx.save_for_backward(x, *weights)
        ctx.compute_dtype = out.dtype  # lower than x's or the weights' under autocast
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *weights = ctx.saved_tensors
        splits = [w.shape[0] for w in weights]
        grad_groups, grad_weights, grad_biases = [], [], []
        dtype = ctx.compute_dtype  # autograd casts the gradients back to the inputs' dtypes
        for group, grad, w in zip(x.split(splits, dim=1), grad_out.split(splits, dim=1), weights):
            pad = w.shape[-1] // 2
            grad_group, grad_w, grad_b = torch.ops.aten.convolution_backward(
                channels_last(grad.to(dtype)),
                channels_last(group.to(dtype)),
                w.to(dtype),
                [w.shape[0]],
                [1, 1],
                [pad, pad],
                [1, 1],
                False,
                [0, 0],
                w.shape[0],
                [ctx.needs_input_grad[0], True, True],
            )
            grad_groups.append(grad_group)
            grad_weights.append(grad_w)
            grad_biases.append(grad_b)
        grad_x = torch.cat(grad_groups, dim=1) if ctx.needs_input_grad[0] else None
        return grad_x, *grad_weights, *grad_biases


def _halves(items: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    half = len(items) // 2
    return items[:half], items[half:]
