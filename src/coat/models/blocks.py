"""Serial blocks, the stage that owns them, and the co-scale parallel block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from .grouped_conv import channels_last
from .layers import (
    ConvPosEnc, ConvRelPosEnc, FactorizedAttention, Grid, Mlp, PatchEmbed, eager_cpu_inference, tokens_to_nchw,
)

LN_EPS = 1e-6
# Inference runs a stage's blocks on chunks of samples whose token tensors hold about 4 MiB of float32:
# the activations of a chunk then stay in cache and in the allocator's heap (BENCHMARKS.md)
CHUNK_ELEMENTS = 2**20


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
        return self.mlp.residual(x, self.norm2, self.drop_path)


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        """``[B, C_in, H, W]`` -> tokens ``[B, 1 + H/p * W/p, C]`` and their grid."""
        image_tokens, grid = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand_as(image_tokens[:, :1]), image_tokens), dim=1)  # [B, 1+H*W, C]
        if eager_cpu_inference(x):  # samples are independent here: a few at a time keep the activations in cache
            chunks = x.split(samples_per_chunk(x))
            if len(chunks) > 1:
                return torch.cat([self._run_blocks(chunk, grid) for chunk in chunks]), grid
        return self._run_blocks(x, grid), grid

    def _run_blocks(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        for block in self.blocks:
            x = run_block(block, self.grad_checkpointing, x, grid, self.cpe, self.crpe)
        return x


def samples_per_chunk(tokens: torch.Tensor) -> int:
    """How many samples of ``[B, N, C]`` make a chunk of about ``CHUNK_ELEMENTS`` floats (at least one)."""
    return max(1, CHUNK_ELEMENTS // (tokens.shape[1] * tokens.shape[2]))


def run_block(block: nn.Module, use_checkpoint: bool, *args: object) -> torch.Tensor:
    """Call ``block``, recomputing its activations in backward when checkpointing is on."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def resize_image_tokens(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """Bilinearly resize the image tokens of ``x`` to ``target`` (by size): -> ``[B, h*w, C]``."""
    image = F.interpolate(tokens_to_nchw(x, grid), size=target, mode="bilinear", align_corners=False)
    if image.requires_grad and not torch.compiler.is_compiling():
        # its gradient arrives as a strided view of a [B, 1+h*w, C] gradient, which the CPU kernel of the
        # backward pass reads about 7x slower than a channels-last copy (BENCHMARKS.md)
        image.register_hook(channels_last)
    return image.flatten(2).transpose(1, 2)


def resize_tokens(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """``resize_image_tokens`` with the CLS token kept in front: -> ``[B, 1+h*w, C]``."""
    return torch.cat((x[:, :1], resize_image_tokens(x, grid, target)), dim=1)


class ParallelBlock(nn.Module):
    """Co-scale block on scales 2-4: per-scale conv-attention, cross-scale mixing, shared MLP.

    ``coscale="interpolate"`` (the released models): each scale's attention output gets the
    other scales' outputs added, resized to its grid.

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
        return [self.mlp.residual(x, norm, self.drop_path) for norm, x in zip(self.norms2, xs)]

    def _mix_by_interpolation(
        self, normed: list[torch.Tensor], grids: Sequence[Grid], crpes: Sequence[ConvRelPosEnc]
    ) -> list[torch.Tensor]:
        outs = [attn(x, grid, crpe) for attn, x, grid, crpe in zip(self.attns, normed, grids, crpes)]
        cls_sum = sum(out[:, :1] for out in outs)  # [B, 1, C]: CLS tokens are summed as they are
        resized = [[resize_image_tokens(other, grids[j], grid) for j, other in enumerate(outs) if j != i]
                   for i, grid in enumerate(grids)]  # per scale: the other scales' images, [B, H_i*W_i, C]
        if eager_cpu_inference(cls_sum):  # the outputs are ours: add into them, no concatenations
            for out, others in zip(outs, resized):
                for other in others:
                    out[:, 1:] += other
                out[:, :1] = cls_sum
            return outs
        return [torch.cat((cls_sum, sum(others, out[:, 1:])), dim=1) for out, others in zip(outs, resized)]

    def _mix_by_attention(
        self, normed: list[torch.Tensor], grids: Sequence[Grid], crpes: Sequence[ConvRelPosEnc]
    ) -> list[torch.Tensor]:
        qkvs = [attn.project_qkv(x) for attn, x in zip(self.attns, normed)]
        mixed = []
        for i, (attn, grid, crpe) in enumerate(zip(self.attns, grids, crpes)):
            q, k, v = qkvs[i]
            context = attn.context(k, v)
            for j, (_, k_other, v_other) in enumerate(qkvs):
                if j != i:
                    k_other = resize_tokens(k_other, grids[j], grid)
                    v_other = resize_tokens(v_other, grids[j], grid)
                    context = context + attn.context(k_other, v_other)
            mixed.append(attn.attend(q, context, v, grid, crpe))
        return mixed
