"""Every variant: structure, forward/backward at small inputs, feature API, input checks."""

import pytest
import torch

import coat
from coat.commands.model_commands import measured_gmacs

ALL = coat.list_models()
COAT_FULL = [n for n in ALL if not coat.VARIANTS[n].config.is_lite]


def test_list_models_is_the_table():
    assert ALL == ["coat_lite_tiny", "coat_lite_mini", "coat_lite_small", "coat_lite_medium",
                   "coat_lite_medium_384", "coat_tiny", "coat_mini", "coat_small"]


@pytest.mark.parametrize("name", ALL)
def test_param_count_matches_paper(name):
    with torch.device("meta"):
        model = coat.CoaT(coat.variant_config(name))
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == coat.VARIANTS[name].params_m


@pytest.mark.parametrize("name", ALL)
def test_gmacs_match_paper_within_2_percent(name):
    assert measured_gmacs(name) == pytest.approx(coat.VARIANTS[name].gmacs, rel=0.02)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = coat.create_model(name, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", COAT_FULL)
def test_coscale_attention_forward_backward(name):
    model = coat.create_model(name, num_classes=5, coscale="attention")
    x = torch.randn(2, 3, 96, 64)
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # same parameters as the released (interpolation) mode, different mixing
    released = coat.create_model(name, num_classes=5)
    released.load_state_dict(model.state_dict())
    model.eval(), released.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), released(x))


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates_and_feature_info(name):
    model = coat.create_model(name, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        pooled = model(x)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    for feat, info in zip(feats, model.feature_info):
        r = info["reduction"]
        assert feat.shape == (1, info["num_chs"], 64 // r, 96 // r)
    assert pooled.shape == (1, model.num_features)


def test_forward_features_then_head_equals_forward():
    for name in ("coat_lite_tiny", "coat_tiny"):
        model = coat.create_model(name, num_classes=10).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            features = model.forward_features(x)
            assert features.shape == (2, 1 if model.config.is_lite else 3, model.num_features)
            assert torch.allclose(model.forward_head(features), model(x))
            assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (250, 250), (100, 37)])
@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_odd_input_sizes(name, size):
    model = coat.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size))
    h, w = size
    for feat, r in zip(feats, (4, 8, 16, 32)):
        h, w = h // (2 if r > 4 else 4), w // (2 if r > 4 else 4)
        assert feat.shape[-2:] == (h, w)


@pytest.mark.slow
def test_detection_sized_input():
    model = coat.create_model("coat_lite_tiny", num_classes=0).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 800, 1333))
    assert [tuple(f.shape[-2:]) for f in feats] == [(200, 333), (100, 166), (50, 83), (25, 41)]


def test_bad_inputs_raise_clear_errors():
    model = coat.create_model("coat_lite_tiny")
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="unknown model"):
        coat.create_model("coat_huge")
    with pytest.raises(ValueError, match="unknown model options"):
        coat.create_model("coat_tiny", drop_path=0.1)
    with pytest.raises(ValueError, match="coscale"):
        coat.create_model("coat_tiny", coscale="magic")


def test_reset_classifier_and_no_weight_decay():
    model = coat.create_model("coat_lite_tiny")
    model.reset_classifier(12)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 12)
    assert model.config.num_classes == 12
    names = dict(model.named_parameters())
    assert model.no_weight_decay() and all(n in names for n in model.no_weight_decay())


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_grad_checkpointing_same_gradients_less_saved_memory(name):
    model = coat.create_model(name, num_classes=4)
    x = torch.randn(2, 3, 64, 64)

    def grads_and_saved_bytes():
        model.zero_grad()
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).square().sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)

    plain, plain_bytes = grads_and_saved_bytes()
    model.set_grad_checkpointing(True)
    ckpt, ckpt_bytes = grads_and_saved_bytes()
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-5, rtol=1e-4), n
    assert ckpt_bytes < 0.5 * plain_bytes


