"""Depthwise convolutions on images narrower than their kernel, as per-channel tap matrices.

At small inputs CoaT's last stages have 1x1, 2x2 or 4x4 token grids, smaller than CPE's 3x3 and CRPE's
5x5 and 7x7 windows, so most taps fall on the padding. oneDNN runs the forward of such a depthwise
convolution in well under a millisecond but its backward in 5-25 ms a call (coat_lite_tiny's training step
at 32x32, batch 128, AMD EPYC: 207 of 770 ms; BENCHMARKS.md "Training on small images").

On a grid of ``P = H*W`` tokens a depthwise convolution is the linear map it is: output token ``p`` of
channel ``c`` is ``bias[c] + sum_q M_c[p, q] * x[q, c]``, where ``M_c[p, q]`` is channel ``c``'s tap at the
offset from ``p`` to ``q`` (zero outside the window). The matrices are one gather from the weights and
the map one broadcast product and sum over ``[B, P, P, C]``, so autograd's backward is elementwise work
and a scatter into the weights. Used only on grids of at most ``MAX_TOKENS`` tokens.
"""

from __future__ import annotations

import functools

import torch

from ..models.layers import Grid

# The product holds B * P * P * C elements: 16 tokens (a 4x4 grid) keep it within 256x the input.
MAX_TOKENS = 16


def runs_as_tap_matrices(kernel_size: int, grid: Grid) -> bool:
    """Whether a depthwise ``kernel_size`` convolution on ``grid`` runs here: the kernel is wider than the grid
    (where oneDNN's backward is slow) and the grid has at most ``MAX_TOKENS`` tokens."""
    height, width = grid
    return height * width <= MAX_TOKENS and kernel_size > min(height, width)


@functools.lru_cache(maxsize=64)
def tap_index(grid: Grid, kernel_size: int) -> torch.Tensor:
    """``[P, P]``: the row-major kernel tap linking output token ``p`` to input token ``q`` on ``grid``, or
    ``kernel_size**2`` (a zero appended to the taps) where ``q`` is outside ``p``'s window."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    half = kernel_size // 2
    dy = rows[None, :] - rows[:, None] + half  # [P, P]: the tap row for (p, q)
    dx = cols[None, :] - cols[:, None] + half
    inside = (dy >= 0) & (dy < kernel_size) & (dx >= 0) & (dx < kernel_size)
    return torch.where(inside, dy * kernel_size + dx, kernel_size * kernel_size)


def depthwise_conv_tokens(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``conv2d(image, weight, bias, padding=k // 2, groups=C)`` on the image tokens ``[B, P, C]`` of ``grid``,
    with ``weight`` ``[C, 1, k, k]`` and ``bias`` ``[C]``: -> ``[B, P, C]``."""
    channels, _, kernel_size, _ = weight.shape
    taps = torch.cat((weight.reshape(channels, -1), weight.new_zeros(channels, 1)), dim=1)  # [C, k*k + 1]
    matrices = taps[:, tap_index(grid, kernel_size).to(weight.device)].permute(1, 2, 0)  # [P, P, C]
    return (tokens.unsqueeze(1) * matrices).sum(2) + bias  # [B, 1, P, C] * [P, P, C] -> [B, P, C]
