"""The building blocks of CoaT, one paper concept per class: patch embedding, convolutional position
encoding (CPE), convolutional relative position encoding (CRPE), factorized attention and the MLP.

Token layout between modules: ``[B, 1 + H*W, C]``, the CLS token first and the image tokens in
row-major (H, W) order. Inside attention, heads are split out: ``[B, h, N, d]`` with ``C = h * d``.
Every ``forward`` here states its math once and is valid on every device, dtype and tool; faster
implementations of the same math live in ``coat.fast``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Grid = tuple[int, int]


def tokens_to_nchw(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """View the image tokens of ``[B, 1+H*W, C]`` as ``[B, C, H, W]`` (no copy; channels-last strides)."""
    return tokens[:, 1:].unflatten(1, grid).permute(0, 3, 1, 2)


def nchw_to_tokens(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]`` (a view when ``feature`` is channels-last)."""
    return feature.permute(0, 2, 3, 1).flatten(1, 2)


def add_to_image_tokens(x: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, 1+H*W, C]`` with ``encoded`` ``[B, H*W, C]`` added to its image tokens, the CLS token as it is."""
    return torch.cat((x[:, :1], x[:, 1:] + encoded), dim=1)


def resize_image_tokens(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """Bilinearly resize the image tokens of ``x`` to the ``target`` grid (by size): -> ``[B, h*w, C]``."""
    image = F.interpolate(tokens_to_nchw(x, grid), size=target, mode="bilinear", align_corners=False)
    return nchw_to_tokens(image)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (conv with kernel = stride = patch) + LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)  # default eps 1e-5, as in the authors' release

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        x = self.proj(x)  # [B, C, H/p, W/p] (floor division, as the authors' code)
        grid = (x.shape[2], x.shape[3])
        return self.norm(nchw_to_tokens(x)), grid  # [B, H*W, C]


class ConvPosEnc(nn.Module):
    """Convolutional position encoding: image tokens + depthwise 3x3 conv of themselves (CLS untouched)."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        # added in the tokens' layout (the same numbers as in [B, C, H, W]): exported to ONNX, the layout change
        # into the conv then has the conv as its only reader, which ONNX Runtime folds into its reorders
        encoded = nchw_to_tokens(self.proj(tokens_to_nchw(x, grid)))  # [B, H*W, C]
        return add_to_image_tokens(x, encoded)  # [B, 1+H*W, C]


class ConvRelPosEnc(nn.Module):
    """Convolutional relative position encoding ``q * dwconv(v)`` on image tokens, zero at CLS.

    Heads are split into groups, each with its own depthwise window (``{3: 2, 5: 3, 7: 3}`` means
    the first 2 heads' channels use a 3x3 window, the next 3 a 5x5, the last 3 a 7x7).
    """

    def __init__(self, head_dim: int, windows: dict[int, int]) -> None:
        super().__init__()
        self.channel_splits = [heads * head_dim for heads in windows.values()]
        self.convs = nn.ModuleList(
            nn.Conv2d(ch, ch, window, padding=window // 2, groups=ch)
            for window, ch in zip(windows, self.channel_splits)
        )

    def encode_values(self, v: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The depthwise convs of the values' image tokens: ``[B, h, N, d]`` -> ``[B, h, H*W, d]``."""
        v_image = v[:, :, 1:].transpose(2, 3).flatten(1, 2).unflatten(2, grid)  # [B, C, H, W]
        groups = v_image.split(self.channel_splits, dim=1)
        encoded = torch.cat([conv(groups[i]) for i, conv in enumerate(self.convs)], dim=1)  # [B, C, H, W]
        return encoded.flatten(2).unflatten(1, (v.shape[1], -1)).transpose(2, 3)  # [B, h, H*W, d]

    def forward(self, q: torch.Tensor, v: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``q``, ``v``: ``[B, h, N, d]`` -> ``[B, h, N, d]``."""
        return F.pad(q[:, :, 1:] * self.encode_values(v, grid), (0, 0, 1, 0))  # CLS row of zeros in front


def factorized_context(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax_over_tokens(k)^T @ v``: ``[B, h, N, d]`` x2 -> ``[B, h, d, d]``."""
    return k.softmax(dim=2).transpose(2, 3) @ v


class FactorizedAttention(nn.Module):
    """Factorized attention with CRPE: ``proj(scale * q @ context + crpe(q, v))`` with
    ``context = softmax_over_tokens(k)^T @ v`` per head and ``scale = head_dim^-0.5``.

    ``crpe`` is shared by all attentions of one scale (saved once, under its stage). ``project`` and
    ``read`` are the two halves of ``forward``, so that co-scale attention can read contexts made from
    other scales' keys and values.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, crpe: ConvRelPosEnc) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.crpe = crpe
        self.proj = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, C]`` -> q, k, v, each ``[B, h, N, d]``."""
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # [3, B, h, N, d]
        return qkv[0], qkv[1], qkv[2]

    def read(self, q: torch.Tensor, v: torch.Tensor, context: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Queries read ``context`` ``[B, h, d, d]``, plus CRPE of ``v``; -> ``[B, N, C]``."""
        out = self.scale * (q @ context) + self.crpe(q, v, grid)  # [B, h, N, d]
        return self.proj(out.transpose(1, 2).flatten(2))  # [B, N, C]

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.read(q, v, factorized_context(k, v), grid)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
