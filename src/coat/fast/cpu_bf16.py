"""Eager CPU bf16 inference on oneDNN's bf16 kernels (AMX or AVX-512 BF16): a bf16 model on bf16 images.

Measured on a 2-core Intel Xeon with AMX and a 2-core AMD EPYC with AVX-512 BF16 against the reference modules in
bf16, our float32 path and OpenVINO's bf16 (BENCHMARKS.md, "Deploying on CPUs"):
- every Linear runs as oneDNN's fused linear (``mkldnn::_linear_pointwise``) on its weight reordered once into
  oneDNN's blocked layout (kept while the weight is unchanged, ``weight_forms``: in-place changes and optimizer
  steps are seen): fc1 with the GELU fused, fc2 with the residual addition fused; PyTorch's own bf16 ``linear``
  copies its output and runs GELU apart;
- the depthwise convs (CPE; CRPE's windows merged into one, as in ``cpu_inference``) run as oneDNN's convolution
  (``mkldnn::_convolution_pointwise``) on weights reordered once the same way: 3-4x ``conv2d`` at batch 1;
- factorized attention over all heads at once, as block-diagonal matrices: ``softmax(k)^T @ v`` over all channels
  ``[B, C, C]``, masked to the heads' d x d blocks with the scale folded into the mask, then one ``baddbmm`` adds
  ``q @ context`` onto CRPE's product: no per-head transposes or copies (the zeroed blocks cost h times the
  context's few FLOPs);
- the rest as ``cpu_inference``: sample chunks, CRPE's windows as one conv, additions into tensors made here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..models.layers import ConvPosEnc, ConvRelPosEnc, FactorizedAttention, Grid, nchw_to_tokens, tokens_to_nchw
from .cpu_inference import InferenceKernels
from .kernels import ScaleAttention, ValueEncoder, merged_crpe_weights
from .path import (
    AUTOGRAD_OFF,
    EVAL_MODE,
    FLOAT32,
    NATIVE_BF16,
    NO_CPU_AUTOCAST,
    ON_CPU,
    SIZE_FIELDS,
    Condition,
    FastPath,
    Tokens,
)
from .tiled_mlp import tile_rows
from .trunk import run_trunk
from .weight_forms import FormCache

# 4 MiB of bf16 hidden activations per MLP row tile: the best of 1-4 MiB with coat_lite_tiny at batch 1 and 16
TILE_HIDDEN_ELEMENTS = 2**21
_head_masks: dict[tuple[int, int, float], torch.Tensor] = {}

# weight [out, in] -> itself in oneDNN's blocked layout for _linear_pointwise, made again when it changes
packed = FormCache(lambda weight: [weight], torch.ops.mkldnn._reorder_linear_weight)


def depthwise_conv(image: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """A depthwise conv (stride 1) of ``image`` ``[B, C, H, W]`` -> ``[B, C, H, W]`` (channels-last), on a weight
    of ``packed_conv_weight``."""
    channels = image.shape[1]
    return torch.ops.mkldnn._convolution_pointwise(
        image, packed_weight, bias, [padding] * 2, [1, 1], [1, 1], channels, "none", [], ""
    )


def packed_conv_weight(weight: torch.Tensor, padding: int) -> torch.Tensor:
    """A depthwise ``weight`` ``[C, 1, k, k]`` in oneDNN's blocked layout for ``depthwise_conv``."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, [padding] * 2, [1, 1], [1, 1], weight.shape[0])


# CPE -> its conv's weight packed for depthwise_conv, made again when it changes
packed_cpe_weight = FormCache(
    lambda cpe: [cpe.proj.weight], lambda cpe: packed_conv_weight(cpe.proj.weight, cpe.proj.padding[0])
)


def _packed_merged_crpe(crpe: ConvRelPosEnc) -> tuple[torch.Tensor, torch.Tensor, int]:
    weight, bias, padding = merged_crpe_weights(crpe)
    return packed_conv_weight(weight, padding), bias, padding


# CRPE -> its windows merged into one conv (weight packed for depthwise_conv, bias, padding), made again on a change
merged_packed_crpe = FormCache(
    lambda crpe: [t for conv in crpe.convs for t in (conv.weight, conv.bias)], _packed_merged_crpe
)


def packed_crpe(crpe: ConvRelPosEnc) -> ValueEncoder:
    """``merged_crpe``'s one conv on its merged weight, packed once while the window convs' weights are unchanged."""
    weight, bias, padding = merged_packed_crpe(crpe)

    def encode_values(v: torch.Tensor, grid: Grid) -> torch.Tensor:
        return nchw_to_tokens(depthwise_conv(tokens_to_nchw(v, grid), weight, bias, padding))  # [B, H*W, C]

    return encode_values


def fused_linear(
    x: torch.Tensor, layer: nn.Linear, activation: str = "none", residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``layer(x)`` on rows ``[M, in]`` -> ``[M, out]``, then GELU (``activation="gelu"``) or ``+ residual``,
    fused into oneDNN's product."""
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed(layer.weight), layer.bias, "add")
    algorithm = "none" if activation == "gelu" else ""  # the exact (erf) GELU, as nn.GELU()
    return torch.ops.mkldnn._linear_pointwise(x, packed(layer.weight), layer.bias, activation, [], algorithm)


