"""OpenVINO: the IR ``coat export --format openvino`` writes, and predict / bench running on OpenVINO."""

import json

import pytest
import torch
from PIL import Image

import coat
from coat.cli import main
from coat.data.preprocessing import Preprocessing
from coat.export import runtime_parity
from coat.openvino_runtime import OpenVinoClassifier
from conftest import small_coscale_model

pytest.importorskip("openvino")


def test_export_cli_openvino_parity(tmp_path, capsys, group_umask):
    """One export of a small co-scale CoaT (each takes ~15 s): the IR folder, its float32 weights, its dynamic
    batch and size (checked at sizes that are not multiples of 32), bf16 within bf16's round-off."""
    model = small_coscale_model().eval()
    checkpoint = tmp_path / "model.safetensors"
    coat.save_checkpoint(model, checkpoint)
    out = tmp_path / "ir"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(out)]) == 0
    assert "OpenVINO vs PyTorch max abs diff 224x224" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    assert all(p.stat().st_mode & 0o777 == group_umask for p in out.iterdir())
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (out / "model.bin").stat().st_size > 0.9 * weight_bytes  # float32 (float16 would be half)

    f32 = OpenVinoClassifier.from_ir(out)
    assert all(d < 1e-4 for d in runtime_parity(model, f32.run, "OpenVINO", [(96, 160), (33, 47)], batch=3).values())
    bf16 = OpenVinoClassifier.from_ir(out / "model.xml", "bf16")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    tolerance = 1e-4 if bf16.precision == "fp32" else 0.05 * expected.abs().max().item()  # CPUs without bf16: f32
    assert (bf16(x) - expected).abs().max().item() < tolerance

    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err  # no silent overwrite


@pytest.fixture(scope="module")
def named_checkpoint(tmp_path_factory):
    """A 3-class small co-scale CoaT at 64 pixels, class names in its metadata."""
    torch.manual_seed(0)
    model = small_coscale_model(num_classes=3)
    model.preprocessing = Preprocessing(input_size=64, crop_pct=1.0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    coat.save_checkpoint(model, path, metadata={"class_names": json.dumps(["a", "b", "c"])})
    return path


def test_predict_on_openvino_in_bf16_agrees_with_pytorch(named_checkpoint, tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (64, 64), (120 * i, 60, 250 - 120 * i)).save(tmp_path / f"{i}.png")
    probabilities = {}
    for runtime, dtype in [("pytorch", "fp32"), ("pytorch", "bf16"), ("openvino", "bf16")]:
        argv = ["predict", str(tmp_path), "--checkpoint", str(named_checkpoint), "--json", "--topk", "3"]
        assert main([*argv, "--runtime", runtime, "--dtype", dtype]) == 0
        results = json.loads(capsys.readouterr().out)
        probabilities[runtime, dtype] = torch.tensor(
            [[t["prob"] for t in sorted(r["topk"], key=lambda t: t["index"])] for r in results]
        )
    expected = probabilities["pytorch", "fp32"]
    for key, got in probabilities.items():
        assert (got - expected).abs().max().item() < 0.02, key  # bf16's round-off on probabilities


def test_bench_cli_openvino_rows(capsys):
    argv = ["bench", "--model", "coat_lite_tiny", "--batch-size", "2", "--size", "64", "--warmup", "0"]
    assert main([*argv, "--repeats", "1", "--modes", "eager", "openvino", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["mode"], r["dtype"]) for r in rows] == [("eager", "fp32"), ("openvino", "fp32")]
    assert all(r["images_per_second"] > 0 for r in rows)
