"""`--data hfds:NAME_OR_PATH`: Hugging Face datasets (saved to disk, or a local Parquet folder) read as the same
images and classes as an image folder, offline; bad datasets are one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coat.cli import main
from coat.data.datasets import CorruptImageError, DataError, FolderSplit
from conftest import make_image_folder

datasets = pytest.importorskip("datasets")  # the test extra brings it (extra hfds)

from coat.data.hf_datasets import HFImages, hf_splits, load_splits  # noqa: E402

CLASSES = ["circle", "square", "stripes"]
SMALL_RUN = ["--model", "coat_lite_tiny", "--recipe", "small", "--epochs", "1", "--input-size", "32"]
SMALL_RUN += ["--batch-size", "8", "--no-amp", "--workers", "0"]


def as_hf_split(folder):
    """The images of a class folder as a Hugging Face dataset: the files' bytes in FolderSplit's order."""
    samples = FolderSplit(folder).folder.samples
    rows = {"img": [{"bytes": Path(path).read_bytes(), "path": None} for path, _ in samples]}
    rows["label"] = [label for _, label in samples]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    """An image folder and the same images as a DatasetDict saved to disk (splits train / validation)."""
    root = tmp_path_factory.mktemp("hfds")
    make_image_folder(root / "images")
    splits = {"train": as_hf_split(root / "images" / "train"), "validation": as_hf_split(root / "images" / "val")}
    datasets.DatasetDict(splits).save_to_disk(str(root / "saved"))
    return root


def test_rows_are_rgb_images_with_the_class_label_names(hf_data):
    train, val = hf_splits(str(hf_data / "saved"), "train", "val", None, None)  # "val" finds "validation"
    assert train.classes == val.classes == CLASSES and (len(train), len(val)) == (24, 12)
    folder = FolderSplit(hf_data / "images" / "train")
    for index in (0, 1, 2, 3, 9):  # png, grayscale, RGBA, jpeg: converted to RGB as the folder's files are
        image, label = train[index]
        expected, expected_label = folder[index]
        assert image.mode == "RGB" and image.tobytes() == expected.tobytes() and label == expected_label


def test_a_parquet_folder_loads_offline_and_a_missing_split_is_named(hf_data, tmp_path):
    for split, name in (("train", "train"), ("val", "validation")):  # load_dataset infers splits from file names
        as_hf_split(hf_data / "images" / split).to_parquet(str(tmp_path / "data" / f"{name}-00000-of-00001.parquet"))
    (val,) = load_splits(str(tmp_path), ["val"])
    assert len(val) == 12 and val.features["label"].names == CLASSES
    with pytest.raises(DataError, match=r"has no split 'test' \(it has train, validation\); name one with"):
        load_splits(str(tmp_path), ["test"])


def test_bad_datasets_are_one_line_errors(hf_data, tmp_path):
    plain = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(DataError, match=r"image columns \[\] and class-label columns \[\]"):
        HFImages(plain, "plain")
    broken = as_hf_split(hf_data / "images" / "val").select(range(2)).cast_column("img", datasets.Image(decode=False))
    broken = broken.map(lambda row: {"img": {"bytes": b"not an image", "path": None}}).cast_column(
        "img", datasets.Image()
    )
    with pytest.raises(CorruptImageError, match="row 0 of broken"):
        HFImages(broken, "broken")[0]
    assert HFImages(broken, "broken", skip_corrupt=True)[1] is None


def test_without_the_extra_the_install_is_named(monkeypatch):
    from coat.extras import MissingExtraError

    monkeypatch.setattr("coat.extras.missing_modules", lambda extra: ["datasets"])
    with pytest.raises(MissingExtraError, match=r"pip install 'coat-pytorch\[hfds\]'"):
        load_splits("anything", ["train"])


@pytest.mark.slow
def test_training_from_a_dataset_equals_training_from_the_folder(hf_data, tmp_path):
    """The same images in the same order with the same seed: the same run, to the last digit; eval agrees."""
    summaries = []
    for name, data in (("hf", f"hfds:{hf_data / 'saved'}"), ("folder", str(hf_data / "images"))):
        assert main(["train", "--data", data, *SMALL_RUN, "--output", str(tmp_path / name)]) == 0
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text()))
    assert summaries[0]["final_loss"] == summaries[1]["final_loss"]
    assert summaries[0]["best_top1"] == summaries[1]["best_top1"]
    checkpoint = str(tmp_path / "hf" / "best.safetensors")
    assert main(["eval", "--checkpoint", checkpoint, "--data", f"hfds:{hf_data / 'saved'}", "--workers", "0"]) == 0
    results = json.loads((tmp_path / "hf" / "eval" / "results.json").read_text())
    assert results["images"] == 12 and results["top1"] == pytest.approx(summaries[0]["best_top1"])


def test_a_dataset_not_on_disk_or_in_the_cache_is_refused_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "coat.cli", "train", "--data", "hfds:nobody/no-such-set", *SMALL_RUN]
    result = subprocess.run([*command, "--output", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "cannot load the Hugging Face dataset nobody/no-such-set" in result.stderr
