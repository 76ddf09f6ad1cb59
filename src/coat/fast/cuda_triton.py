"""CUDA: the reference modules, except factorized attention, whose context and read (with CRPE's product and
the heads merged into channels) are the Triton kernels of ``triton_attention``; CRPE's depthwise convs stay
cuDNN's.

Opt-in (``coat.fast.only("cuda_triton")``) until ``benchmarks/gpu.py`` measures it against the reference
on a GPU: no GPU has run it yet. On CPU it runs under ``TRITON_INTERPRET=1`` only (the tests call
``PATH.tokens`` directly).
"""

from __future__ import annotations

import torch

from ..models.layers import ConvRelPosEnc, FactorizedAttention, Grid
from .kernels import Kernels, ScaleAttention
from .path import SIZE_FIELDS, Condition, FastPath


class TritonKernels(Kernels):
    """Factorized attention's context and read as Triton kernels; everything else the reference modules."""

    def attention_for_scale(self, crpe: ConvRelPosEnc) -> ScaleAttention:
        from .triton_attention import factorized_context, factorized_read  # imports Triton only when the path runs

        def attention(attn: FactorizedAttention, x: torch.Tensor, grid: Grid) -> torch.Tensor:
            q, k, v = attn.project(x)  # [B, h, N, d] views of one projection
            encoded = crpe.encode_values(v, grid)  # [B, h, H*W, d]
            return attn.proj(factorized_read(q, factorized_context(k, v), encoded, attn.scale))  # [B, N, C]

        return attention


PATH = FastPath(
    "cuda_triton",
    TritonKernels(),
    conditions=(
        Condition("a CUDA tensor", lambda model, x: x.device.type == "cuda"),
        Condition("grad checkpointing off", lambda model, x: not model.grad_checkpointing),
    ),
    config={**SIZE_FIELDS, "coscale": ("interpolate",)},
    measured=False,
)