def head_mask(channels: int, num_heads: int, scale: float) -> torch.Tensor:
    """``[C, C]`` bf16: ``scale`` on the heads' diagonal d x d blocks, zero elsewhere."""
    key = (channels, num_heads, scale)
    if key not in _head_masks:
        block = torch.full((channels // num_heads,) * 2, scale)
        _head_masks[key] = torch.block_diag(*[block] * num_heads).to(torch.bfloat16)
    return _head_masks[key]


def block_diagonal_attention(
    attn: FactorizedAttention, x: torch.Tensor, grid: Grid, encode_values: ValueEncoder
) -> torch.Tensor:
    """``FactorizedAttention``'s math with every head in one product: ``[B, N, C]`` -> ``[B, N, C]``."""
    batch, tokens, channels = x.shape
    qkv = fused_linear(x.reshape(-1, channels), attn.qkv).view(batch, tokens, -1)  # [B, N, 3C]
    q, k, v = qkv.chunk(3, dim=-1)  # [B, N, C] views
    weights = k.transpose(1, 2).softmax(dim=-1)  # [B, C, N]: over tokens
    context = torch.bmm(weights, v) * head_mask(channels, attn.num_heads, attn.scale)  # [B, C, C]
    crpe = torch.empty_like(x)  # [B, N, C]: zero for CLS, q * CRPE(v) for the image tokens
    crpe[:, :1] = 0
    torch.mul(q[:, 1:], encode_values(v, grid), out=crpe[:, 1:])
    out = torch.baddbmm(crpe, q, context)  # [B, N, C]
    return fused_linear(out.view(-1, channels), attn.proj).view(batch, tokens, channels)


class Bf16InferenceKernels(InferenceKernels):
    """oneDNN's fused bf16 linears, attention as block-diagonal products; the rest as ``cpu_inference``."""

    def attention_for_scale(self, crpe: ConvRelPosEnc) -> ScaleAttention:
        encode_values = packed_crpe(crpe)
        return lambda attn, x, grid: block_diagonal_attention(attn, x, grid, encode_values)

    def add_position(self, cpe: ConvPosEnc, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``ConvPosEnc`` added into the image tokens of ``x`` (as ``cpu_inference``), on the packed conv."""
        image = tokens_to_nchw(x, grid)  # [B, C, H, W] view
        image += depthwise_conv(image, packed_cpe_weight(cpe), cpe.proj.bias, cpe.proj.padding[0])
        return x

    def add_mlp(self, x: torch.Tensor, norm: nn.LayerNorm, mlp: nn.Module, drop_path: nn.Module) -> torch.Tensor:
        """``x + mlp(norm(x))`` tile by tile of rows (fc1 + GELU, then fc2 + the tile's residual), as a new tensor:
        one tile's output is the result as it is (at batch 1, every stage's rows fit one tile)."""
        rows = x.view(-1, x.shape[-1])  # [B*N, C]
        rows_per_tile = tile_rows(mlp.fc1.out_features, TILE_HIDDEN_ELEMENTS)
        outs = [
            fused_linear(fused_linear(normed, mlp.fc1, "gelu"), mlp.fc2, residual=tile)  # [rows, H] -> [rows, C]
            for tile, normed in zip(rows.split(rows_per_tile), norm(rows).split(rows_per_tile))
        ]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).view_as(x)


@dataclass(frozen=True)
class AutocastBf16Path(FastPath):
    """The ``cpu_bf16`` kernels for a float32 model called under ``torch.autocast("cpu", torch.bfloat16)``: they
    run with autocast off on a bf16 copy of the model (``bf16_copy``) and the images cast to bf16, so every
    product is bf16 as under autocast, and the logits come out of the model's own head under autocast."""

    def tokens(self, model: nn.Module, x: torch.Tensor) -> Tokens:
        with torch.autocast("cpu", enabled=False):
            return run_trunk(bf16_copy(model), x.to(torch.bfloat16), self.kernels)


def _bf16_weights_only(model: nn.Module) -> nn.Module:
    """A bf16 copy of ``model`` without its gradients (a model evaluated during training holds them)."""
    clone = copy.deepcopy(model)
    for parameter in clone.parameters():
        parameter.grad = None
    return clone.to(torch.bfloat16)


# model -> a bf16 copy of it, made again when a weight changes (weight_forms): half the float32 weights' memory
bf16_copy = FormCache(lambda model: list(model.parameters()), _bf16_weights_only)


def _bf16_autocast(model: nn.Module, x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _bf16_model_and_input(model: nn.Module, x: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.stages[0].parameters())


PATH = FastPath(
    "cpu_bf16",
    Bf16InferenceKernels(),
    conditions=(
        ON_CPU,
        NATIVE_BF16,
        Condition("bf16 weights and inputs (model.to(torch.bfloat16))", _bf16_model_and_input),
        AUTOGRAD_OFF,
        NO_CPU_AUTOCAST,
        EVAL_MODE,
    ),
    config={**SIZE_FIELDS, "coscale": ("interpolate",)},
)

AUTOCAST_PATH = AutocastBf16Path(
    "cpu_bf16_autocast",
    Bf16InferenceKernels(),
    conditions=(
        ON_CPU,
        NATIVE_BF16,
        FLOAT32,
        Condition(
            "float32 weights", lambda model, x: all(p.dtype == torch.float32 for p in model.stages[0].parameters())
        ),
        Condition("CPU autocast to bf16", _bf16_autocast),
        AUTOGRAD_OFF,
        EVAL_MODE,
    ),
    config={**SIZE_FIELDS, "coscale": ("interpolate",)},
)
