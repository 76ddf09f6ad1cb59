"""Outputs equal the authors' implementation's (shared fixtures) through every file format."""

import pytest
import torch
from safetensors.torch import save_file

import coat
from fixture_weights import FIXTURES, authors_state_dict

pytestmark = pytest.mark.usefixtures("speed_path")  # on the reference and the fast paths

TOL = 1e-4
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]  # on a GPU machine also the GPU
FIXTURE_VARIANTS = ["coat_lite_tiny", "coat_tiny"]


def fixture(variant):
    return torch.load(FIXTURES / f"{variant}_224x224.pt", weights_only=True)


def assert_matches_fixture(model, expected, grad=False, device="cpu"):
    model.eval().to(device)
    x = expected["input"].to(device)
    with torch.set_grad_enabled(grad):  # autograd on: the training implementation (cpu_training on CPU)
        logits = model(x).cpu()
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert (logits - expected["logits"]).abs().max().item() < TOL
    for i, feat in enumerate(feats, start=1):
        assert feat[0].shape == expected[f"feat{i}"].shape
        assert (feat[0].cpu() - expected[f"feat{i}"]).abs().max().item() < TOL, f"feat{i}"


@pytest.mark.parametrize("variant", FIXTURE_VARIANTS)
def test_generated_weights_are_the_fixtures(variant):
    state = authors_state_dict(variant)
    expected = fixture(variant)
    total = sum(t.double().sum() for t in state.values())
    abs_total = sum(t.double().abs().sum() for t in state.values())
    assert total.item() == pytest.approx(expected["weights_sum"].item(), rel=1e-6)
    assert abs_total.item() == pytest.approx(expected["weights_abs_sum"].item(), rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", FIXTURE_VARIANTS)
def test_authors_checkpoint_reproduces_fixture(variant, device, authors_checkpoint):
    model = coat.create_model(variant, pretrained=authors_checkpoint(variant))
    assert_matches_fixture(model, fixture(variant), device=device)  # float32, PyTorch's default backend settings


@pytest.mark.parametrize("variant", FIXTURE_VARIANTS)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_format_reproduces_fixture(variant, suffix, tmp_path):
    unused = {"coat_lite_tiny": ("norm1", "norm2", "norm3"), "coat_tiny": ("norm1",)}[variant]
    state = {k: v for k, v in authors_state_dict(variant).items() if k.split(".")[0] not in unused}
    path = tmp_path / f"timm{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        # safetensors refuses tensors sharing memory; timm's files hold each alias as its own copy
        save_file({k: v.clone() for k, v in state.items()}, str(path))
    checkpoint = coat.read_checkpoint(path)
    assert checkpoint.source_format == "timm"
    assert_matches_fixture(coat.create_model(variant, pretrained=path), fixture(variant))


@pytest.mark.parametrize("variant", FIXTURE_VARIANTS)
def test_fixture_with_autograd_on(variant, authors_checkpoint):
    assert_matches_fixture(
        coat.create_model(variant, pretrained=authors_checkpoint(variant)), fixture(variant), grad=True
    )


@pytest.mark.parametrize("variant", FIXTURE_VARIANTS)
def test_own_format_round_trip_reproduces_fixture(variant, authors_checkpoint, tmp_path):
    model = coat.create_model(variant, pretrained=authors_checkpoint(variant))
    path = coat.save_checkpoint(model, tmp_path / "ours.safetensors")
    assert_matches_fixture(coat.load_model(path), fixture(variant))
    assert_matches_fixture(coat.create_model(variant, pretrained=path), fixture(variant))


def test_shared_module_aliases_resolve_to_the_copy_the_authors_loader_keeps():
    state, notes = coat.checkpoint.authors_to_coat(authors_state_dict("coat_tiny"))
    source = authors_state_dict("coat_tiny")
    # serial stack 1 has 2 blocks: the last block's alias wins over cpe1
    assert torch.equal(state["stages.0.cpe.proj.weight"], source["serial_blocks1.1.cpe.proj.weight"])
    # crpe2..4 are last seen inside parallel block 5
    assert torch.equal(
        state["stages.1.crpe.convs.0.weight"], source["parallel_blocks.5.factoratt_crpe2.crpe.conv_list.0.weight"]
    )
    assert torch.equal(state["parallel_blocks.0.mlp.fc1.weight"], source["parallel_blocks.0.mlp4.fc1.weight"])
    assert any("unused norms" in n for n in notes)
