"""Depthwise convolutions on small token grids (narrower than their kernel, or near it), as per-channel tap matrices.

At small inputs CoaT's last stages have 1x1, 2x2 or 4x4 token grids, smaller than CPE's 3x3 and CRPE's
5x5 and 7x7 windows, so most taps fall on the padding. oneDNN runs the forward of such a depthwise
convolution in well under a millisecond but its backward in 5-25 ms a call (coat_lite_tiny's training step
at 32x32, batch 128, AMD EPYC: 207 of 770 ms; BENCHMARKS.md "Training on small images").

On a grid of ``P = H*W`` tokens a depthwise convolution is the linear map it is: output token ``p`` of
channel ``c`` is ``bias[c] + sum_q M_c[p, q] * x[q, c]``, where ``M_c[p, q]`` is channel ``c``'s tap at the
offset from ``p`` to ``q`` (zero outside the window). The matrices are one product of the taps with a fixed
0/1 ``[k*k, P*P]`` selection (its backward a product too); the map is one broadcast product and sum over
``[B, P, P, C]`` on grids of up to 4 tokens, one batched product over channels above (coat_lite_tiny's shapes,
forward + backward, Zen 4 EPYC: at 4x4 with a 7x7 kernel 2.8 ms against 12.7 ms broadcast in float32).

Where it runs (``runs_as_tap_matrices``): in float32, grids of at most 16 tokens narrower than the kernel (AVX2
EPYC: oneDNN's float32 backward there is slow). Under CPU bf16 autocast also grids of up to 8x8 with windows of 5
or more: oneDNN's bf16 backward of those took 4-9 ms a call where the tap matrices take 1.3-4.5 ms (Zen 4 EPYC;
its 3x3 kernels stay faster than the matrices, 0.5-0.7 ms at 4x4 and 8x8).
"""

from __future__ import annotations

import functools

import torch

from ..models.layers import Grid

FLOAT32_MAX_TOKENS = 16  # a 4x4 grid
BF16_MAX_TOKENS = 64  # an 8x8 grid
BF16_MIN_KERNEL = 5  # oneDNN's bf16 3x3 depthwise backward is fast on every grid measured
BROADCAST_MAX_TOKENS = 4  # up to 2x2 the broadcast product beats the batched one (its copies cost more there)


def runs_as_tap_matrices(kernel_size: int, grid: Grid) -> bool:
    """Whether a depthwise ``kernel_size`` convolution on ``grid`` runs here (where oneDNN's backward is slow): the
    kernel wider than a grid of at most ``FLOAT32_MAX_TOKENS``, or under CPU autocast also a window of at least
    ``BF16_MIN_KERNEL`` on a grid of at most ``BF16_MAX_TOKENS``."""
    height, width = grid
    tokens = height * width
    if torch.is_autocast_enabled("cpu") and kernel_size >= BF16_MIN_KERNEL and tokens <= BF16_MAX_TOKENS:
        return True
    return tokens <= FLOAT32_MAX_TOKENS and kernel_size > min(height, width)


@functools.lru_cache(maxsize=64)
def tap_selection(grid: Grid, kernel_size: int) -> torch.Tensor:
    """``[k*k, P*P]`` of 0 and 1: column ``p*P + q`` selects the row-major kernel tap linking output token ``p`` to
    input token ``q`` on ``grid``, and is zero where ``q`` is outside ``p``'s window."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    half = kernel_size // 2
    dy = rows[None, :] - rows[:, None] + half  # [P, P]: the tap row for (p, q)
    dx = cols[None, :] - cols[:, None] + half
    inside = ((dy >= 0) & (dy < kernel_size) & (dx >= 0) & (dx < kernel_size)).flatten()  # [P*P]
    selection = torch.zeros(kernel_size * kernel_size, inside.numel())
    selection[(dy * kernel_size + dx).flatten()[inside], inside.nonzero().squeeze(1)] = 1.0
    return selection


def depthwise_conv_tokens(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``conv2d(image, weight, bias, padding=k // 2, groups=C)`` on the image tokens ``[B, P, C]`` of ``grid``,
    with ``weight`` ``[C, 1, k, k]`` and ``bias`` ``[C]``: -> ``[B, P, C]``."""
    channels, _, kernel_size, _ = weight.shape
    points = grid[0] * grid[1]
    selection = tap_selection(grid, kernel_size).to(weight)
    matrices = (weight.reshape(channels, -1) @ selection).view(channels, points, points)  # [C, P(out), P(in)]
    if points <= BROADCAST_MAX_TOKENS:
        return (tokens.unsqueeze(1) * matrices.permute(1, 2, 0)).sum(2) + bias  # [B, 1, P, C] * [P, P, C] -> [B, P, C]
    per_channel = tokens.permute(2, 0, 1).contiguous()  # [C, B, P]
    return torch.bmm(per_channel, matrices.transpose(1, 2)).permute(1, 2, 0) + bias  # [C, B, P] -> [B, P, C]
