"""Factorized attention as Triton kernels (CUDA; CPU under ``TRITON_INTERPRET=1``, which the tests use):
the context ``softmax_over_tokens(k)^T @ v`` and the read ``scale * q @ context + CRPE``.

Context.
The reference (``models.layers.factorized_context``) writes the softmax of k to memory, reads it back
for the product and keeps it for backward: three passes over ``[B, h, N, d]`` tensors and one more
saved. Here the forward reads k and v once, with an online softmax over token blocks (running
column maxima and sums, the ``d x d`` product rescaled as the maxima grow), and keeps only the
column maxima and sums. The backward recomputes the softmax block by block and needs no reduction
over tokens: with ``P = softmax(k)`` and ``C = P^T v``,

    dV = P dC,    dP = v dC^T,    dK = P * (dP - rowsum(C * dC))   (the last per column of P)

since ``sum_n P[n, i] dP[n, i] = sum_j C[i, j] dC[i, j]``.

Read. The reference computes ``q @ context``, scales it, multiplies q by CRPE's convolved values,
pads a CLS row of zeros in front, adds, and transposes the heads back into channels: six passes over
``[B, h, N, d]`` tensors. The read kernel does it in one, writing ``[B, N, C]`` straight into the
layout the output projection reads; its backward makes dq, d(encoded values) and d(context) in one
pass. The depthwise convs of CRPE stay cuDNN's (``ConvRelPosEnc.encode_values``).

Arithmetic is float32 whatever the input dtype; q, k, v and the encoded values may be strided views
(of the qkv projection, of the conv's output): nothing is copied to call the kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_TOKENS = 64


def _block_dim(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs 16+ on each side


@triton.jit
def _forward_kernel(k_ptr, v_ptr, context_ptr, col_max_ptr, col_sum_ptr, heads, tokens, dim,
                    k_sb, k_sh, k_sn, v_sb, v_sh, v_sn,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)  # one (batch, head)
    b, h = pid // heads, pid % heads
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    col_max = tl.full([BLOCK_D], float("-inf"), tl.float32)
    col_sum = tl.zeros([BLOCK_D], tl.float32)
    acc = tl.zeros([BLOCK_D, BLOCK_D], tl.float32)  # [d_k, d_v]
    for start in range(0, tokens, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < tokens
        mask = row_ok[:, None] & col_ok[None, :]
        k = tl.load(k_ptr + b * k_sb + h * k_sh + rows[:, None] * k_sn + cols[None, :], mask=mask, other=0.0)
        v = tl.load(v_ptr + b * v_sb + h * v_sh + rows[:, None] * v_sn + cols[None, :], mask=mask, other=0.0)
        k = tl.where(row_ok[:, None], k.to(tl.float32), float("-inf"))  # padded tokens get no weight
        new_max = tl.maximum(col_max, tl.max(k, axis=0))
        rescale = tl.exp(col_max - new_max)
        p = tl.exp(k - new_max[None, :])  # [BLOCK_N, BLOCK_D]
        col_sum = col_sum * rescale + tl.sum(p, axis=0)
        acc = acc * rescale[:, None] + tl.dot(tl.trans(p), v.to(tl.float32), input_precision=PRECISION)
        col_max = new_max
    acc = acc / col_sum[:, None]
    out = context_ptr + pid * dim * dim + cols[:, None] * dim + cols[None, :]
    tl.store(out, acc, mask=col_ok[:, None] & col_ok[None, :])
    tl.store(col_max_ptr + pid * dim + cols, col_max, mask=col_ok)
    tl.store(col_sum_ptr + pid * dim + cols, col_sum, mask=col_ok)


@triton.jit
def _backward_kernel(k_ptr, v_ptr, context_ptr, grad_ptr, col_max_ptr, col_sum_ptr, dk_ptr, dv_ptr,
                     heads, tokens, dim, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)  # one (batch, head)
    b, h = pid // heads, pid % heads
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    square = pid * dim * dim + cols[:, None] * dim + cols[None, :]
    square_ok = col_ok[:, None] & col_ok[None, :]
    context = tl.load(context_ptr + square, mask=square_ok, other=0.0)
    grad = tl.load(grad_ptr + square, mask=square_ok, other=0.0)  # dC [d_k, d_v], float32
    delta = tl.sum(context * grad, axis=1)  # [d_k]
    col_max = tl.load(col_max_ptr + pid * dim + cols, mask=col_ok, other=0.0)
    col_sum = tl.load(col_sum_ptr + pid * dim + cols, mask=col_ok, other=1.0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < tokens
    mask = row_ok[:, None] & col_ok[None, :]
    k = tl.load(k_ptr + b * k_sb + h * k_sh + rows[:, None] * k_sn + cols[None, :], mask=mask, other=0.0)
    v = tl.load(v_ptr + b * v_sb + h * v_sh + rows[:, None] * v_sn + cols[None, :], mask=mask, other=0.0)
    p = tl.exp(k.to(tl.float32) - col_max[None, :]) / col_sum[None, :]
    p = tl.where(mask, p, 0.0)
    dv = tl.dot(p, grad, input_precision=PRECISION)  # [BLOCK_N, d_v]
    dp = tl.dot(v.to(tl.float32), tl.trans(grad), input_precision=PRECISION)  # [BLOCK_N, d_k]
    dk = p * (dp - delta[None, :])
    out = pid * tokens * dim + rows[:, None] * dim + cols[None, :]
    tl.store(dk_ptr + out, dk, mask=mask)
    tl.store(dv_ptr + out, dv, mask=mask)


@triton.jit
def _read_kernel(q_ptr, context_ptr, enc_ptr, out_ptr, heads, tokens, dim, scale,
                 q_sb, q_sh, q_sn, e_sb, e_sh, e_sn, e_sd,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)  # one (batch, head)
    b, h = pid // heads, pid % heads
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    square_ok = col_ok[:, None] & col_ok[None, :]
    context = tl.load(context_ptr + pid * dim * dim + cols[:, None] * dim + cols[None, :], mask=square_ok,
                      other=0.0).to(tl.float32)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < tokens)[:, None] & col_ok[None, :]
    image = mask & (rows >= 1)[:, None]  # CRPE is zero at the CLS row
    q = tl.load(q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_sn + cols[None, :], mask=mask, other=0.0)
    q = q.to(tl.float32)
    enc = tl.load(enc_ptr + b * e_sb + h * e_sh + (rows[:, None] - 1) * e_sn + cols[None, :] * e_sd, mask=image,
                  other=0.0).to(tl.float32)
    out = scale * tl.dot(q, context, input_precision=PRECISION) + q * enc
    tl.store(out_ptr + (b * tokens + rows[:, None]) * heads * dim + h * dim + cols[None, :], out, mask=mask)


@triton.jit
def _read_backward_kernel(q_ptr, context_ptr, enc_ptr, grad_ptr, dq_ptr, dcontext_ptr, denc_ptr,
                          heads, tokens, dim, scale, q_sb, q_sh, q_sn, e_sb, e_sh, e_sn, e_sd,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)  # one (batch, head): d(context) sums over all its tokens
    b, h = pid // heads, pid % heads
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    square = pid * dim * dim + cols[:, None] * dim + cols[None, :]
    square_ok = col_ok[:, None] & col_ok[None, :]
    context = tl.load(context_ptr + square, mask=square_ok, other=0.0).to(tl.float32)
    dcontext = tl.zeros([BLOCK_D, BLOCK_D], tl.float32)
    for start in range(0, tokens, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        mask = (rows < tokens)[:, None] & col_ok[None, :]
        image = mask & (rows >= 1)[:, None]
        q = tl.load(q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_sn + cols[None, :], mask=mask, other=0.0)
        q = q.to(tl.float32)
        enc = tl.load(enc_ptr + b * e_sb + h * e_sh + (rows[:, None] - 1) * e_sn + cols[None, :] * e_sd,
                      mask=image, other=0.0).to(tl.float32)
        grad = tl.load(grad_ptr + (b * tokens + rows[:, None]) * heads * dim + h * dim + cols[None, :], mask=mask,
                       other=0.0).to(tl.float32)  # d(out) of this head [BLOCK_N, d]
        dq = scale * tl.dot(grad, tl.trans(context), input_precision=PRECISION) + grad * enc
        dcontext += scale * tl.dot(tl.trans(q), grad, input_precision=PRECISION)
        tl.store(dq_ptr + (pid * tokens + rows[:, None]) * dim + cols[None, :], dq, mask=mask)
        tl.store(denc_ptr + (pid * (tokens - 1) + rows[:, None] - 1) * dim + cols[None, :], grad * q, mask=image)
    tl.store(dcontext_ptr + square, dcontext, mask=square_ok)


def _precision(x: torch.Tensor) -> str:
    """Float32 inputs get float32 products (as the reference); lower-precision inputs TF32 ones (autocast)."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    if x.stride(3) != 1:
        raise ValueError("the context kernels read [B, h, N, d] tensors whose last dimension is contiguous")
    return x.stride(0), x.stride(1), x.stride(2)


