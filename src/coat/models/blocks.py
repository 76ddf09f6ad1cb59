"""Serial blocks, the stage that owns them, and the co-scale parallel block."""

from __future__ import annotations

from collections.abc import Sequence

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

    The CPE and CRPE are shared by all blocks of a stage (saved once, under the stage).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        cpe: ConvPosEnc,
        crpe: ConvRelPosEnc,
    ) -> None:
        super().__init__()
        self.cpe = cpe
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = FactorizedAttention(dim, num_heads, qkv_bias, crpe)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        x = self.cpe(x, grid)  # [B, 1+H*W, C]
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
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
            SerialBlock(dim, num_heads, mlp_ratio, qkv_bias, drop_path, self.cpe, self.crpe) for _ in range(depth)
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
            if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, grid, use_reentrant=False)  # recomputed in backward
            else:
                x = block(x, grid)
        return x, grid


def resize_tokens(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """``resize_image_tokens`` with the CLS token kept in front: -> ``[B, 1+h*w, C]``."""
    return torch.cat((x[:, :1], resize_image_tokens(x, grid, target)), dim=1)


class ParallelBlock(nn.Module):
    """Co-scale block on scales 2-4: per-scale CPE and conv-attention, cross-scale mixing, shared MLP.

    ``cpes`` and ``crpes`` are the scales' position encodings, shared with their stages (saved there).

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
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        coscale: str,
        cpes: Sequence[ConvPosEnc],
        crpes: Sequence[ConvRelPosEnc],
    ) -> None:
        super().__init__()
        self.coscale = coscale
        num_scales = len(cpes)
        self.cpes = nn.ModuleList(cpes)
        self.norms1 = nn.ModuleList(nn.LayerNorm(dim, eps=LN_EPS) for _ in range(num_scales))
        self.attns = nn.ModuleList(FactorizedAttention(dim, num_heads, qkv_bias, crpe) for crpe in crpes)
        self.norms2 = nn.ModuleList(nn.LayerNorm(dim, eps=LN_EPS) for _ in range(num_scales))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # one MLP shared by the scales
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, xs: list[torch.Tensor], grids: list[Grid]) -> list[torch.Tensor]:
        """Scales 2-4's tokens ``[B, 1+H_s*W_s, C]`` -> the same shapes."""
        xs = [cpe(xs[s], grids[s]) for s, cpe in enumerate(self.cpes)]
        normed = [norm(xs[s]) for s, norm in enumerate(self.norms1)]
        if self.coscale == "interpolate":
            mixed = self._mix_by_interpolation(normed, grids)
        else:
            mixed = self._mix_by_attention(normed, grids)
        xs = [x + self.drop_path(m) for x, m in zip(xs, mixed)]
        return [xs[s] + self.drop_path(self.mlp(norm(xs[s]))) for s, norm in enumerate(self.norms2)]

    def _mix_by_interpolation(self, normed: list[torch.Tensor], grids: list[Grid]) -> list[torch.Tensor]:
        outs = [attn(normed[s], grids[s]) for s, attn in enumerate(self.attns)]
        return interpolation_mix(outs, grids)

    def _mix_by_attention(self, normed: list[torch.Tensor], grids: list[Grid]) -> list[torch.Tensor]:
        qkvs = [attn.project(normed[s]) for s, attn in enumerate(self.attns)]  # per scale: q, k, v [B, h, N_s, d]
        mixed: list[torch.Tensor] = []
        for s, attn in enumerate(self.attns):
            q, k, v = qkvs[s]
            context = factorized_context(k, v)  # [B, h, d, d]
            for other, (_, k_other, v_other) in enumerate(qkvs):
                if other != s:
                    context = context + factorized_context(
                        _resize_heads(k_other, grids[other], grids[s]), _resize_heads(v_other, grids[other], grids[s])
                    )
            mixed.append(attn.read(q, v, context, grids[s]))
        return mixed


def interpolation_mix(outs: list[torch.Tensor], grids: list[Grid]) -> list[torch.Tensor]:
    """Feature interpolation: each scale's ``[B, 1+H_i*W_i, C]`` plus the other scales' image tokens
    resized to its grid; the CLS slot gets the sum of all CLS tokens."""
    cls_sum = torch.stack([out[:, :1] for out in outs]).sum(0)  # [B, 1, C]
    mixed: list[torch.Tensor] = []
    for i, out in enumerate(outs):
        image = out[:, 1:]  # [B, H_i*W_i, C]
        for j, other in enumerate(outs):
            if j != i:
                image = image + resize_image_tokens(other, grids[j], grids[i])
        mixed.append(torch.cat((cls_sum, image), dim=1))
    return mixed


def _resize_heads(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """Resize per-head tokens ``[B, h, 1+H*W, d]`` to ``target`` (CLS kept): -> ``[B, h, 1+h'*w', d]``."""
    tokens = x.transpose(1, 2).flatten(2)  # [B, N, C]
    return resize_tokens(tokens, grid, target).unflatten(-1, (x.shape[1], -1)).transpose(1, 2)
