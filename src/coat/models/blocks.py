"""Serial blocks, the stage that owns them, and the co-scale parallel block."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from .layers import (
    ConvPosEnc,
    ConvRelPosEnc,
    FactorizedAttention,
    Grid,
    Mlp,
    PatchEmbed,
    factorized_context,
    resize_image_tokens,
)

LN_EPS = 1e-6


class SerialBlock(nn.Module):
    """Conv-attention block: CPE -> LN -> factorized attention + CRPE -> residual; LN -> MLP -> residual.

    The CPE and CRPE are owned by the stage and shared by all its blocks, so they are passed in.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = FactorizedAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor, grid: Grid, cpe: ConvPosEnc, crpe: ConvRelPosEnc) -> torch.Tensor:
        x = cpe(x, grid)  # [B, 1+H*W, C]
        x = x + self.drop_path(self.attn(self.norm1(x), grid, crpe))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """One scale: patch embedding, CLS token, the shared CPE/CRPE and a stack of serial blocks."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        patch_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        crpe_windows: dict[int, int],
        drop_path: float,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cpe = ConvPosEnc(dim)
        self.crpe = ConvRelPosEnc(dim // num_heads, crpe_windows)
        self.blocks = nn.ModuleList(
            SerialBlock(dim, num_heads, mlp_ratio, qkv_bias, drop_path) for _ in range(depth)
        )
        self.grad_checkpointing = False

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """``[B, C_in, H, W]`` -> patch tokens behind the CLS token ``[B, 1 + H/p * W/p, C]`` and their grid."""
        image_tokens, grid = self.patch_embed(x)
        return torch.cat((self.cls_token.expand(x.shape[0], -1, -1), image_tokens), dim=1), grid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """``[B, C_in, H, W]`` -> tokens ``[B, 1 + H/p * W/p, C]`` after the serial blocks, and their grid."""
        x, grid = self.embed(x)
        for block in self.blocks:
            x = run_block(block, self.grad_checkpointing, x, grid, self.cpe, self.crpe)
        return x, grid


def run_block(block: nn.Module, use_checkpoint: bool, *args: object) -> torch.Tensor:
    """Call ``block``, recomputing its activations in backward when checkpointing is on."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def resize_tokens(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """``resize_image_tokens`` with the CLS token kept in front: -> ``[B, 1+h*w, C]``."""
    return torch.cat((x[:, :1], resize_image_tokens(x, grid, target)), dim=1)


class ParallelBlock(nn.Module):
    """Co-scale block on scales 2-4: per-scale CPE and conv-attention, cross-scale mixing, shared MLP.

    ``coscale="interpolate"`` (the released models, feature interpolation): each scale's attention
    output gets the other scales' outputs added, resized to its grid; the CLS tokens are summed.

    ``coscale="attention"`` (the paper's direct cross-layer attention, which the authors did not
    release): each scale's queries read the contexts ``softmax(k)^T v`` of its own keys/values
    and of the other scales' keys/values resized to its grid; the reads are summed (which equals
    one read of the summed contexts, since factorized attention is linear in the context), CRPE
    of its own values is added, then its own output projection. Both modes use the same
    parameters, so released weights load into either.
    """

    def __init__(
        self, dim: int, num_scales: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float,
        coscale: str,
    ) -> None:
        super().__init__()
        self.coscale = coscale
        self.norms1 = nn.ModuleList(nn.LayerNorm(dim, eps=LN_EPS) for _ in range(num_scales))
        self.attns = nn.ModuleList(FactorizedAttention(dim, num_heads, qkv_bias) for _ in range(num_scales))
        self.norms2 = nn.ModuleList(nn.LayerNorm(dim, eps=LN_EPS) for _ in range(num_scales))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # one MLP shared by the scales
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(
        self,
        xs: Sequence[torch.Tensor],
        grids: Sequence[Grid],
        cpes: Sequence[ConvPosEnc],
        crpes: Sequence[ConvRelPosEnc],
    ) -> list[torch.Tensor]:
        xs = [cpe(x, grid) for cpe, x, grid in zip(cpes, xs, grids)]
        normed = [norm(x) for norm, x in zip(self.norms1, xs)]
        if self.coscale == "interpolate":
            mixed = self._mix_by_interpolation(normed, grids, crpes)
        else:
            mixed = self._mix_by_attention(normed, grids, crpes)
        xs = [x + self.drop_path(m) for x, m in zip(xs, mixed)]
        return [x + self.drop_path(self.mlp(norm(x))) for norm, x in zip(self.norms2, xs)]

    def _mix_by_interpolation(
        self, normed: list[torch.Tensor], grids: Sequence[Grid], crpes: Sequence[ConvRelPosEnc]
    ) -> list[torch.Tensor]:
        outs = [attn(x, grid, crpe) for attn, x, grid, crpe in zip(self.attns, normed, grids, crpes)]
        return interpolation_mix(outs, grids, resize_image_tokens)

    def _mix_by_attention(
        self, normed: list[torch.Tensor], grids: Sequence[Grid], crpes: Sequence[ConvRelPosEnc]
    ) -> list[torch.Tensor]:
        qkvs = [attn.project(x) for attn, x in zip(self.attns, normed)]  # per scale: q, k, v [B, h, N_s, d]
        mixed = []
        for i, (attn, grid, crpe) in enumerate(zip(self.attns, grids, crpes)):
            q, k, v = qkvs[i]
            context = factorized_context(k, v)  # [B, h, d, d]
            for j, (_, k_other, v_other) in enumerate(qkvs):
                if j != i:
                    context = context + factorized_context(_resize_heads(k_other, grids[j], grid),
                                                           _resize_heads(v_other, grids[j], grid))
            mixed.append(attn.read(q, v, context, grid, crpe))
        return mixed


def interpolation_mix(
    outs: Sequence[torch.Tensor], grids: Sequence[Grid], resize: Callable[[torch.Tensor, Grid, Grid], torch.Tensor]
) -> list[torch.Tensor]:
    """Feature interpolation: each scale's ``[B, 1+H_i*W_i, C]`` plus the other scales' image tokens
    resized to its grid by ``resize(tokens, grid, target)``; the CLS slot gets the sum of all CLS tokens."""
    cls_sum = sum(out[:, :1] for out in outs)  # [B, 1, C]
    mixed = []
    for i, (out, grid) in enumerate(zip(outs, grids)):
        others = [resize(other, grids[j], grid) for j, other in enumerate(outs) if j != i]  # [B, H_i*W_i, C] each
        mixed.append(torch.cat((cls_sum, sum(others, out[:, 1:])), dim=1))
    return mixed


def _resize_heads(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """Resize per-head tokens ``[B, h, 1+H*W, d]`` to ``target`` (CLS kept): -> ``[B, h, 1+h'*w', d]``."""
    tokens = x.transpose(1, 2).flatten(2)  # [B, N, C]
    return resize_tokens(tokens, grid, target).unflatten(-1, (x.shape[1], -1)).transpose(1, 2)
