"""The building blocks of CoaT: patch embedding, convolutional position encodings, factorized
attention and the MLP.

Token layout throughout: ``[B, 1 + H*W, C]`` with the CLS token first and image tokens in
row-major (H, W) order, i.e. the image part is NHWC. ``tokens_to_nchw`` views the image part
as an NCHW tensor without copying (channels-last strides), which is what the depthwise
convolutions consume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import tiled_mlp
from .grouped_conv import GroupedDepthwiseConv
from .tiled_mlp import NormMlpFunction, tile_rows

Grid = tuple[int, int]
SLICED_HEADS_MIN_TOKENS = 1024  # 56x56 (stage 1 at 224) uses slices; 28x28 and smaller use einsum


def tokens_to_nchw(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """View the image tokens of ``[B, 1+H*W, C]`` as ``[B, C, H, W]`` (no copy)."""
    return tokens[:, 1:].unflatten(1, grid).permute(0, 3, 1, 2)


def nchw_to_tokens(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]`` (a view when ``feature`` is channels-last)."""
    return feature.permute(0, 2, 3, 1).flatten(1, 2)


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
    """Convolutional position encoding: image tokens += depthwise 3x3 conv of themselves."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        image = tokens_to_nchw(x, grid)  # [B, C, H, W] view
        if eager_cpu_inference(x):  # add into x's image tokens: no concatenation with the CLS token
            image += self.proj(image)
            return x
        encoded = image + self.proj(image)
        return torch.cat((x[:, :1], nchw_to_tokens(encoded)), dim=1)  # [B, 1+H*W, C]


class ConvRelPosEnc(nn.Module):
    """Convolutional relative position encoding ``q * dwconv(v)`` on image tokens (this module: the dwconv).

    Heads are split into groups, each with its own depthwise window (``{3: 2, 5: 3, 7: 3}``
    means the first 2 heads' channels use a 3x3 window, the next 3 a 5x5, the last 3 a 7x7).
    Without autograd the groups run as one depthwise conv whose smaller kernels are zero-padded to
    the largest window: the same numbers in one call, without copying each group's channels out of
    ``v``. With autograd each group runs its own conv on a contiguous channels-last copy of its
    channels (``GroupedDepthwiseConv``, which keeps no copies for backward): the backward passes of
    the small windows cost less than those of a padded 7x7 window over all channels (BENCHMARKS.md).
    """

    def __init__(self, head_dim: int, windows: dict[int, int]) -> None:
        super().__init__()
        channel_splits = [heads * head_dim for heads in windows.values()]
        self.convs = nn.ModuleList(
            nn.Conv2d(ch, ch, window, padding=window // 2, groups=ch) for window, ch in zip(windows, channel_splits)
        )
        self.largest_window = max(windows)

    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The groups' kernels zero-padded to the largest window and stacked: ``[C, 1, k, k]``, bias ``[C]``."""
        padded = [F.pad(conv.weight, [(self.largest_window - conv.kernel_size[0]) // 2] * 4) for conv in self.convs]
        return torch.cat(padded), torch.cat([conv.bias for conv in self.convs])

    def forward(self, v_image: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Depthwise convs of the values: ``[B, H*W, C]`` -> ``[B, H*W, C]`` (the caller multiplies by q)."""
        v_nchw = v_image.transpose(1, 2).unflatten(2, grid)  # [B, C, H, W] view
        if torch.is_grad_enabled():
            encoded = GroupedDepthwiseConv.apply(v_nchw, *[conv.weight for conv in self.convs],
                                                 *[conv.bias for conv in self.convs])  # [B, C, H, W]
        else:
            weight, bias = self.merged_kernel()
            encoded = F.conv2d(v_nchw, weight, bias, padding=self.largest_window // 2, groups=v_nchw.shape[1])
        return encoded.flatten(2).transpose(1, 2)


class FactorizedAttention(nn.Module):
    """Factorized attention ``scale * q @ (softmax_over_tokens(k)^T @ v)`` plus CRPE.

    Split into ``project_qkv`` / ``context`` / ``attend`` so that co-scale attention can combine
    contexts computed from other scales' keys and values. In inference on long sequences, heads
    are slices of the channels of the ``[B, N, C]`` projections (strided views that BLAS reads
    directly), so no permuted copies of q, k or v are made; elsewhere batched einsums are faster.
    Both give the same numbers.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, N, C]`` -> q, k, v, each ``[B, N, C]`` (strided views of one projection)."""
        return self.qkv(x).chunk(3, dim=-1)

    def _head_slices(self, channels: int) -> list[slice]:
        d = channels // self.num_heads
        return [slice(i * d, (i + 1) * d) for i in range(self.num_heads)]

    def context(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-head ``scale * softmax_over_tokens(k)^T @ v``: ``[B, N, C]`` x2 -> ``[B, h, d, d]``.

        The attention scale is applied to the small context instead of the ``[B, N, C]`` output.
        """
        weights = k.softmax(dim=1)  # [B, N, C], over tokens
        if not self._heads_as_slices(k):
            return torch.einsum("bnhk,bnhv->bhkv", self._split_heads(weights), self._split_heads(v)) * self.scale
        context = torch.stack([weights[:, :, s].transpose(1, 2) @ v[:, :, s] for s in self._head_slices(k.shape[-1])],
                              dim=1)  # [B, h, d, d]
        return context * self.scale

    def attend(
        self, q: torch.Tensor, context: torch.Tensor, v: torch.Tensor, grid: Grid, crpe: ConvRelPosEnc
    ) -> torch.Tensor:
        """Queries read the context, plus CRPE on image tokens (zero for CLS), then ``proj``."""
        if not self._heads_as_slices(q):
            out = torch.einsum("bnhk,bhkv->bnhv", self._split_heads(q), context).flatten(2)  # [B, N, C]
        else:  # BLAS reads each head's channels in place, no permuted copies
            heads = self._head_slices(q.shape[-1])
            out = torch.cat([q[:, :, s] @ context[:, i] for i, s in enumerate(heads)], dim=-1)  # [B, N, C]
        encoded_v = crpe(v[:, 1:], grid)  # [B, H*W, C]
        if tracing():  # exporters record in-place slice updates with fixed shapes
            out = torch.cat((out[:, :1], out[:, 1:] + q[:, 1:] * encoded_v), dim=1)
        else:
            out[:, 1:].addcmul_(q[:, 1:], encoded_v)  # in place: one pass less
        return self.proj(out)

    @staticmethod
    def _heads_as_slices(x: torch.Tensor) -> bool:
        """Per-head slices pay off in inference on long token sequences; batched einsums elsewhere
        (fewer ops to differentiate, fewer launches on short sequences). See BENCHMARKS.md."""
        return not torch.is_grad_enabled() and x.shape[1] >= SLICED_HEADS_MIN_TOKENS

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, N, C] -> [B, N, h, d]

    def forward(self, x: torch.Tensor, grid: Grid, crpe: ConvRelPosEnc) -> torch.Tensor:
        q, k, v = self.project_qkv(x)
        return self.attend(q, self.context(k, v), v, grid, crpe)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2.

    On CPU, blocks call ``residual``, which runs in row tiles (see ``tiled_mlp``); tracing,
    compilation and other devices use the plain modules.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def residual(self, x: torch.Tensor, norm: nn.LayerNorm, drop_path: nn.Module) -> torch.Tensor:
        """``x + drop_path(mlp(norm(x)))``, in row tiles on CPU (see ``tiled_mlp``).

        Inference adds into ``x`` in place; training uses ``NormMlpFunction`` (recomputes in backward).
        """
        if eager_cpu_inference(x) and x.is_contiguous():
            return self._residual_in_row_tiles_(x, norm)
        if _use_tiled_cpu_training(x, self.fc1.out_features):
            rows = x.reshape(-1, x.shape[-1])  # [B*N, C]
            branch = NormMlpFunction.apply(rows, norm.weight, norm.bias, self.fc1.weight, self.fc1.bias,
                                           self.fc2.weight, self.fc2.bias, norm.eps,
                                           tile_rows(self.fc1.out_features))
            return x + drop_path(branch.view_as(x))
        return x + drop_path(self(norm(x)))

    def _residual_in_row_tiles_(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """Tokens are independent here, so after one norm over all rows (one call costs less than one per
        tile), each tile of rows runs MLP -> add on its own and its hidden activations stay in cache
        instead of making a round trip to memory (same numbers). The GELU runs in place and fc2
        accumulates straight into the tile (MKL's addmm beats oneDNN's fused linear + GELU on these
        shapes, see BENCHMARKS.md)."""
        rows = x.view(-1, x.shape[-1])  # [B*N, C]
        rows_per_tile = tile_rows(self.fc1.out_features)
        for tile, normed in zip(rows.split(rows_per_tile), norm(rows).split(rows_per_tile)):
            hidden = torch.addmm(self.fc1.bias, normed, self.fc1.weight.t())  # [rows, H]
            torch.ops.aten.gelu_(hidden)
            tile.addmm_(hidden, self.fc2.weight.t()).add_(self.fc2.bias)  # [rows, C]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """True in eager, gradient-free CPU float32 inference: row tiles and sample chunks pay, and blocks may
    update the tensors they own in place."""
    return _cpu_float32_inference(x) and not torch.compiler.is_compiling() and not tracing()


def compiled_cpu_inference(x: torch.Tensor) -> bool:
    """True while ``torch.compile`` (not ``torch.export``) traces gradient-free CPU float32 inference."""
    return _cpu_float32_inference(x) and torch.compiler.is_compiling() and not torch.compiler.is_exporting()


def _cpu_float32_inference(x: torch.Tensor) -> bool:
    """Gradient-free CPU inference computing in float32 (no autocast to a lower precision)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def _use_tiled_cpu_training(x: torch.Tensor, hidden_dim: int) -> bool:
    """True in eager CPU float32 training (autograd on, no autocast) with hidden activations large enough
    that recomputing them pays (``tiled_mlp.RECOMPUTE_MIN_HIDDEN_ELEMENTS``)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not tracing()
        and x.numel() // x.shape[-1] * hidden_dim >= tiled_mlp.RECOMPUTE_MIN_HIDDEN_ELEMENTS  # last: no size guards
    )


def tracing() -> bool:
    """True while TorchScript tracing or ONNX export records the model."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