class FactorizedContext(torch.autograd.Function):
    """``softmax(k, dim=2).transpose(2, 3) @ v`` for ``k``, ``v`` of ``[B, h, N, d]`` -> ``[B, h, d, d]``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads, tokens, dim = k.shape
        context = torch.empty(batch, heads, dim, dim, device=k.device, dtype=torch.float32)
        col_max = torch.empty(batch, heads, dim, device=k.device, dtype=torch.float32)
        col_sum = torch.empty_like(col_max)
        _forward_kernel[(batch * heads,)](k, v, context, col_max, col_sum, heads, tokens, dim, *_strides(k),
                                          *_strides(v), BLOCK_N=BLOCK_TOKENS, BLOCK_D=_block_dim(dim),
                                          PRECISION=_precision(k))
        ctx.save_for_backward(k, v, context, col_max, col_sum)
        return context.to(k.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v, context, col_max, col_sum = ctx.saved_tensors
        batch, heads, tokens, dim = k.shape
        dk = torch.empty(batch, heads, tokens, dim, device=k.device, dtype=k.dtype)
        dv = torch.empty_like(dk)
        grid = (batch * heads, triton.cdiv(tokens, BLOCK_TOKENS))
        _backward_kernel[grid](k, v, context, grad.float().contiguous(), col_max, col_sum, dk, dv, heads, tokens,
                               dim, *_strides(k), *_strides(v), BLOCK_N=BLOCK_TOKENS, BLOCK_D=_block_dim(dim),
                               PRECISION=_precision(k))
        return dk, dv


class FactorizedRead(torch.autograd.Function):
    """``scale * q @ context + pad(q[:, :, 1:] * encoded)`` with the heads merged: ``q`` ``[B, h, N, d]``,
    ``context`` ``[B, h, d, d]``, ``encoded`` (CRPE's convolved values) ``[B, h, N-1, d]`` -> ``[B, N, h*d]``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, q: torch.Tensor, context: torch.Tensor,
                encoded: torch.Tensor, scale: float) -> torch.Tensor:
        batch, heads, tokens, dim = q.shape
        context = context.contiguous()
        out = torch.empty(batch, tokens, heads * dim, device=q.device, dtype=q.dtype)
        grid = (batch * heads, triton.cdiv(tokens, BLOCK_TOKENS))
        _read_kernel[grid](q, context, encoded, out, heads, tokens, dim, scale, *_strides(q), *encoded.stride(),
                           BLOCK_N=BLOCK_TOKENS, BLOCK_D=_block_dim(dim), PRECISION=_precision(q))
        ctx.save_for_backward(q, context, encoded)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, context, encoded = ctx.saved_tensors
        batch, heads, tokens, dim = q.shape
        dq = torch.empty(batch, heads, tokens, dim, device=q.device, dtype=q.dtype)
        dcontext = torch.empty(batch, heads, dim, dim, device=q.device, dtype=torch.float32)
        dencoded = torch.empty(batch, heads, tokens - 1, dim, device=q.device, dtype=encoded.dtype)
        _read_backward_kernel[(batch * heads,)](
            q, context, encoded, grad.contiguous(), dq, dcontext, dencoded, heads, tokens, dim, ctx.scale,
            *_strides(q), *encoded.stride(), BLOCK_N=BLOCK_TOKENS, BLOCK_D=_block_dim(dim),
            PRECISION=_precision(q))
        return dq, dcontext.to(context.dtype), dencoded, None


def factorized_context(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``models.layers.factorized_context`` by the Triton kernels."""
    return FactorizedContext.apply(k, v)


def factorized_read(q: torch.Tensor, context: torch.Tensor, encoded: torch.Tensor, scale: float) -> torch.Tensor:
    """``FactorizedAttention.read`` before its output projection, heads merged: -> ``[B, N, C]``."""
    return FactorizedRead.apply(q, context, encoded, scale)
