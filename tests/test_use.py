"""`coat predict | export | explain | bench`, torch.hub and Hugging Face style folders."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import coat
from coat.cli import main
from coat.data.preprocessing import Preprocessing
from coat.export import onnx_parity
from conftest import small_coscale_model
from fixture_weights import authors_state_dict

CLASSES = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A 3-class checkpoint saved by the library, class names in its metadata."""
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    torch.manual_seed(0)
    model = coat.create_model("coat_lite_tiny", num_classes=3)
    model.preprocessing = Preprocessing(input_size=64, crop_pct=1.0)
    coat.save_checkpoint(model, path, metadata={"class_names": json.dumps(CLASSES)})
    return path


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, size in enumerate([(70, 50), (64, 64), (33, 90)]):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"{i}.png")
    Image.new("L", (80, 80), 128).save(folder / "sub" / "gray.jpg")
    return folder


def test_predict_json_with_class_names(trained_checkpoint, images, capsys):
    assert main(["predict", str(images), "--checkpoint", str(trained_checkpoint), "--json", "--topk", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 4 and results[-1]["path"].endswith("gray.jpg")
    for r in results:
        assert len(r["topk"]) == 2 and {t["label"] for t in r["topk"]} <= set(CLASSES)
        assert r["topk"][0]["prob"] >= r["topk"][1]["prob"]
        assert CLASSES[r["topk"][0]["index"]] == r["topk"][0]["label"]


def test_predict_matches_the_model(trained_checkpoint, images, capsys):
    model = coat.load_model(trained_checkpoint).eval()
    x = model.preprocessing.transforms()(Image.open(images / "1.png").convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        expected = model(x).softmax(-1)[0]
    main(["predict", str(images / "1.png"), "--checkpoint", str(trained_checkpoint), "--json", "--topk", "3"])
    result = json.loads(capsys.readouterr().out)[0]
    for t in result["topk"]:
        assert t["prob"] == pytest.approx(expected[t["index"]].item(), abs=1e-6)


def test_predict_csv_table_and_glob(trained_checkpoint, images, capsys):
    assert (
        main(["predict", str(images / "*.png"), "--checkpoint", str(trained_checkpoint), "--csv", "--topk", "1"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,rank,label,index,prob" and len(lines) == 4
    assert main(["predict", str(images / "0.png"), "--checkpoint", str(trained_checkpoint)]) == 0
    assert "0.png" in capsys.readouterr().out


def test_thousand_class_checkpoint_gets_imagenet_names(authors_checkpoint, images, capsys):
    assert (
        main(["predict", str(images / "0.png"), "--checkpoint", str(authors_checkpoint("coat_lite_tiny")), "--json"])
        == 0
    )
    labels = {t["label"] for t in json.loads(capsys.readouterr().out)[0]["topk"]}
    names = coat.inference.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and labels <= set(names)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["missing.png"], "does not exist"),
        (["notes.png"], "cannot read image"),
    ],
)
def test_predict_bad_input(trained_checkpoint, tmp_path, capsys, args, needle):
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", *[str(tmp_path / a) for a in args], "--checkpoint", str(trained_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_predict_wrong_checkpoint(images, tmp_path, capsys):
    bad = tmp_path / "x.pth"
    bad.write_text("nope")
    assert main(["predict", str(images), "--checkpoint", str(bad)]) == 2
    assert "not a readable" in capsys.readouterr().err


def test_export_cli_onnx_parity(tmp_path, capsys, group_umask):
    """``coat export`` of a small co-scale CoaT (parallel blocks: resizing between scales), checked at export and
    then at other batch sizes and sizes that are not multiples of 32 (one export: each takes ~20 s)."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = small_coscale_model()
    checkpoint = tmp_path / "ckpt" / "model.safetensors"
    checkpoint.parent.mkdir()
    coat.save_checkpoint(model, checkpoint)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out)]) == 0
    assert "max abs diff 224x224" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph  # the onnx_export path's graph: softmax on the last axis, GELU as one op
    softmax_axes = [attr.i for node in graph.node if node.op_type == "Softmax" for attr in node.attribute]
    assert softmax_axes and set(softmax_axes) == {-1}
    ops = {node.op_type for node in graph.node}
    assert "Gelu" in ops and "Erf" not in ops
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert out.stat().st_size > weight_bytes and [p.name for p in out_dir.iterdir()] == ["m.onnx"]  # weights inside
    assert out.stat().st_mode & 0o777 == group_umask
    others = onnx_parity(model.eval(), out, sizes=[(96, 160), (33, 47)], batch=3)
    assert all(d < 1e-4 for d in others.values())
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(out)]) == 2  # no silent overwrite


def test_torch_export_dynamic_shapes():
    from coat.export import export_program

    model = coat.create_model("coat_lite_tiny", num_classes=4).eval()
    program = export_program(model)
    for x in (torch.randn(3, 3, 64, 96), torch.randn(1, 3, 65, 250)):
        with torch.no_grad():
            assert torch.allclose(program.module()(x), model(x), atol=1e-4)


def test_explain_writes_png_of_expected_size(trained_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "why.png"
    assert main(["explain", str(images / "0.png"), "--checkpoint", str(trained_checkpoint), "--output", str(out)]) == 0
    assert "top class" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (1800, 360)
    assert main(["explain", str(images / "nope.png"), "--checkpoint", str(trained_checkpoint)]) == 2


def test_bench_cli_with_timm(capsys):
    pytest.importorskip("timm")
    assert (
        main(
            [
                "bench",
                "--model",
                "coat_lite_tiny",
                "--batch-size",
                "1",
                "--size",
                "64",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--compare",
                "timm",
                "--dtypes",
                "fp32",
                "bf16",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert {(r["impl"], r["dtype"]) for r in rows} == {
        ("coat", "fp32"),
        ("timm", "fp32"),
        ("coat", "bf16"),
        ("timm", "bf16"),
    }
    assert all(r["images_per_second"] > 0 for r in rows)
    assert all("speedup_vs_timm" in r for r in rows if r["impl"] == "coat")


def test_torch_hub_local():
    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "coat_tiny", source="local", num_classes=3)
    assert isinstance(model, coat.CoaT) and model.config.num_classes == 3


def _hub_folder(folder: Path, with_names: bool) -> Path:
    folder.mkdir(parents=True)
    state = {
        k: v.clone()
        for k, v in authors_state_dict("coat_lite_tiny").items()
        if k.split(".")[0] not in ("norm1", "norm2", "norm3")
    }
    save_file(state, str(folder / "model.safetensors"))
    config = {"architecture": "coat_lite_tiny", "num_classes": 1000}
    if with_names:
        config["label_names"] = [f"class{i}" for i in range(1000)]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_hugging_face_folder(tmp_path, images, capsys):
    """A model folder on disk (downloads from the hub: tests/test_weights.py)."""
    folder = _hub_folder(tmp_path / "plain", with_names=True)
    assert main(["predict", str(images / "0.png"), "--checkpoint", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["topk"][0]["label"].startswith("class")
    plain = _hub_folder(tmp_path / "unnamed", with_names=False)
    model = coat.create_model("coat_lite_tiny", pretrained=plain)
    assert torch.equal(model.head.weight, coat.create_model("coat_lite_tiny", pretrained=folder).head.weight)
