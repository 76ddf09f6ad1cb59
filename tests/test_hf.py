"""CoaT as a Hugging Face transformers backbone (coat.hf): the backbone contract, weights, and Deformable DETR on it."""

import pytest
import torch

import coat

pytest.importorskip("transformers")
from transformers import AutoBackbone, AutoConfig, DeformableDetrConfig, DeformableDetrForObjectDetection

import coat.hf  # registers the "coat" model type with AutoConfig and AutoBackbone

ALL = coat.list_models()
ODD = (75, 97)  # not multiples of 32: grids are floor divisions


@pytest.mark.parametrize("name", ALL)
def test_backbone_maps_are_forward_intermediates(name):
    backbone = AutoBackbone.from_config(coat.hf.CoaTBackboneConfig(variant=name, out_indices=[1, 2, 3])).eval()
    dims = coat.VARIANTS[name].config.embed_dims
    assert backbone.out_features == ["stage2", "stage3", "stage4"] and backbone.channels == list(dims[1:])
    x = torch.randn(2, 3, *ODD)
    with torch.no_grad():
        maps = backbone(x).feature_maps
        expected = backbone.coat.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [
        (2, dims[s], ODD[0] // r, ODD[1] // r) for s, r in ((1, 8), (2, 16), (3, 32))
    ]
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))


def test_config_by_name_and_by_auto_config():
    config = AutoConfig.for_model("coat", variant="coat_tiny", out_features=["stage1", "stage4"])
    assert isinstance(config, coat.hf.CoaTBackboneConfig) and config.out_indices == [0, 3]
    assert coat.hf.CoaTBackboneConfig().out_features == ["stage1", "stage2", "stage3", "stage4"]  # all four
    with pytest.raises(coat.CoatError, match="unknown model 'coat_huge'"):
        coat.hf.CoaTBackboneConfig(variant="coat_huge")


def test_released_weights_load_into_the_backbone(authors_checkpoint):
    backbone = coat.hf.CoaTBackbone(coat.hf.CoaTBackboneConfig(variant="coat_lite_tiny")).eval()
    backbone.load_coat_weights(authors_checkpoint("coat_lite_tiny"))  # names and hf-hub sources go the same way
    reference = coat.create_model("coat_lite_tiny", pretrained=authors_checkpoint("coat_lite_tiny")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(backbone(x).feature_maps, reference.forward_intermediates(x, intermediates_only=True)):
            assert torch.equal(a, b)


def _small_detector(variant: str = "coat_lite_tiny") -> DeformableDetrForObjectDetection:
    backbone = coat.hf.CoaTBackboneConfig(variant=variant, out_indices=[1, 2, 3])
    config = DeformableDetrConfig(
        backbone_config=backbone,
        num_labels=3,
        encoder_layers=1,
        decoder_layers=2,
        d_model=64,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
    )
    return DeformableDetrForObjectDetection(config)


@pytest.mark.parametrize("variant", ["coat_lite_tiny", "coat_tiny"])
def test_deformable_detr_trains_through_the_backbone_with_coats_own_initialisation(variant):
    torch.manual_seed(0)
    detector = _small_detector(variant)
    backbone = detector.model.backbone.model
    assert isinstance(backbone, coat.hf.CoaTBackbone)
    # CoaT leaves its convs at PyTorch's default (uniform, std 1/sqrt(3 fan_in): 0.083 for the 4x4x3 patch conv);
    # transformers' default would draw them from N(0, 0.02)
    patch_conv = backbone.coat.stages[0].patch_embed.proj.weight
    assert 0.07 < patch_conv.std().item() < 0.1
    assert all(bool((m.weight == 1).all()) for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm))
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.3]])},
    ]
    out = detector(pixel_values=torch.randn(2, 3, 96, 128), labels=labels)
    assert torch.isfinite(out.loss) and {"loss_ce", "loss_bbox", "loss_giou"} <= out.loss_dict.keys()
    out.loss.backward()
    assert patch_conv.grad is not None and patch_conv.grad.abs().sum() > 0  # the loss reaches the first conv
    # every parameter takes part (DDP without find_unused_parameters): the classifier's norms are pruned
    unused = [name for name, p in detector.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


def test_a_whole_detector_round_trips_through_save_pretrained(tmp_path):
    detector = _small_detector().eval()
    detector.save_pretrained(tmp_path)
    again = DeformableDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert isinstance(again.model.backbone.model, coat.hf.CoaTBackbone)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(detector(pixel_values=x).logits, again(pixel_values=x).logits)


def test_without_the_extra_importing_coat_hf_names_the_install():
    import subprocess
    import sys

    script = "import sys\nsys.modules['transformers'] = None\nimport coat.hf\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "MissingExtraError" in result.stderr
    assert "pip install 'coat-pytorch[hf]'" in result.stderr


def test_deformable_detr_coat_has_the_authors_settings_and_loss():
    from coat.detection.deformable_detr import AUTHORS_SETTINGS, authors_losses, deformable_detr_coat

    torch.manual_seed(0)
    small = {"encoder_layers": 1, "decoder_layers": 2, "d_model": 64, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}
    detector = deformable_detr_coat("coat_lite_tiny", num_classes=3, num_queries=10, **small)
    config = detector.config
    assert config.backbone_config.out_features == ["stage2", "stage3", "stage4"] and config.num_feature_levels == 4
    assert config.auxiliary_loss and not config.with_box_refine and not config.two_stage
    assert (config.class_cost, config.bbox_cost, config.giou_cost) == (2, 5, 2)
    assert AUTHORS_SETTINGS["num_queries"] == 300 and AUTHORS_SETTINGS["decoder_layers"] == 6
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])}
    ]
    out = detector(pixel_values=torch.randn(1, 3, 96, 128), labels=labels)
    classification = sum(v for k, v in out.loss_dict.items() if k.startswith("loss_ce"))  # last and auxiliary layer
    assert len([k for k in out.loss_dict if k.startswith("loss_ce")]) == 2
    weighted = authors_losses(out.loss_dict, config)
    assert weighted.keys() == {"loss_ce", "loss_bbox", "loss_giou"}
    assert torch.allclose(sum(weighted.values()), out.loss + classification)  # weight 2, not 1
