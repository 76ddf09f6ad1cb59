"""``coat quantize``: an int8 OpenVINO IR calibrated on the user's images, with its held-out accuracy.

OpenVINO runs in child processes only, as in ``test_openvino.py`` (with its CPU plugin loaded, the test process
segfaulted at a later test's ``fork``).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from coat.quantize import calibration_images
from conftest import NAMED_CLASSES, coat_in_child

pytest.importorskip("openvino")
pytest.importorskip("nncf")


# the int8 IR against the float32 checkpoint on the same images: logits, class names, int8 layers in the graph
CHECK_INT8 = textwrap.dedent("""
    import json, sys, torch, coat
    from coat.openvino_runtime import read_ir
    model = coat.load_model(sys.argv[1]).eval()
    int8, class_names, preprocessing = read_ir(sys.argv[2])
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    error = (int8(x) - expected).abs().max().item() / expected.abs().max().item()
    kinds = {op.get_type_name() for op in int8.model.get_ops()}
    print(json.dumps({"relative_error": error, "fake_quantize": "FakeQuantize" in kinds, "class_names": class_names,
                      "input_size": preprocessing.input_size}))
""")


@pytest.fixture(scope="module")
def quantized(named_checkpoint, labelled_images, tmp_path_factory):
    """``coat quantize`` of ``named_checkpoint`` calibrated on 5 of ``labelled_images``, measured on all 9, under
    umask 027: (the IR's folder, the finished command)."""
    out = tmp_path_factory.mktemp("quantize") / "int8"
    argv = ["--calibration", str(labelled_images), "--samples", "5", "--data", str(labelled_images)]
    previous = os.umask(0o027)
    try:
        done = coat_in_child("quantize", "--checkpoint", str(named_checkpoint), *argv, "--output", str(out))
    finally:
        os.umask(previous)
    return out, done


def test_quantize_writes_an_int8_ir_with_its_held_out_accuracy(quantized, named_checkpoint, labelled_images, tmp_path):
    out, done = quantized
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml", "quantization.json"]
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in out.iterdir())
    record = json.loads((out / "quantization.json").read_text())
    assert record["calibration_images"] == 5 and record["images"] == 9
    assert record["top1_change"] == pytest.approx(record["int8_top1"] - record["float32_top1"])
    assert f"int8 {record['int8_top1']:.2f}%" in done.stdout

    # the float32 figure is what `coat eval` measures on the checkpoint
    argv = ["--data", str(labelled_images), "--workers", "0", "--output", str(tmp_path / "eval"), "--device", "cpu"]
    evaluated = coat_in_child("eval", "--checkpoint", str(named_checkpoint), *argv)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["top1"] == record["float32_top1"]

    check = subprocess.run(
        [sys.executable, "-c", CHECK_INT8, str(named_checkpoint), str(out)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    result = json.loads(check.stdout.strip().splitlines()[-1])
    assert result["fake_quantize"]  # int8 layers, not the float graph written again
    assert result["relative_error"] < 0.25  # int8's round-off, far below a wrong model's
    assert result["class_names"] == NAMED_CLASSES and result["input_size"] == 64


def test_quantized_ir_serves_and_is_not_overwritten(quantized, named_checkpoint, labelled_images, tmp_path):
    out, _ = quantized
    served = coat_in_child("predict", str(labelled_images / "a"), "--checkpoint", str(out), "--runtime", "openvino")
    assert served.returncode == 0, served.stderr
    rows = served.stdout.strip().splitlines()  # a table: one row per image, its top classes by name
    assert len(rows) == 3 and all(f" {name} " in row for row in rows for name in NAMED_CLASSES)

    argv = ["quantize", "--checkpoint", str(named_checkpoint), "--data", str(labelled_images)]
    again = coat_in_child(*argv, "--calibration", str(labelled_images), "--output", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr  # no silent overwrite
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = coat_in_child(*argv, "--calibration", str(empty), "--output", str(tmp_path / "int8"))
    assert nothing.returncode == 2 and f"no images found in {empty}" in nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1 and not (tmp_path / "int8").exists()
    no_samples = ["--calibration", str(labelled_images), "--samples", "0", "--output", str(tmp_path / "q")]
    none = coat_in_child(*argv, *no_samples)
    assert none.returncode == 2 and "--samples must be at least 1, not 0" in none.stderr


def test_calibration_images_are_a_fixed_spread_subset(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    chosen = calibration_images(tmp_path, 12)
    assert len(chosen) == 12 and chosen == sorted(chosen)  # kept in their order
    assert {p.parent.name for p in chosen} == {"a", "b", "c"}  # not the first folder's images only
    assert chosen == calibration_images(tmp_path, 12)  # the same subset every time
    assert len(calibration_images(tmp_path, 300)) == 30  # all of them where there are fewer
