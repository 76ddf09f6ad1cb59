"""What a fast path supplies: how each piece of the trunk runs. The defaults are the reference modules.

``trunk.run_trunk`` states the order of work once (stages, serial blocks, parallel blocks, co-scale
mixing); a fast path subclasses ``Kernels`` and replaces only the pieces it runs differently.

The in-place rule, for every kernel: a kernel may write in place only into a tensor made earlier in
the same ``run_trunk`` call (never the input images, never a parameter). The seam sends a model with
hooks on the modules that run to the reference, so no hook holds such a tensor either, and a tensor
handed back to the caller is never written afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..models.blocks import interpolation_mix
from ..models.layers import ConvPosEnc, ConvRelPosEnc, FactorizedAttention, Grid, nchw_to_tokens, tokens_to_nchw

# attention(attn, normed tokens [B, N, C], grid) -> attention output with CRPE [B, N, C], for one scale
ScaleAttention = Callable[[FactorizedAttention, torch.Tensor, Grid], torch.Tensor]
# block(x) -> x: one serial block of a stage, its grid and CRPE bound
BlockRunner = Callable[[nn.Module, torch.Tensor], torch.Tensor]
# encode_values(v [B, N, C], grid) -> CRPE's depthwise convs of the values' image tokens [B, H*W, C]
ValueEncoder = Callable[[torch.Tensor, Grid], torch.Tensor]


class Kernels:
    """The pieces of the trunk a fast path may replace; each default is what the reference modules do."""

    def attention_for_scale(self, crpe: ConvRelPosEnc) -> ScaleAttention:
        """Factorized attention with CRPE for the blocks of one scale (called once per scale and call, so a
        path can prepare the scale's CRPE weights once)."""
        return lambda attn, x, grid: attn(x, grid)

    def add_position(self, cpe: ConvPosEnc, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``x`` with CPE added to its image tokens: ``[B, 1+H*W, C]``."""
        return cpe(x, grid)

    def add_mlp(self, x: torch.Tensor, norm: nn.LayerNorm, mlp: nn.Module, drop_path: nn.Module) -> torch.Tensor:
        """The MLP residual ``x + drop_path(mlp(norm(x)))``."""
        return x + drop_path(mlp(norm(x)))

    def mix(self, outs: list[torch.Tensor], grids: Sequence[Grid]) -> list[torch.Tensor]:
        """Co-scale feature interpolation of the scales' attention outputs (``models.blocks.interpolation_mix``)."""
        return interpolation_mix(outs, list(grids))

    def run_blocks(self, stage: nn.Module, x: torch.Tensor, block: BlockRunner) -> torch.Tensor:
        """``x`` through the stage's serial blocks in order, recomputed in backward with grad checkpointing."""
        for serial_block in stage.blocks:
            x = checkpointed(stage.grad_checkpointing, block, serial_block, x)
        return x


def checkpointed(enabled: bool, fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)``, its activations recomputed in backward when ``enabled`` and autograd is on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def factorized_attention(
    attn: FactorizedAttention, x: torch.Tensor, grid: Grid, encode_values: ValueEncoder, heads_as_slices: bool
) -> torch.Tensor:
    """``FactorizedAttention``'s math on the ``[B, N, C]`` projections: ``[B, N, C]`` -> ``[B, N, C]``.

    q, k and v stay strided views of one projection. With ``heads_as_slices`` each head's product reads
    its channel slice in place (BLAS takes strided views: no permuted copies; pays in inference on long
    sequences); otherwise batched einsums over ``[B, N, h, d]`` views. The attention scale multiplies the
    small context instead of the output, and CRPE is added into the output (made here) in place.
    """
    q, k, v = attn.qkv(x).chunk(3, dim=-1)  # [B, N, C] each
    weights = k.softmax(dim=1)  # over tokens
    if heads_as_slices:
        heads = _head_slices(x.shape[-1], attn.num_heads)
        context = torch.stack([weights[:, :, s].transpose(1, 2) @ v[:, :, s] for s in heads], dim=1)  # [B, h, d, d]
        context = context * attn.scale
        out = torch.cat([q[:, :, s] @ context[:, i] for i, s in enumerate(heads)], dim=-1)  # [B, N, C]
    else:
        context = torch.einsum("bnhk,bnhv->bhkv", _split_heads(weights, attn), _split_heads(v, attn)) * attn.scale
        out = torch.einsum("bnhk,bhkv->bnhv", _split_heads(q, attn), context).flatten(2)  # [B, N, C]
    out[:, 1:].addcmul_(q[:, 1:], encode_values(v, grid))  # CRPE on image tokens, zero for CLS
    return attn.proj(out)


def _split_heads(x: torch.Tensor, attn: FactorizedAttention) -> torch.Tensor:
    return x.unflatten(-1, (attn.num_heads, -1))  # [B, N, C] -> [B, N, h, d]


def _head_slices(channels: int, num_heads: int) -> list[slice]:
    d = channels // num_heads
    return [slice(i * d, (i + 1) * d) for i in range(num_heads)]


def largest_window(crpe: ConvRelPosEnc) -> int:
    """The side of CRPE's largest depthwise window (7 in the released models)."""
    return max(conv.kernel_size[0] for conv in crpe.convs)


def merged_crpe_weights(crpe: ConvRelPosEnc) -> tuple[torch.Tensor, torch.Tensor, int]:
    """CRPE's window groups as one depthwise conv: its weight ``[C, 1, k, k]`` (the smaller kernels zero-padded to
    the largest window ``k``), its bias ``[C]`` and its padding."""
    largest = largest_window(crpe)
    weight = torch.cat([F.pad(conv.weight, [(largest - conv.kernel_size[0]) // 2] * 4) for conv in crpe.convs])
    bias = torch.cat([conv.bias for conv in crpe.convs])
    return weight, bias, largest // 2


def merged_crpe(crpe: ConvRelPosEnc) -> ValueEncoder:
    """CRPE's window groups as one depthwise conv (``merged_crpe_weights``): the same numbers in one call, without
    copying each group's channels out of ``v``."""
    weight, bias, padding = merged_crpe_weights(crpe)

    def encode_values(v: torch.Tensor, grid: Grid) -> torch.Tensor:
        v_image = tokens_to_nchw(v, grid)  # [B, C, H, W] view
        return nchw_to_tokens(F.conv2d(v_image, weight, bias, padding=padding, groups=weight.shape[0]))

    return encode_values
