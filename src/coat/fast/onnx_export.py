"""The graph ``coat export --format onnx`` writes: the reference math in the forms ONNX Runtime runs fast.

Chosen by the seam only while ``torch.onnx.export`` traces the model, so the file holds these ops and ONNX
Runtime runs them. Measured with ONNX Runtime 1.32's CPU provider (default optimisation) on the 2-core Xeon VM,
coat_lite_tiny at 224x224, against the reference modules' graph (BENCHMARKS.md, "Deploying on CPUs"):
- the softmax over tokens runs on the last axis: the context is ``softmax(k^T) @ v`` with ``k^T`` ``[B, h, d, N]``
  (the reference's ``softmax(k, dim=2)^T`` exports as a softmax over a middle axis between transposes);
- CRPE's window groups run as one depthwise conv with the smaller kernels zero-padded to the largest window: one
  conv and one pair of ONNX Runtime's layout reorders per attention instead of three, no split and concat;
- CRPE is added to the image tokens' rows only, the CLS row passing through (no zero row padded in).
The reference ``ConvPosEnc`` itself adds in the tokens' layout, a form ONNX Runtime runs fast: the layout change into
the conv has the conv as its only reader, so ONNX Runtime folds both transposes into its layout reorders
(``ReorderInput`` / ``ReorderOutput`` with ``channels_last``); measured on the Zen 4 EPYC VM (interleaved) against
adding in ``[B, C, H, W]``: coat_lite_tiny 1.05x / 1.07x at batch 1 / 16, coat_tiny 1.02x / 1.03x.
Together with opset 20's ``Gelu`` (``coat.export``: ONNX Runtime fuses it with the fc1 bias into ``BiasGelu``).
"""

from __future__ import annotations

import torch

from ..models.layers import ConvRelPosEnc, FactorizedAttention, Grid
from .kernels import Kernels, ScaleAttention, ValueEncoder, merged_crpe
from .path import SIZE_FIELDS, Condition, FastPath


class OnnxExportKernels(Kernels):
    """Attention in the forms above; every other piece is the reference module's."""

    def attention_for_scale(self, crpe: ConvRelPosEnc) -> ScaleAttention:
        encode_values = merged_crpe(crpe)
        return lambda attn, x, grid: last_axis_attention(attn, x, grid, encode_values)


def last_axis_attention(
    attn: FactorizedAttention, x: torch.Tensor, grid: Grid, encode_values: ValueEncoder
) -> torch.Tensor:
    """``FactorizedAttention``'s math with the softmax on the last axis: ``[B, N, C]`` -> ``[B, N, C]``."""
    q, k, v = attn.qkv(x).chunk(3, dim=-1)  # [B, N, C] each
    heads = (attn.num_heads, -1)
    keys = k.unflatten(-1, heads).permute(0, 2, 3, 1)  # [B, h, d, N]
    values = v.unflatten(-1, heads).transpose(1, 2)  # [B, h, N, d]
    context = keys.softmax(dim=-1) @ values * attn.scale  # [B, h, d, d]
    out = (q.unflatten(-1, heads).transpose(1, 2) @ context).transpose(1, 2).flatten(2)  # [B, N, C]
    image = out[:, 1:] + q[:, 1:] * encode_values(v, grid)  # CRPE on the image tokens: [B, H*W, C]
    return attn.proj(torch.cat((out[:, :1], image), dim=1))


PATH = FastPath(
    "onnx_export",
    OnnxExportKernels(),
    conditions=(Condition("ONNX export", lambda model, x: torch.onnx.is_in_onnx_export()),),
    config={**SIZE_FIELDS, "coscale": ("interpolate",)},
)