@pytest.mark.parametrize("chunk_elements", [2**20, 1], ids=["whole-batch", "one-sample-chunks"])
@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_inference_fast_path_equals_training_path(name, chunk_elements, monkeypatch):
    from coat.models import blocks

    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", chunk_elements)
    model = coat.create_model(name, num_classes=10).eval()
    x = torch.randn(3, 3, 160, 128)  # 40x32 stage-1 tokens: the sliced-heads path
    with torch.no_grad():
        fast = model(x)
    assert torch.allclose(fast, model(x), atol=1e-5)


def test_compiled_cpu_inference_runs_the_eager_fast_path(monkeypatch):
    import copy

    from coat.models import blocks

    chunked = []
    samples_per_chunk = blocks.samples_per_chunk
    monkeypatch.setattr(blocks, "samples_per_chunk", lambda t: chunked.append(t.shape) or samples_per_chunk(t))
    model = coat.create_model("coat_lite_tiny", num_classes=10).eval()
    changed = copy.deepcopy(model)  # a copy registers itself: its compiled op must use its own weights
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(1.1)
        for size in [(64, 64), (64, 96)]:  # the second size recompiles with dynamic shapes
            x = torch.randn(2, 3, *size)
            for m in (model, changed):
                eager = m(x)
                chunked.clear()
                compiled = torch.compile(m, fullgraph=True)(x)  # one opaque operator: no graph break
                assert len(chunked) >= 4  # each stage took its eager, chunked path inside the compiled model
                assert torch.allclose(compiled, eager, atol=1e-5)


def test_tiled_mlp_backward_is_exact():
    from coat.models.tiled_mlp import NormMlpFunction

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.double, requires_grad=True)

    rows, dim, hidden = 10, 4, 8  # 3 rows per tile: four tiles, the last one short
    norm = (leaf(dim), leaf(dim))
    fc1, fc2 = (leaf(hidden, dim), leaf(hidden)), (leaf(dim, hidden), leaf(dim))
    inputs = (leaf(rows, dim), *norm, *fc1, *fc2, 1e-6, 3)
    assert torch.autograd.gradcheck(NormMlpFunction.apply, inputs)


def test_grouped_depthwise_conv_backward_is_exact():
    from coat.models.grouped_conv import GroupedDepthwiseConv

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.double, requires_grad=True)

    weights = [leaf(2, 1, 3, 3), leaf(3, 1, 5, 5), leaf(3, 1, 7, 7)]  # CRPE's three windows
    biases = [leaf(w.shape[0]) for w in weights]

    def crpe_of_values(qkv, *weights_then_biases):  # values: a strided view behind the CLS token, as in CRPE
        values = qkv[:, 1:, 16:].transpose(1, 2).unflatten(2, (4, 5))  # [2, 8, 4, 5]
        return GroupedDepthwiseConv.apply(values, *weights_then_biases)

    assert torch.autograd.gradcheck(crpe_of_values, (leaf(2, 21, 24), *weights, *biases))


@pytest.mark.parametrize("recompute", [True, False], ids=["recomputing-mlp", "plain-autograd-mlp"])
@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_training_gradients_equal_timm(name, recompute, monkeypatch):
    pytest.importorskip("timm")
    import coat.models.tiled_mlp as tiled_mlp

    monkeypatch.setattr(tiled_mlp, "RECOMPUTE_MIN_HIDDEN_ELEMENTS", 0 if recompute else 2**62)
    from coat.bench import timm_pair
    from coat.checkpoint import official_to_coat

    ours, peer = timm_pair(name, num_classes=10, img_size=(64, 96))
    x = torch.randn(2, 3, 64, 96)
    for model in (ours, peer):
        model.train()
        model(x).square().sum().backward()
    peer_grads, _ = official_to_coat({n: p.grad for n, p in peer.named_parameters()})
    for n, p in ours.named_parameters():
        assert torch.allclose(p.grad, peer_grads[n], atol=1e-5, rtol=1e-4), n
