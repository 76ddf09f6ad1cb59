"""`coat segment train | eval | predict | make-shapes` end to end on tiny generated sets in each layout."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from coat.cli import main
from coat.segmentation.shapes import LAYOUTS, make_segmentation_shapes
from coat.segmentation.weights import load_segmenter

TINY = ["--recipe", "small", "--batch-size", "2", "--input-size", "64", "--base-scale", "96", "64"]
TINY += ["--decoder-channels", "16", "--workers", "0", "--warmup-iters", "2", "--no-amp"]  # eval runs fp32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on a 6 + 3 image VOC set, then resumed for a second."""
    root = make_segmentation_shapes(tmp_path_factory.mktemp("seg") / "voc", "voc", train_images=6, val_images=3)
    out = tmp_path_factory.mktemp("run") / "segment"
    run = ["segment", "train", "--data", str(root), *TINY, "--output", str(out)]
    assert main([*run, "--epochs", "1"]) == 0
    assert main([*run, "--epochs", "2", "--resume", "auto"]) == 0
    return root, out


@pytest.mark.slow
def test_train_writes_run_files_and_resumes(trained):
    _, out = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "val_miou", "val_pixel_accuracy", "val_mean_accuracy", "val_class_iou"} <= set(records[0])
    assert set(records[0]["val_class_iou"]) == {"background", "circle", "square", "triangle"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_miou"] == max(r["val_miou"] for r in records) and "final_class_iou" in summary
    for plot in ("loss", "miou", "lr"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    model, spec = load_segmenter(out / "best.safetensors")
    assert spec.class_names == ["background", "circle", "square", "triangle"] and spec.input_size == 64
    assert spec.base_scale == (96, 64) and model.config.hidden_size == 16
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_eval_reproduces_the_training_metrics_and_predict_writes_masks(trained, tmp_path, capsys):
    root, out = trained
    checkpoint = str(out / "best.safetensors")
    evaluation = ["segment", "eval", "--checkpoint", checkpoint, "--data", str(root), "--workers", "0"]
    assert main([*evaluation, "--output", str(tmp_path / "ev")]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    best = max(json.loads(line)["val_miou"] for line in (out / "metrics.jsonl").read_text().splitlines())
    assert results["images"] == 3 and results["miou"] == pytest.approx(best, abs=1e-6)
    assert main([*evaluation, "--output", str(tmp_path / "ev")]) == 2  # no silent overwrite
    assert main([*evaluation, "--output", str(tmp_path / "slide"), "--mode", "slide", "--stride", "32"]) == 0
    assert 0 <= json.loads((tmp_path / "slide" / "results.json").read_text())["miou"] <= 100
    images = root / "JPEGImages"
    assert main(["segment", "predict", str(images), "--checkpoint", checkpoint, "--output", str(tmp_path / "p")]) == 0
    first = sorted(images.iterdir())[0]
    mask = Image.open(tmp_path / "p" / f"{first.stem}_mask.png")
    assert mask.mode == "P" and mask.size == Image.open(first).size and np.asarray(mask).max() <= 3
    assert Image.open(tmp_path / "p" / f"{first.stem}_overlay.png").size == mask.size
    assert len(list((tmp_path / "p").glob("*_overlay.png"))) == 9


@pytest.mark.parametrize("layout", ["ade20k", "plain"])
def test_the_other_layouts_train_from_the_cli(layout, tmp_path):
    root = make_segmentation_shapes(tmp_path / layout, layout, train_images=4, val_images=2)
    assert main(["segment", "train", "--data", str(root), *TINY, "--epochs", "1", "--output", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["final_class_iou"]) == {"background", "circle", "square", "triangle"}


def test_make_shapes_and_bad_input_are_one_line(tmp_path, capsys):
    assert main(["segment", "make-shapes", str(tmp_path / "s"), "--train-images", "3", "--val-images", "2"]) == 0
    assert "coat segment train --recipe small --data" in capsys.readouterr().out
    assert main(["segment", "make-shapes", str(tmp_path / "s")]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    for bad, message in [
        ([], "--data required"),
        (["--data", str(tmp_path / "nowhere")], "does not exist"),
        (["--data", str(tmp_path / "s"), "--eval-mode", "tiles"], "--eval-mode must be one of whole, slide"),
        (["--data", str(tmp_path / "s"), "--scale-range", "2", "1"], "--scale-range takes LOW HIGH"),
        (["--data", str(tmp_path / "s"), "--batch-size", "1"], "--batch-size must be at least 2 per process"),
    ]:
        assert main(["segment", "train", *bad, "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert LAYOUTS == ("voc", "ade20k", "plain")


@pytest.mark.slow
def test_segment_train_under_torchrun_two_processes(trained, tmp_path):
    """Each process scores part of the validation images; the summed confusion matrices give the same mIoU as a
    one-process evaluation of the checkpoint (which needs every rank to evaluate rank 0's BatchNorm statistics)."""
    import os
    import subprocess

    from conftest import torchrun_two_processes

    root, _ = trained
    out = tmp_path / "ddp"
    command = [*torchrun_two_processes(29523), "-m", "coat.cli", "segment", "train", "--data", str(root), *TINY]
    command += ["--epochs", "1", "--output", str(out), "--device", "cpu"]  # 2 per process: one step
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    evaluation = ["segment", "eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(root)]
    assert main([*evaluation, "--workers", "0", "--output", str(tmp_path / "ev")]) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["images"] == 3 and results["miou"] == pytest.approx(summary["best_miou"], abs=1e-6)
