"""Every variant: structure, forward/backward at small inputs, feature API, input checks."""

import pytest
import torch

import coat
from coat.complexity import count_gmacs

pytestmark = pytest.mark.usefixtures("speed_path")  # every test here on the reference and the fast paths

ALL = coat.list_models()
COAT_FULL = [n for n in ALL if not coat.VARIANTS[n].config.is_lite]


def test_list_models_is_the_table():
    assert ALL == [
        "coat_lite_tiny",
        "coat_lite_mini",
        "coat_lite_small",
        "coat_lite_medium",
        "coat_lite_medium_384",
        "coat_tiny",
        "coat_mini",
        "coat_small",
    ]


@pytest.mark.parametrize("name", ALL)
def test_param_count_matches_paper(name):
    with torch.device("meta"):
        model = coat.CoaT(coat.variant_config(name))
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == coat.VARIANTS[name].params_m


@pytest.mark.parametrize("name", ALL)
def test_gmacs_match_paper_within_2_percent(name):
    assert count_gmacs(name) == pytest.approx(coat.VARIANTS[name].gmacs, rel=0.02)


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
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    h, w = size
    for feat, r in zip(feats, (4, 8, 16, 32)):
        h, w = h // (2 if r > 4 else 4), w // (2 if r > 4 else 4)
        assert feat.shape[-2:] == (h, w)


@pytest.mark.slow
def test_detection_sized_input():
    model = coat.create_model("coat_lite_tiny", num_classes=0).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 800, 1333), intermediates_only=True)
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
