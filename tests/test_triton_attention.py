"""The Triton attention kernels against the reference math, values and gradients: on a CUDA device where there
is one, else on CPU through Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 before Triton loads)."""

import pytest
import torch

pytest.importorskip("triton")  # comes with PyTorch's Linux wheels; absent on some platforms

from coat.fast import triton_attention
from coat.models.layers import factorized_context

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def qkv_views(batch: int, heads: int, tokens: int, dim: int, dtype: torch.dtype):
    """k and v as the model makes them: strided views of one [B, N, 3, h, d] projection."""
    torch.manual_seed(tokens * dim)
    qkv = (2 * torch.randn(batch, tokens, 3, heads, dim, device=DEVICE)).to(dtype).requires_grad_()
    views = qkv.permute(2, 0, 3, 1, 4)  # [3, B, h, N, d]
    return qkv, views[1], views[2]


@pytest.mark.skipif(DEVICE == "cuda", reason="compiled for the GPU there")
def test_the_kernels_run_in_the_interpreter():
    assert "Interpreted" in type(triton_attention._forward_kernel).__name__


@pytest.mark.parametrize("tokens,dim", [(1 + 6 * 6, 8), (1 + 9 * 11, 19), (1 + 8 * 8, 40), (5, 64)])
def test_values_and_gradients_equal_the_reference(tokens, dim):
    qkv, k, v = qkv_views(2, 3, tokens, dim, torch.float32)
    upstream = torch.randn(2, 3, dim, dim, device=DEVICE)
    expected = factorized_context(k, v)
    (expected * upstream).sum().backward()
    expected_grad, qkv.grad = qkv.grad, None
    context = triton_attention.factorized_context(k, v)
    (context * upstream).sum().backward()
    assert context.dtype == torch.float32
    assert (context - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (qkv.grad - expected_grad).abs().max() <= 1e-5 * expected_grad.abs().max()


def test_bfloat16_inputs_are_computed_in_float32():
    qkv, k, v = qkv_views(2, 2, 1 + 7 * 7, 16, torch.bfloat16)
    context = triton_attention.factorized_context(k, v)
    expected = factorized_context(k.float(), v.float())
    assert context.dtype == torch.bfloat16
    assert (context.float() - expected).abs().max() <= 1e-2 * expected.abs().max()
    context.float().sum().backward()
    assert qkv.grad.dtype == torch.bfloat16 and torch.isfinite(qkv.grad.float()).all()


def test_large_logits_do_not_overflow():
    _qkv, k, v = qkv_views(1, 1, 100, 8, torch.float32)
    with torch.no_grad():
        k.mul_(300.0)  # exp(600) overflows float32 unless the maxima are subtracted
    context = triton_attention.factorized_context(k, v)
    assert torch.isfinite(context).all()
    assert (context - factorized_context(k, v)).abs().max() <= 1e-5 * context.abs().max()


def reference_read(q, context, encoded, scale):
    """FactorizedAttention.read's math before the projection, heads merged: [B, N, C]."""
    out = scale * (q @ context) + torch.nn.functional.pad(q[:, :, 1:] * encoded, (0, 0, 1, 0))
    return out.transpose(1, 2).flatten(2)


@pytest.mark.parametrize("channels_last_conv", [True, False])
@pytest.mark.parametrize("tokens,dim", [(1 + 6 * 6, 8), (1 + 9 * 11, 19), (1 + 8 * 8, 40), (2, 16)])
def test_read_values_and_gradients_equal_the_reference(tokens, dim, channels_last_conv):
    qkv, _, _ = qkv_views(2, 3, tokens, dim, torch.float32)
    q = qkv.permute(2, 0, 3, 1, 4)[0]
    context = torch.randn(2, 3, dim, dim, device=DEVICE, requires_grad=True)
    # CRPE's conv output viewed as [B, h, H*W, d]: channel-contiguous (channels-last conv) or token-contiguous
    image = (
        torch.randn(2, tokens - 1, 3, dim, device=DEVICE).permute(0, 2, 1, 3)
        if channels_last_conv
        else torch.randn(2, 3, dim, tokens - 1, device=DEVICE).transpose(2, 3)
    )
    encoded = image.detach().requires_grad_()
    upstream = torch.randn(2, tokens, 3 * dim, device=DEVICE)
    leaves = (qkv, context, encoded)
    expected = reference_read(q, context, encoded, 0.3)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    out = triton_attention.factorized_read(q, context, encoded, 0.3)
    grads = torch.autograd.grad((out * upstream).sum(), leaves)
    assert out.shape == (2, tokens, 3 * dim) and out.is_contiguous()
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()
    for grad, expected_grad in zip(grads, expected_grads):
        assert (grad - expected_grad).abs().max() <= 1e-5 * expected_grad.abs().max()


def path_logits(model, x):
    """Logits through the cuda_triton path's trunk (called directly: on CPU the seam never picks it)."""
    from coat.fast import cuda_triton

    tokens, _ = cuda_triton.PATH.tokens(model, x)
    return model.forward_head(model.head_features(tokens))


@pytest.mark.parametrize("name", ["coat_lite_tiny", "small co-scale"])
def test_the_cuda_triton_path_equals_the_reference_values_and_gradients(name):
    import coat
    from conftest import small_coscale_model

    # the co-scale kinds (parallel blocks: every kernel call site) on a narrow CoaT, for the interpreter's sake
    model = small_coscale_model(10) if name == "small co-scale" else coat.create_model(name, num_classes=10)
    model = model.to(DEVICE).train()
    x = torch.randn(2, 3, 32, 64, device=DEVICE)  # stage 1: 1 + 8 * 16 tokens, across two token blocks
    expected = model.forward_head(model.head_features(model.reference_tokens(x)[0]))
    expected.square().sum().backward()
    expected_grads = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    logits = path_logits(model, x)
    logits.square().sum().backward()
    assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max()
    for n, p in model.named_parameters():
        assert (p.grad - expected_grads[n]).abs().max() <= 1e-4 * expected_grads[n].abs().max() + 1e-8, n


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["coat_tiny"])  # serial and parallel blocks: every kernel call site
def test_the_cuda_triton_path_reproduces_the_fixtures(variant, authors_checkpoint):
    import coat
    from fixture_weights import FIXTURES

    expected = torch.load(FIXTURES / f"{variant}_224x224.pt", weights_only=True)
    model = coat.create_model(variant, pretrained=authors_checkpoint(variant)).to(DEVICE).eval()
    with torch.no_grad():
        logits = path_logits(model, expected["input"].to(DEVICE)).cpu()
    assert (logits - expected["logits"]).abs().max().item() < 1e-4


def test_the_seam_runs_the_unmeasured_path_only_where_named():
    from coat import fast

    assert "cuda_triton" in fast.NAMES and "cuda_triton" not in fast._allowed
    with fast.only("cuda_triton"):
        assert fast._allowed == {"cuda_triton"}
