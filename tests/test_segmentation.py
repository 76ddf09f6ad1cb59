"""Semantic segmentation on CoaT: UperNet (transformers) on the CoaT backbone, and CoaT as smp encoders."""

import json

import pytest
import torch
import torch.nn.functional as F

import coat
from fixture_weights import authors_state_dict

pytest.importorskip("transformers")
from transformers import UperNetForSemanticSegmentation

from coat.segmentation import upernet_coat

ALL = coat.list_models()
ODD = (65, 97)  # not multiples of 32
SMALL_HEAD = {"hidden_size": 32, "auxiliary_channels": 16}


def _labels(classes: int, size: tuple[int, int] = ODD) -> torch.Tensor:
    labels = torch.randint(0, classes, (2, *size), generator=torch.Generator().manual_seed(0))
    labels[0, :7] = 255  # ignored pixels
    return labels


@pytest.mark.parametrize("name", ALL)
def test_upernet_gives_logits_at_the_input_size_and_trains_every_parameter(name):
    torch.manual_seed(0)
    model = upernet_coat(name, num_classes=5, **SMALL_HEAD)
    out = model(pixel_values=torch.randn(2, 3, *ODD), labels=_labels(5))
    assert out.logits.shape == (2, 5, *ODD) and torch.isfinite(out.loss)
    out.loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused  # DDP needs no find_unused_parameters


def test_upernet_has_the_standard_head_and_loss():
    torch.manual_seed(0)
    model = upernet_coat("coat_lite_tiny", num_classes=4, **SMALL_HEAD).eval()
    config = model.config
    assert config.pool_scales == [1, 2, 3, 6] and config.loss_ignore_index == 255
    assert config.auxiliary_loss_weight == 0.4 and model.auxiliary_head.in_channels == 256  # scale 3 of the Lite
    assert upernet_coat("coat_lite_tiny", num_classes=4).config.hidden_size == 512
    pixels, labels = torch.randn(2, 3, 64, 64), _labels(4, (64, 64))
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels)
        maps = model.backbone(pixels).feature_maps
        auxiliary = F.interpolate(model.auxiliary_head(maps), size=(64, 64), mode="bilinear", align_corners=False)
    main = F.cross_entropy(out.logits, labels, ignore_index=255)
    assert torch.allclose(out.loss, main + 0.4 * F.cross_entropy(auxiliary, labels, ignore_index=255))


def test_upernet_loads_backbone_weights_and_round_trips(authors_checkpoint, tmp_path):
    model = upernet_coat("coat_lite_tiny", 3, backbone_weights=authors_checkpoint("coat_lite_tiny"), **SMALL_HEAD)
    reference = coat.create_model("coat_lite_tiny", pretrained=authors_checkpoint("coat_lite_tiny")).eval()
    model.eval().save_pretrained(tmp_path)
    again = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model.backbone(x).feature_maps, reference.forward_intermediates(x, intermediates_only=True)):
            assert torch.equal(a, b)
        # the same weights; the same logits up to float32 summation order (oneDNN's on AVX2 depends on alignment)
        loaded = again.state_dict()
        assert loaded.keys() == model.state_dict().keys()
        assert all(torch.equal(tensor, loaded[key]) for key, tensor in model.state_dict().items())
        assert torch.allclose(model(pixel_values=x).logits, again(pixel_values=x).logits, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- smp encoders
smp = pytest.importorskip("segmentation_models_pytorch")
import coat.segmentation.smp_encoders  # noqa: E402  registers the CoaT encoders


def _reference_maps(variant: str, x: torch.Tensor, in_chans: int = 3) -> list[torch.Tensor]:
    model = coat.create_model(variant, pretrained=_timm_file.cache[variant], num_classes=0, in_chans=in_chans)
    with torch.no_grad():
        return model.eval().forward_intermediates(x, intermediates_only=True)


def _timm_file(variant: str, folder) -> str:
    """timm's copy of the weights (the authors' keys without the unused norms) as a hub folder would hold it."""
    from safetensors.torch import save_file

    state = {k: v for k, v in authors_state_dict(variant).items() if not k.startswith(("norm1.", "norm2.", "norm3."))}
    if not variant.startswith("coat_lite"):
        state.update({k: v for k, v in authors_state_dict(variant).items() if k.startswith(("norm2.", "norm3."))})
    path = folder / f"{variant}.safetensors"
    save_file(state, str(path))
    (folder / "config.json").write_text(json.dumps({"architecture": variant}))
    _timm_file.cache[variant] = str(path)
    return str(path)


_timm_file.cache = {}


@pytest.mark.parametrize("name", ALL)
def test_every_variant_is_an_smp_encoder_for_fpn(name):
    torch.manual_seed(0)
    model = smp.FPN(name, encoder_weights=None, classes=3)
    dims = coat.VARIANTS[name].config.embed_dims
    assert model.encoder.out_channels == [3, 0, *dims]
    assert model(torch.randn(2, 3, 64, 96)).shape == (2, 3, 64, 96)


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_smps_weights_download_and_one_channel_input_give_coats_maps(name, tmp_path, monkeypatch):
    """smp's encoder_weights="in1k" path, its download served from a local folder: timm's keys load into the
    encoder, and in_channels=1 adapts the first conv as create_model(in_chans=1) does."""
    weights = _timm_file(name, tmp_path)
    monkeypatch.setattr(
        smp.encoders,
        "hf_hub_download",
        lambda repo_id, filename, revision: str(tmp_path / "config.json") if filename == "config.json" else weights,
    )
    model = smp.Unet(name, encoder_weights="in1k", in_channels=1, classes=2).eval()
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        features = model.encoder(x)
        assert model(x).shape == (1, 2, 64, 96)
    assert [f.shape[1] for f in features] == model.encoder.out_channels and features[1].shape == (1, 0, 32, 48)
    for a, b in zip(features[2:], _reference_maps(name, x, in_chans=1)):
        assert torch.allclose(a, b, atol=1e-6)


def test_smp_encoders_load_our_weights_names_and_files(authors_checkpoint):
    model = smp.FPN("coat_lite_tiny", encoder_weights=None, classes=2).eval()
    model.encoder.load_coat_weights(authors_checkpoint("coat_lite_tiny"))
    reference = coat.create_model("coat_lite_tiny", pretrained=authors_checkpoint("coat_lite_tiny")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.encoder(x)[2:], reference.forward_intermediates(x, intermediates_only=True)):
            assert torch.equal(a, b)


def test_smp_encoder_options_it_cannot_serve_are_one_line_errors():
    with pytest.raises(coat.CoatError, match="no dilated mode"):
        smp.DeepLabV3Plus("coat_lite_tiny", encoder_weights=None, encoder_output_stride=16)
    with pytest.raises(coat.CoatError, match="depth 2 to 5"):
        smp.FPN("coat_lite_tiny", encoder_weights=None, encoder_depth=1)
    shallow = smp.Unet("coat_lite_tiny", encoder_weights=None, encoder_depth=4, decoder_channels=(64, 32, 16, 8))
    assert shallow.encoder.out_channels == [3, 0, 64, 128, 256]
    assert shallow(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
