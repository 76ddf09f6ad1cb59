"""OpenVINO: the IR ``coat export --format openvino`` writes, and predict / bench running on OpenVINO.

OpenVINO runs in child processes only: with OpenVINO's CPU plugin loaded, the test process segfaulted at a later
test's ``fork`` (reproduced twice at the same test of the full suite, not in smaller runs; cause not found yet).
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

import coat
from coat.cli import main
from coat.data.preprocessing import Preprocessing
from conftest import small_coscale_model

pytest.importorskip("openvino")


def _coat(*argv: str) -> subprocess.CompletedProcess:
    """``coat ARGV`` in a child process."""
    return subprocess.run([sys.executable, "-m", "coat.cli", *argv], capture_output=True, text=True, timeout=300)


CHECK_IR = textwrap.dedent("""
    import json, sys, torch, coat
    from coat.export import runtime_parity
    from coat.openvino_runtime import OpenVinoClassifier
    model = coat.load_model(sys.argv[1]).eval()
    f32 = OpenVinoClassifier.from_ir(sys.argv[2])
    diffs = runtime_parity(model, f32.run, "OpenVINO", [(96, 160), (33, 47)], batch=3)
    bf16 = OpenVinoClassifier.from_ir(sys.argv[2] + "/model.xml", "bf16")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    error = (bf16(x) - expected).abs().max().item() / expected.abs().max().item()
    print(json.dumps({"diffs": diffs, "bf16_relative_error": error, "bf16_precision": bf16.precision}))
""")


def test_export_cli_openvino_parity(tmp_path, group_umask):
    """One export of a small co-scale CoaT (each takes ~15 s): the IR folder, its float32 weights, its dynamic
    batch and size (checked at sizes that are not multiples of 32), bf16 within bf16's round-off."""
    model = small_coscale_model().eval()
    checkpoint = tmp_path / "model.safetensors"
    coat.save_checkpoint(model, checkpoint)
    out = tmp_path / "ir"
    done = _coat("export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "OpenVINO vs PyTorch max abs diff 224x224" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    assert all(p.stat().st_mode & 0o777 == group_umask for p in out.iterdir())
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (out / "model.bin").stat().st_size > 0.9 * weight_bytes  # float32 (float16 would be half)

    check = subprocess.run([sys.executable, "-c", CHECK_IR, str(checkpoint), str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert all(d < 1e-4 for d in result["diffs"].values())
    assert result["bf16_relative_error"] < (1e-4 if result["bf16_precision"] == "fp32" else 0.05)

    again = _coat("export", "--checkpoint", str(checkpoint), "--format", "openvino", "--output", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr  # no silent overwrite


@pytest.fixture(scope="module")
def named_checkpoint(tmp_path_factory):
    """A 3-class small co-scale CoaT at 64 pixels, class names in its metadata."""
    torch.manual_seed(0)
    model = small_coscale_model(num_classes=3)
    model.preprocessing = Preprocessing(input_size=64, crop_pct=1.0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    coat.save_checkpoint(model, path, metadata={"class_names": json.dumps(["a", "b", "c"])})
    return path


def _probabilities(results: list[dict]) -> torch.Tensor:
    return torch.tensor([[t["prob"] for t in sorted(r["topk"], key=lambda t: t["index"])] for r in results])


def test_predict_on_openvino_in_bf16_agrees_with_pytorch(named_checkpoint, tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (64, 64), (120 * i, 60, 250 - 120 * i)).save(tmp_path / f"{i}.png")
    argv = ["predict", str(tmp_path), "--checkpoint", str(named_checkpoint), "--json", "--topk", "3"]
    probabilities = {}
    for dtype in ("fp32", "bf16"):
        assert main([*argv, "--dtype", dtype]) == 0
        probabilities["pytorch", dtype] = _probabilities(json.loads(capsys.readouterr().out))
    done = _coat(*argv, "--runtime", "openvino", "--dtype", "bf16")
    assert done.returncode == 0, done.stderr
    probabilities["openvino", "bf16"] = _probabilities(json.loads(done.stdout))
    expected = probabilities["pytorch", "fp32"]
    for key, got in probabilities.items():
        assert (got - expected).abs().max().item() < 0.02, key  # bf16's round-off on probabilities


def test_bench_cli_openvino_rows():
    argv = ["bench", "--model", "coat_lite_tiny", "--batch-size", "2", "--size", "64", "--warmup", "0"]
    done = _coat(*argv, "--repeats", "1", "--modes", "eager", "openvino", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["mode"], r["dtype"]) for r in rows] == [("eager", "fp32"), ("openvino", "fp32")]
    assert all(r["images_per_second"] > 0 for r in rows)
