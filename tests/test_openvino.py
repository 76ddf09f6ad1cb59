"""OpenVINO: the IR ``coat export --format openvino`` writes, and predict / bench running on OpenVINO.

OpenVINO runs in child processes only: with OpenVINO's CPU plugin loaded, the test process segfaulted at a later
test's ``fork`` (reproduced twice at the same test of the full suite, not in smaller runs; cause not found yet).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

import coat
from coat.cli import main
from conftest import NAMED_CLASSES, coat_in_child

pytest.importorskip("openvino")


CHECK_IR = textwrap.dedent("""
    import json, sys, torch, coat, openvino
    from coat.checkpoint import CheckpointError
    from coat.export import runtime_parity
    from coat.openvino_runtime import OpenVinoClassifier, read_ir
    model = coat.load_model(sys.argv[1]).eval()
    f32, class_names, preprocessing = read_ir(sys.argv[2])
    diffs = runtime_parity(model, f32.run, "OpenVINO", [(96, 160), (33, 47)], batch=3)
    bf16 = OpenVinoClassifier.from_ir(sys.argv[2] + "/model.xml", "bf16")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    error = (bf16(x) - expected).abs().max().item() / expected.abs().max().item()
    image = openvino.opset13.parameter([1, 3, 8, 8], openvino.Type.f32)
    openvino.save_model(openvino.Model([openvino.opset13.relu(image)], [image]), sys.argv[3])
    try:
        read_ir(sys.argv[3])
    except CheckpointError as err:
        foreign = str(err)
    print(json.dumps({"diffs": diffs, "bf16_relative_error": error, "bf16_precision": bf16.precision,
                      "class_names": class_names, "input_size": preprocessing.input_size, "foreign": foreign}))
""")


@pytest.fixture(scope="module")
def exported_ir(named_checkpoint, tmp_path_factory):
    """``coat export --format openvino`` of ``named_checkpoint`` under umask 027, done once (the conversion takes
    15-60 s): (the IR's folder, the finished command)."""
    out = tmp_path_factory.mktemp("export") / "ir"
    previous = os.umask(0o027)
    try:
        argv = ["--checkpoint", str(named_checkpoint), "--format", "openvino", "--output", str(out)]
        done = coat_in_child("export", *argv)
    finally:
        os.umask(previous)
    return out, done


def test_export_cli_openvino_parity(exported_ir, named_checkpoint, tmp_path):
    """The IR folder, its float32 weights, its class names and preprocessing, its dynamic batch and size (checked
    at sizes that are not multiples of 32), bf16 within bf16's round-off; no overwrite."""
    out, done = exported_ir
    assert done.returncode == 0, done.stderr
    assert "OpenVINO vs PyTorch max abs diff 224x224" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in out.iterdir())
    weight_bytes = sum(p.numel() * 4 for p in coat.load_model(named_checkpoint).parameters())
    assert (out / "model.bin").stat().st_size > 0.9 * weight_bytes  # float32 (float16 would be half)

    foreign_ir = tmp_path / "foreign.xml"
    argv = [str(named_checkpoint), str(out), str(foreign_ir)]
    check = subprocess.run([sys.executable, "-c", CHECK_IR, *argv], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert all(d < 1e-4 for d in result["diffs"].values())
    assert result["bf16_relative_error"] < (1e-4 if result["bf16_precision"] == "fp32" else 0.05)
    assert result["class_names"] == NAMED_CLASSES and result["input_size"] == 64
    assert "holds no class names or preprocessing" in result["foreign"]

    again = coat_in_child("export", "--checkpoint", str(named_checkpoint), "--format", "openvino", "--output", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr  # no silent overwrite


def _probabilities(results: list[dict]) -> torch.Tensor:
    return torch.tensor([[t["prob"] for t in sorted(r["topk"], key=lambda t: t["index"])] for r in results])


def test_predict_on_the_ir_in_bf16_agrees_with_pytorch(named_checkpoint, exported_ir, tmp_path, capsys):
    """``coat predict --checkpoint IR --runtime openvino`` runs the exported IR with its own class names and
    preprocessing, as PyTorch runs the checkpoint (fp32 and bf16)."""
    for i in range(3):
        Image.new("RGB", (80, 64), (120 * i, 60, 250 - 120 * i)).save(tmp_path / f"{i}.png")
    argv = ["predict", str(tmp_path), "--json", "--topk", "3"]
    probabilities = {}
    for dtype in ("fp32", "bf16"):
        assert main([*argv, "--checkpoint", str(named_checkpoint), "--dtype", dtype]) == 0
        probabilities["pytorch", dtype] = _probabilities(json.loads(capsys.readouterr().out))
    ir = str(exported_ir[0])
    done = coat_in_child(*argv, "--checkpoint", ir, "--runtime", "openvino", "--dtype", "bf16")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert {t["label"] for t in results[0]["topk"]} == set(NAMED_CLASSES)
    probabilities["openvino", "bf16"] = _probabilities(results)
    expected = probabilities["pytorch", "fp32"]
    for key, got in probabilities.items():
        assert (got - expected).abs().max().item() < 0.02, key  # bf16's round-off on probabilities
    assert main([*argv, "--checkpoint", ir]) == 2  # an IR needs --runtime openvino (checked before loading it)
    assert "is an OpenVINO IR; run it with --runtime openvino" in capsys.readouterr().err


def test_eval_on_the_ir_measures_what_pytorch_measures(named_checkpoint, exported_ir, labelled_images, tmp_path):
    records = {}
    for name, checkpoint, runtime in [("pytorch", named_checkpoint, "pytorch"), ("ir", exported_ir[0], "openvino")]:
        output = tmp_path / name
        argv = ["--data", str(labelled_images), "--workers", "0", "--output", str(output), "--device", "cpu"]
        done = coat_in_child("eval", "--checkpoint", str(checkpoint), "--runtime", runtime, *argv)
        assert done.returncode == 0, done.stderr
        records[name] = json.loads((output / "results.json").read_text())
    assert records["ir"]["images"] == 9 and records["ir"]["top1"] == records["pytorch"]["top1"]
    assert abs(records["ir"]["loss"] - records["pytorch"]["loss"]) < 1e-4
    assert records["ir"]["per_class_accuracy"].keys() == set(NAMED_CLASSES)


def test_bench_cli_openvino_rows():
    argv = ["bench", "--model", "coat_lite_tiny", "--batch-size", "2", "--size", "64", "--warmup", "0"]
    done = coat_in_child(*argv, "--repeats", "1", "--modes", "eager", "openvino", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["mode"], r["dtype"]) for r in rows] == [("eager", "fp32"), ("openvino", "fp32")]
    assert all(r["images_per_second"] > 0 for r in rows)
