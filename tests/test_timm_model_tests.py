"""The generic assertions of timm's model tests (timm's tests/test_models.py), run on every variant.

timm runs these on each of its models; timm users' code assumes what they check: forward and
backward, the default configuration at standard and other sizes, pretrained loading into other
input channels and classes, TorchScript, FX forward / backward (torchvision's feature extraction),
forward_intermediates and features_only. Written here from what those tests assert. Backward with
every parameter getting a gradient is in test_models.py (on each speed path), features_only in
test_timm_contract.py.
"""

import io
import math

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import coat
from coat import fast

ALL = coat.list_models()
BATCH = 2
SMALL = (64, 96)  # small and not square: rows and columns must not be swapped


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= rel * b.abs().max() + 1e-6)


@pytest.mark.parametrize("name", ALL)
def test_forward_at_the_default_input_size(name):
    model = coat.create_model(name).eval()
    size = model.pretrained_cfg["input_size"]
    with torch.no_grad():
        out = model(torch.randn(1, *size))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [SMALL, (75, 100), (128, 128)])
@pytest.mark.parametrize("name", ALL)
def test_default_cfg_and_non_standard_sizes(name, size):
    model = coat.create_model(name).eval()
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state
    assert state[cfg["classifier"] + ".weight"].shape[0] == cfg["num_classes"] == model.num_classes
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] == 3
    x = torch.randn(BATCH, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (BATCH, model.num_classes)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre_logits.shape == (BATCH, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.pretrained_cfg["num_classes"] == 0
        assert _close(model(x), pre_logits)  # without a classifier the model returns the pre-logits


@pytest.mark.parametrize("name", ALL)
def test_pretrained_into_one_channel_and_other_classes(name, authors_checkpoint):
    model = coat.create_model(name, pretrained=authors_checkpoint(name), in_chans=1, num_classes=5).eval()
    assert model.pretrained_cfg["input_size"][0] == 1 and model.num_classes == 5
    with torch.no_grad():
        out = model(torch.randn(BATCH, 1, *SMALL))
    assert out.shape == (BATCH, 5) and torch.isfinite(out).all()
    features = coat.create_model(name, pretrained=authors_checkpoint(name), features_only=True).eval()
    with torch.no_grad():
        maps = features(torch.randn(BATCH, 3, *SMALL))
    assert [m.shape[1] for m in maps] == features.feature_info.channels()


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates_features(name):
    """timm's test_model_forward_intermediates_features: the feature model timm builds with feature_cls='getter'."""
    model = coat.create_model(name, pretrained=False, features_only=True, feature_cls="getter").eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert model.pretrained_cfg["input_size"][0] == 3 and "classifier" not in model.pretrained_cfg
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, *SMALL))
    assert len(outputs) == len(channels) == 4
    for expected_channels, reduction, out in zip(channels, reductions, outputs):
        assert out.shape[:2] == (1, expected_channels)
        assert (
            out.shape[2] <= math.ceil(SMALL[0] / reduction) + 1 and out.shape[3] <= math.ceil(SMALL[1] / reduction) + 1
        )
        assert not torch.isnan(out).any()


@pytest.mark.parametrize("kwargs", [{"features_only": True, "feature_cls": "hook"}, {"feature_cls": "getter"}])
def test_feature_classes_coat_cannot_build_are_refused(kwargs):
    with pytest.raises(coat.CoatError, match="feature_cls"):
        coat.create_model("coat_lite_tiny", **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_torchscript(name):
    model = coat.create_model(name).eval()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)  # a scripted model leaves Python
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(BATCH, 3, *SMALL)
    with torch.no_grad(), fast.only():
        expected = model(x)
    with torch.no_grad():
        assert _close(scripted(x), expected) and _close(loaded(x), expected)


@pytest.mark.parametrize("name", ALL)
def test_fx_feature_extraction_forward_and_backward(name):
    """One torchvision FX extractor (it traces train and eval mode): in eval mode the stage outputs that forward
    hooks see and the logits, op for op, at two sizes from one graph; in train mode backward reaches every
    parameter. Module names as return nodes: the output of the last op inside that module."""
    model = coat.create_model(name, num_classes=42)
    fx_model = create_feature_extractor(
        model, return_nodes={**{f"stages.{i}.blocks": str(i) for i in range(4)}, "head": "logits"}
    ).eval()
    model.eval()
    for size in (SMALL, (96, 67)):  # grids are read from the shapes at run time
        x = torch.randn(BATCH, 3, *size)
        hooked = {}
        handles = [
            stage.register_forward_hook(lambda m, args, out, i=i, hooked=hooked: hooked.update({str(i): out[0]}))
            for i, stage in enumerate(model.stages)
        ]
        with torch.no_grad():
            logits = model(x)  # hooks on the stages: the reference modules run
            for handle in handles:
                handle.remove()
            features = fx_model(x)
            assert torch.equal(features.pop("logits"), logits)
            assert features.keys() == hooked.keys() == {"0", "1", "2", "3"}
            for key, tokens in hooked.items():
                assert torch.equal(features[key], tokens), key
            assert _close(logits, model(x))  # and close to whatever path the model takes without hooks
    fx_model.train()
    out = fx_model(torch.randn(BATCH, 3, *SMALL))["logits"]
    assert out.shape == (BATCH, 42)
    out.mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())
    assert sum(p.numel() for p in fx_model.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_fx_graph_scripts(name):
    model = coat.create_model(name).eval()
    fx_model = create_feature_extractor(model, return_nodes=["head"]).eval()
    scripted = torch.jit.script(fx_model)
    x = torch.randn(BATCH, 3, *SMALL)
    with torch.no_grad():
        assert _close(scripted(x)["head"], fx_model(x)["head"])


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates_against_feature_info(name):
    model = coat.create_model(name).eval()
    channels = [info["num_chs"] for info in model.feature_info]
    reductions = [info["reduction"] for info in model.feature_info]
    x = torch.randn(BATCH, 3, *SMALL)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert _close(model.forward_head(final), model(x))
        for fmt, channel_axis, spatial in (("NCHW", 1, (2, 3)), ("NHWC", 3, (1, 2))):
            maps = model.forward_intermediates(x, output_fmt=fmt, intermediates_only=True)
            assert len(maps) == len(channels) >= 3
            for c, r, m in zip(channels, reductions, maps):
                assert m.shape[0] == BATCH and m.shape[channel_axis] == c
                assert [m.shape[a] for a in spatial] == [math.floor(s / r) for s in SMALL]
                assert torch.isfinite(m).all()
        for indices in (1, [0, 2], [-1]):
            some = model.forward_intermediates(x, indices=indices, intermediates_only=True)
            wanted = coat.models.coat.feature_indices(len(channels), indices)
            assert [m.shape[1] for m in some] == [channels[i] for i in wanted]
            early = model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
            assert all(_close(a, b) for a, b in zip(early, some))
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        assert not torch.equal(normed, maps[-1].permute(0, 3, 1, 2))  # the head's norm was applied
