"""`coat detect train | eval | predict | make-shapes` end to end on a tiny generated COCO set."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from coat.cli import main
from coat.detection.shapes import make_split
from coat.detection.weights import load_detector
from conftest import torchrun_two_processes

TINY = [
    "--recipe",
    "shapes",
    "--batch-size",
    "2",
    "--min-sizes",
    "64",
    "80",
    "--max-size",
    "128",
    "--warmup-iters",
    "2",
    "--workers",
    "0",
]
DETR = ["--detector", "deformable-detr", "--num-queries", "10", "--transformer-layers", "2"]
# the cascades' heads cost most on a CPU: few RoIs, proposals and detections
CHEAP_CASCADE = ["--box-batch-size-per-image", "8", "--rpn-post-nms-top-n-test", "50", "--detections-per-image", "10"]


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    """Train (6 images) and val (4 images) splits of 64-96 px shapes; the four data flags."""
    root = tmp_path_factory.mktemp("shapes")
    make_split(root / "train", root / "train.json", count=6, seed=0, size=(64, 96))
    make_split(root / "val", root / "val.json", count=4, seed=1, size=(64, 96))
    return [
        "--train-images",
        str(root / "train"),
        "--train-annotations",
        str(root / "train.json"),
        "--val-images",
        str(root / "val"),
        "--val-annotations",
        str(root / "val.json"),
    ]


@pytest.fixture(scope="module")
def trained(coco_set, tmp_path_factory):
    """A one-epoch Mask R-CNN run, then resumed for a second epoch."""
    out = tmp_path_factory.mktemp("run") / "det"
    assert main(["detect", "train", *coco_set, *TINY, "--output", str(out), "--epochs", "1"]) == 0
    assert main(["detect", "train", *coco_set, *TINY, "--output", str(out), "--epochs", "2", "--resume", "auto"]) == 0
    return out


@pytest.fixture(scope="module")
def trained_detr(coco_set, tmp_path_factory):
    """A one-epoch Deformable DETR run (10 queries, 2 + 2 layers), then resumed for a second epoch."""
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("run") / "detr"
    run = ["detect", "train", *coco_set, *TINY, *DETR, "--output", str(out)]
    assert main([*run, "--epochs", "1"]) == 0
    assert main([*run, "--epochs", "2", "--resume", "auto"]) == 0
    return out


@pytest.mark.slow
def test_train_writes_run_files_and_resumes(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 <= summary["final_box_ap"] <= 100 and "final_mask_ap" in summary
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "val_box_ap", "val_box_ap50", "val_box_ap_small", "val_mask_ap75"} <= set(records[0])
    for plot in ("loss", "ap", "lr"):
        assert (trained / "plots" / f"{plot}.png").stat().st_size > 1000
    model, spec = load_detector(trained / "best.safetensors")
    assert spec.detector == "maskrcnn" and spec.class_names == ["circle", "square", "triangle"]
    assert spec.min_sizes == (64, 80) and model.transform.min_size == (64, 80)
    state = torch.load(trained / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2


@pytest.mark.slow
def test_eval_reproduces_the_training_metrics_and_refuses_to_overwrite(trained, coco_set, tmp_path, capsys):
    val_images, val_annotations = coco_set[5], coco_set[7]
    args = [
        "detect",
        "eval",
        "--checkpoint",
        str(trained / "best.safetensors"),
        "--images",
        val_images,
        "--annotations",
        val_annotations,
        "--workers",
        "0",
        "--output",
        str(tmp_path / "ev"),
    ]
    assert main(args) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    best = max(json.loads(line)["val_box_ap"] for line in (trained / "metrics.jsonl").read_text().splitlines())
    assert results["images"] == 4 and results["box_ap"] == pytest.approx(best, abs=1e-6)
    detections = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(d) for d in detections)
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_draws_pngs_and_writes_coco_results(trained, coco_set, tmp_path, capsys):
    out = tmp_path / "pred"
    assert (
        main(
            [
                "detect",
                "predict",
                coco_set[5],
                "--checkpoint",
                str(trained / "best.safetensors"),
                "--output",
                str(out),
                "--score-threshold",
                "0.0",
            ]
        )
        == 0
    )
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == ["000001.png", "000002.png", "000003.png", "000004.png"]
    source = Image.open(f"{coco_set[5]}/000001.png")
    drawn = Image.open(pictures[0])
    assert drawn.size == source.size and drawn.mode == "RGB"
    detections = json.loads((out / "detections.json").read_text())
    assert detections and {d["image_id"] for d in detections} <= {1, 2, 3, 4}
    assert all(d["category_id"] in (1, 2, 3) and len(d["bbox"]) == 4 for d in detections)
    capsys.readouterr()
    assert (
        main(
            ["detect", "predict", coco_set[5], "--checkpoint", str(trained / "best.safetensors"), "--output", str(out)]
        )
        == 2
    )


@pytest.mark.slow
def test_detector_checkpoint_is_refused_by_classification_commands(trained, coco_set, capsys):
    assert main(["predict", coco_set[5], "--checkpoint", str(trained / "best.safetensors")]) == 2
    assert "is a detector checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_deformable_detr_trains_resumes_evaluates_and_predicts(trained_detr, coco_set, tmp_path):
    records = [json.loads(line) for line in (trained_detr / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "val_mask_ap" not in records[0]
    assert records[0]["train_loss"] > 0 and records[0]["lr"] == 5e-4  # the shapes recipe's DETR values
    model, spec = load_detector(trained_detr / "best.safetensors")
    assert spec.detector == "deformable-detr" and spec.class_names == ["circle", "square", "triangle"]
    assert spec.options == {"num_queries": 10, "encoder_layers": 2, "decoder_layers": 2}
    assert model.detr.config.num_queries == 10 and model.transform.min_size == (64, 80)
    val_images, val_annotations = coco_set[5], coco_set[7]
    evaluation = ["detect", "eval", "--checkpoint", str(trained_detr / "best.safetensors"), "--workers", "0"]
    assert main([*evaluation, "--images", val_images, "--annotations", val_annotations, "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    best = max(r["val_box_ap"] for r in records)
    assert results["images"] == 4 and results["box_ap"] == pytest.approx(best, abs=1e-6)
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert len(detections) == 4 * 10 * 3  # every (query, class) pair: fewer than the 100 kept per image
    assert {d["category_id"] for d in detections} <= {1, 2, 3}
    assert all(d.keys() == {"image_id", "category_id", "bbox", "score"} for d in detections)  # as predicted
    predict = ["detect", "predict", val_images, "--checkpoint", str(trained_detr / "best.safetensors")]
    assert main([*predict, "--output", str(tmp_path / "pred"), "--score-threshold", "0.0"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 4


@pytest.mark.slow
def test_cascade_mask_rcnn_trains_resumes_and_evaluates(coco_set, tmp_path):
    out = tmp_path / "cascade"
    run = ["detect", "train", *coco_set, *TINY, "--detector", "cascade-mask", *CHEAP_CASCADE, "--output", str(out)]
    assert main([*run, "--epochs", "1"]) == 0
    assert main([*run, "--epochs", "2", "--resume", "auto"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "val_mask_ap" in records[0]
    model, spec = load_detector(out / "best.safetensors")
    assert spec.detector == "cascade-mask" and len(model.roi_heads.stages) == 3
    assert spec.options == {"box_detections_per_img": 10, "rpn_post_nms_top_n_test": 50}
    assert model.roi_heads.detections_per_img == 10 and model.rpn.post_nms_top_n() == 50  # eval mode
    val_images, val_annotations = coco_set[5], coco_set[7]
    evaluation = ["detect", "eval", "--checkpoint", str(out / "best.safetensors"), "--workers", "0"]
    assert main([*evaluation, "--images", val_images, "--annotations", val_annotations, "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["box_ap"] == pytest.approx(max(r["val_box_ap"] for r in records), abs=1e-6)
    assert "mask_ap" in results  # (`coat detect predict` takes any detector checkpoint: tested with Mask R-CNN's)


def test_make_shapes_prints_the_training_command(tmp_path, capsys):
    assert main(["detect", "make-shapes", str(tmp_path / "s"), "--train-images", "3", "--val-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "coat detect train --recipe shapes --train-images" in out
    assert len(list((tmp_path / "s" / "train").glob("*.png"))) == 3
    assert main(["detect", "make-shapes", str(tmp_path / "s")]) == 2  # not over an existing set


@pytest.mark.parametrize(
    "bad, message",
    [
        ([], "--train-images, --train-annotations, --val-images, --val-annotations required"),
        (["--detector", "yolo"], "--detector must be one of maskrcnn, fasterrcnn, cascade-mask, cascade, deformable"),
        (["--detector", "deformable-detr", "--recipe", "coco-3x"], "the coco-3x recipe has no values for --detector"),
        (["--detector", "deformable-detr", "--frozen-stages", "1"], "--frozen-stages do(es) not apply"),
        (["--recipe", "lvis"], "unknown recipe 'lvis'"),
    ],
)
def test_bad_options_are_one_line_errors(bad, message, coco_set, tmp_path, capsys):
    data = coco_set if bad else []
    assert main(["detect", "train", *data, "--output", str(tmp_path / "o"), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_data_is_a_one_line_error(coco_set, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    data = list(coco_set)
    data[3] = str(broken)  # --train-annotations
    assert main(["detect", "train", *data, *TINY, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not valid JSON" in err and str(broken) in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("box_detector", ["fasterrcnn", "cascade"])
def test_box_detectors_need_no_masks(box_detector, coco_set, tmp_path, capsys):
    """Box-only annotations train Faster R-CNN and Cascade R-CNN (and the mask detectors refuse them with the
    fix)."""
    data = list(coco_set)
    boxes_only = tmp_path / "boxes.json"
    content = json.loads(Path(data[3]).read_text())
    for annotation in content["annotations"]:
        annotation.pop("segmentation")
    boxes_only.write_text(json.dumps(content))
    data[3] = str(boxes_only)
    mask_detector = {"fasterrcnn": "maskrcnn", "cascade": "cascade-mask"}[box_detector]
    run = ["detect", "train", *data, *TINY, "--epochs", "1", *CHEAP_CASCADE, "--detector"]
    assert main([*run, mask_detector, "--output", str(tmp_path / "m")]) == 2
    assert "needs masks: add them or pass a box-only --detector (fasterrcnn, cascade" in capsys.readouterr().err
    assert main([*run, box_detector, "--output", str(tmp_path / "f")]) == 0
    assert "final_mask_ap" not in json.loads((tmp_path / "f" / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "detector",
    [[], DETR, ["--detector", "cascade-mask", *CHEAP_CASCADE]],
    ids=["maskrcnn", "deformable-detr", "cascade-mask"],
)
def test_detect_train_under_torchrun_two_processes(detector, coco_set, tmp_path):
    """Each process evaluates half the images; the gathered COCO metrics equal a one-process evaluation."""
    name = detector[1] if detector else "maskrcnn"
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            *torchrun_two_processes({"maskrcnn": 29519, "deformable-detr": 29521, "cascade-mask": 29524}[name]),
            "-m",
            "coat.cli",
            "detect",
            "train",
            *coco_set,
            *TINY,
            *detector,
            "--batch-size",
            "1",
            "--epochs",
            "1",
            "--output",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert (
        main(
            [
                "detect",
                "eval",
                "--checkpoint",
                str(out / "best.safetensors"),
                "--images",
                coco_set[5],
                "--annotations",
                coco_set[7],
                "--workers",
                "0",
                "--output",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["images"] == 4 and results["box_ap"] == pytest.approx(summary["best_box_ap"], abs=1e-6)


def test_deformable_detr_without_the_hf_extra_names_the_install(coco_set, tmp_path):
    import sys

    script = (
        "import sys\nsys.modules['transformers'] = None\nfrom coat.cli import main\n"
        f"sys.exit(main(['detect', 'train', *{coco_set!r}, '--detector', 'deformable-detr', '--output', "
        f"{str(tmp_path / 'o')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pip install 'coat-pytorch[hf]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
