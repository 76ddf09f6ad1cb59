"""ONNX Runtime as a runtime: the file ``coat export --format onnx`` writes, with its class names and preprocessing,
run by ``coat predict``, ``coat eval`` and ``coat bench`` (``--runtime onnxruntime`` / ``--modes onnxruntime``)."""

import json

import pytest
import torch

import coat
from coat.checkpoint import CheckpointError
from coat.cli import main
from coat.onnx_runtime import METADATA_KEYS, read_onnx
from conftest import NAMED_CLASSES

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(named_checkpoint, tmp_path_factory):
    """``coat export --format onnx`` of ``named_checkpoint``, done once (each export takes ~20 s)."""
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--checkpoint", str(named_checkpoint), "--format", "onnx", "--output", str(path)]) == 0
    return path


def test_the_file_carries_its_class_names_and_preprocessing(named_checkpoint, exported, tmp_path):
    classifier, class_names, preprocessing = read_onnx(exported)
    assert class_names == NAMED_CLASSES
    assert (preprocessing.input_size, preprocessing.crop_pct) == (64, 0.9)
    model = coat.load_model(named_checkpoint).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert (classifier(x) - model(x)).abs().max() < 1e-4

    foreign = tmp_path / "foreign.onnx"  # an ONNX file that `coat export` did not write
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(CheckpointError, match="holds no class names or preprocessing"):
        read_onnx(foreign)
    assert set(METADATA_KEYS.values()) <= {p.key for p in onnx.load(str(exported)).metadata_props}


def test_large_batches_run_in_chunks_with_the_same_logits(exported, monkeypatch):
    classifier, _, _ = read_onnx(exported)
    x = torch.randn(5, 3, 64, 64).numpy()
    whole = classifier.run(x)  # one call: 5 images of 64x64 are below CHUNK_PIXELS
    calls = []
    session_run = classifier.session.run

    def counted_run(outputs, feeds):
        calls.append(len(feeds[classifier.input_name]))
        return session_run(outputs, feeds)

    monkeypatch.setattr(classifier.session, "run", counted_run)
    monkeypatch.setattr("coat.onnx_runtime.CHUNK_PIXELS", 2 * 64 * 64)
    chunked = classifier.run(x)
    assert calls == [2, 2, 1] and chunked.shape == whole.shape
    assert abs(chunked - whole).max() < 1e-5


def test_predict_on_the_file_agrees_with_pytorch(named_checkpoint, exported, labelled_images, capsys):
    argv = ["predict", str(labelled_images), "--json", "--topk", "3"]
    assert main([*argv, "--checkpoint", str(named_checkpoint)]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main([*argv, "--checkpoint", str(exported), "--runtime", "onnxruntime"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for ours, theirs in zip(got, expected):
        assert [t["label"] for t in ours["topk"]] == [t["label"] for t in theirs["topk"]]
        assert all(abs(a["prob"] - b["prob"]) < 1e-5 for a, b in zip(ours["topk"], theirs["topk"]))

    assert main([*argv, "--checkpoint", str(exported)]) == 2  # an ONNX file needs --runtime onnxruntime
    assert "is an ONNX file; run it with --runtime onnxruntime" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(exported), "--runtime", "onnxruntime", "--dtype", "bf16"]) == 2
    assert "ONNX Runtime runs the file in fp32, not bf16" in capsys.readouterr().err


def test_eval_on_the_file_and_on_a_checkpoint_exported_on_the_fly(
    named_checkpoint, exported, labelled_images, tmp_path, capsys
):
    """``coat eval`` on the ONNX file, and on the checkpoint with ``--runtime onnxruntime`` (exported in memory),
    measures what PyTorch measures."""
    results = {}
    for name, checkpoint, runtime in [
        ("pytorch", named_checkpoint, "pytorch"),
        ("file", exported, "onnxruntime"),
        ("on the fly", named_checkpoint, "onnxruntime"),
    ]:
        output = tmp_path / name
        argv = ["eval", "--checkpoint", str(checkpoint), "--data", str(labelled_images), "--workers", "0"]
        assert main([*argv, "--runtime", runtime, "--output", str(output), "--device", "cpu"]) == 0, name
        results[name] = json.loads((output / "results.json").read_text())
    capsys.readouterr()
    for name in ("file", "on the fly"):
        assert results[name]["images"] == 9 and results[name]["runtime"] == "onnxruntime"
        assert results[name]["top1"] == results["pytorch"]["top1"]
        assert abs(results[name]["loss"] - results["pytorch"]["loss"]) < 1e-4
        assert results[name]["per_class_accuracy"].keys() == set(NAMED_CLASSES)


def test_bench_runs_onnx_runtime(capsys):
    argv = ["bench", "--model", "coat_lite_tiny", "--batch-size", "2", "--size", "64", "--warmup", "0"]
    assert main([*argv, "--repeats", "1", "--modes", "eager", "onnxruntime", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["mode"], r["dtype"]) for r in rows] == [("eager", "fp32"), ("onnxruntime", "fp32")]
    assert all(r["images_per_second"] > 0 for r in rows)
