"""benchmarks/bench_segment_peers.py and prepare_segmentation_sets.py run end to end at tiny sizes, so the
comparison with smp's FPN-ResNet-18 in BENCHMARKS.md can be retaken."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from coat.cli import main as coat_main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("transformers")


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smp_segmenter_pads_to_its_stride_and_ignores_255():
    import segmentation_models_pytorch as smp

    bench = load("bench_segment_peers")
    segmenter = bench.SmpSegmenter(smp.FPN("resnet18", encoder_weights=None, classes=3)).eval()
    images, labels = torch.randn(2, 3, 33, 47), torch.randint(0, 3, (2, 33, 47))
    labels[:, :5] = 255
    out = segmenter(pixel_values=images, labels=labels)
    assert out.logits.shape == (2, 3, 33, 47)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels, ignore_index=255))


def test_peers_train_and_score_on_the_same_data(tmp_path, capsys, monkeypatch):
    data = tmp_path / "shapes"
    assert coat_main(["segment", "make-shapes", str(data), "--train-images", "8", "--val-images", "4"]) == 0
    argv = ["bench", "--data", str(data), "--output", str(tmp_path / "runs"), "--epochs", "1"]
    argv += ["--peers", "upernet-coat", "fpn-resnet18", "--test-data", str(data), "--json", str(tmp_path / "r.json")]
    argv += ["--input-size", "64", "--base-scale", "96", "64", "--batch-size", "4"]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    load("bench_segment_peers").main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| upernet") or "fpn" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["upernet-coat", "fpn-resnet18"]
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert all(0 <= r["best_miou"] <= 100 and 0 <= r["test_miou"] <= 100 for r in results)
    assert results[1]["params_m"] > results[0]["params_m"]  # FPN-ResNet-18 against UperNet on coat_lite_tiny


def test_prepare_writes_the_plain_layout_with_ignore_and_splits(tmp_path):
    prepare = load("prepare_segmentation_sets")
    camvid = tmp_path / "CamVid"
    for split in ("train", "val", "test"):
        (camvid / split).mkdir(parents=True)
        (camvid / f"{split}annot").mkdir()
        Image.new("RGB", (8, 6)).save(camvid / split / "a.png")
        Image.fromarray(np.array([[0, 11, 10]] * 6, dtype=np.uint8).repeat(3, 1)[:, :8]).save(
            camvid / f"{split}annot" / "a.png"
        )
    prepare.prepare_camvid(camvid, tmp_path / "camvid")
    mask = np.asarray(Image.open(tmp_path / "camvid" / "test" / "masks" / "a.png"))
    assert set(np.unique(mask)) == {0, 10, 255}  # "unlabelled" (11) ignored
    assert len((tmp_path / "camvid" / "class_names.txt").read_text().split()) == 11

    human = tmp_path / "human_src"
    (human / "Training_Images").mkdir(parents=True)
    (human / "Ground_Truth").mkdir()
    for number in (5, 6, 12):
        Image.new("RGB", (10, 7)).save(human / "Training_Images" / f"{number}.jpg")
        Image.new("L", (10, 8 if number == 5 else 7), 255).save(human / "Ground_Truth" / f"{number}.png")
    prepare.prepare_human(human, tmp_path / "human")
    assert sorted(p.name for p in (tmp_path / "human" / "val" / "images").iterdir()) == ["12.jpg", "6.jpg"]
    resized = Image.open(tmp_path / "human" / "masks" / "5.png")
    assert resized.size == (10, 7) and set(np.unique(np.asarray(resized))) == {1}  # one pixel off: resized
