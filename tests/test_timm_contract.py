"""timm's model contract, as timm users' code reads it: attributes, forward_intermediates' options,
feature_info, and weights loaded into models for other input channels."""

import pytest
import torch

import coat
from coat.bench import timm_pair

ALL = coat.list_models()


@pytest.mark.parametrize("name", ALL)
def test_attributes_timm_users_read(name):
    model = coat.create_model(name, num_classes=7)
    assert model.num_classes == 7 and model.head_hidden_size == model.num_features == model.config.embed_dims[-1]
    cfg = model.pretrained_cfg
    assert cfg is not None and model.default_cfg == cfg
    assert cfg["input_size"] == (3, coat.VARIANTS[name].input_size, coat.VARIANTS[name].input_size)
    assert cfg["num_classes"] == 7 and cfg["classifier"] == "head"
    modules = dict(model.named_modules())
    assert cfg["first_conv"] in modules and cfg["classifier"] in modules
    assert cfg["crop_pct"] == coat.get_weights(name).preprocessing.crop_pct
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    for info in model.feature_info:
        assert info["module"] in modules
    if not model.config.is_lite:  # scales 2-4 come out of the last parallel block
        last = f"parallel_blocks.{model.config.parallel_depth - 1}"
        assert [f["module"] for f in model.feature_info] == ["stages.0", last, last, last]


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_forward_intermediates_equals_timms_with_every_option(name):
    ours, peer = timm_pair(name, img_size=(64, 96))
    ours.eval(), peer.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for kwargs in ({}, {"indices": 2}, {"indices": [0, -1]}, {"norm": True}, {"indices": [1, 3], "norm": True}):
            final, maps = ours.forward_intermediates(x, **kwargs)
            _peer_final, peer_maps = peer.forward_intermediates(x, **kwargs)
            assert len(maps) == len(peer_maps)
            for a, b in zip(maps, peer_maps):
                assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-5, kwargs
            assert torch.allclose(final, ours.forward_features(x))
            only = ours.forward_intermediates(x, intermediates_only=True, **kwargs)
            assert all(torch.equal(a, b) for a, b in zip(only, maps))


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_stop_early_and_nhwc(name):
    model = coat.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.allclose(early[0], full[0], atol=1e-5)
        _final, maps = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        assert torch.allclose(maps[1], full[1], atol=1e-5)
        nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        assert all(torch.equal(a.permute(0, 3, 1, 2), b) for a, b in zip(nhwc, full))
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("in_chans", [1, 6, 4])
def test_rgb_weights_into_other_input_channels(authors_checkpoint, in_chans, caplog):
    rgb = coat.create_model("coat_lite_tiny", pretrained=authors_checkpoint("coat_lite_tiny")).eval()
    with caplog.at_level("INFO"):
        model = coat.create_model(
            "coat_lite_tiny", pretrained=authors_checkpoint("coat_lite_tiny"), in_chans=in_chans
        ).eval()
    assert f"from 3 to {in_chans} input channels" in caplog.text
    assert model.pretrained_cfg["input_size"][0] == in_chans
    gray = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = model(gray.expand(-1, in_chans, -1, -1))
        if in_chans % 3 == 0 or in_chans == 1:  # equal channels: the same response as RGB (x, x, x)
            assert torch.allclose(out, rgb(gray.expand(-1, 3, -1, -1)), atol=1e-4)
        else:
            assert out.shape == (2, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("indices", [[0], [0, 1], 2, [-1]])
@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_prune_intermediate_layers_keeps_the_maps_and_drops_the_rest(name, indices):
    full = coat.create_model(name).eval()
    pruned = coat.create_model(name).eval()
    pruned.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = full.forward_intermediates(x, indices=indices, intermediates_only=True)
        kept = pruned.prune_intermediate_layers(indices)
        maps = pruned.forward_intermediates(x, indices=indices, intermediates_only=True)
    assert kept == coat.models.coat.feature_indices(4, indices)
    assert len(maps) == len(expected) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, expected))
    assert pruned.num_classes == 0 and isinstance(pruned.head, torch.nn.Identity)
    stages = max(kept) + 1 if full.config.is_lite or max(kept) == 0 else 4
    assert len(pruned.stages) == stages and len(pruned.feature_info) >= stages
    if stages < 4:  # nothing left that the kept maps do not use
        assert not pruned.parallel_blocks and not pruned.head_norms and pruned.aggregate is None
        pruned.train()
        sum(m.sum() for m in pruned.forward_intermediates(x, indices=indices, intermediates_only=True)).backward()
        assert all(p.grad is not None for p in pruned.parameters())


@pytest.mark.parametrize("name", ALL)
def test_features_only_model(name):
    torch.manual_seed(0)
    full = coat.create_model(name).eval()
    features = coat.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    loaded = features.model.load_state_dict(full.state_dict(), strict=False)  # the pruned model holds a subset
    assert not loaded.missing_keys
    dims = full.config.embed_dims
    assert features.feature_info.channels() == [dims[1], dims[3]] and features.feature_info.reduction() == [8, 32]
    assert features.feature_info.module_name() == [full.feature_info[1]["module"], full.feature_info[3]["module"]]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = features(x)
        expected = full.forward_intermediates(x, indices=(1, 3), intermediates_only=True)
    assert [m.shape for m in maps] == [(1, dims[1], 8, 12), (1, dims[3], 2, 3)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, expected))
    scale_1 = coat.create_model(name, features_only=True, out_indices=(0,))
    assert len(scale_1.model.stages) == 1 and not scale_1.model.parallel_blocks  # nothing else is computed


def test_features_only_with_weights(authors_checkpoint):
    reference = coat.create_model("coat_tiny", pretrained=authors_checkpoint("coat_tiny")).eval()
    features = coat.create_model("coat_tiny", pretrained=authors_checkpoint("coat_tiny"), features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(features(x), reference.forward_intermediates(x, intermediates_only=True)):
            assert torch.allclose(a, b, atol=1e-5)


def test_detection_backbone_leaves_the_given_model_alone():
    from coat.detection.backbone import CoaTBackbone

    model = coat.create_model("coat_tiny", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backbone = CoaTBackbone(model, frozen_stages=1)
    assert isinstance(model.head, torch.nn.Linear) and model.aggregate is not None and len(model.head_norms) == 3
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert "body.head_norms.0.weight" not in backbone.state_dict() and "body.head.weight" not in backbone.state_dict()


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_layer_groups_for_timms_layer_decay(name):
    from timm.models._manipulate import group_parameters
    from timm.optim import create_optimizer_v2

    model = coat.create_model(name)
    assert model.get_classifier() is model.head
    names = [n for n, _ in model.named_parameters()]
    blocks, parallel = sum(model.config.serial_depths), model.config.parallel_depth
    # stage 1's embedding; per block (each later stage's embedding too) or per stage; the parallel blocks
    for coarse, count in ((False, 1 + blocks + 3 + parallel), (True, 1 + 4 + parallel)):
        groups = list(group_parameters(model, model.group_matcher(coarse=coarse)).values())
        assert sorted(n for group in groups for n in group) == sorted(names)  # every parameter, once
        assert "stages.0.patch_embed.proj.weight" in groups[0] and groups[-1] == ["head.weight", "head.bias"]
        assert len(groups) == count + 1  # + the classifier; the head's norms join the last block's group
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.75)
    scales = {p: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert scales[model.head.weight] == 1.0 and scales[model.stages[0].patch_embed.proj.weight] < 0.1
