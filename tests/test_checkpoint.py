"""Reading, writing and refusing checkpoint files."""

import json
import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import coat
from coat.checkpoint import CheckpointError
from coat.data.preprocessing import Preprocessing


class _Payload:
    """Unpickling this runs os.system: a loader that honours it would create the marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        coat.create_model("coat_lite_tiny", pretrained=path)
    assert not marker.exists()
    # the payload really does run when unpickled without protection
    with open(path, "rb"):
        pass
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_truncated_file(authors_checkpoint, tmp_path):
    data = authors_checkpoint("coat_lite_tiny").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        coat.create_model("coat_lite_tiny", pretrained=path)


def test_truncated_safetensors(authors_checkpoint, tmp_path):
    model = coat.create_model("coat_lite_tiny")
    path = coat.save_checkpoint(model, tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        coat.load_model(cut)


@pytest.mark.parametrize("content", [b"hello world\n", b""])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable"):
        coat.create_model("coat_lite_tiny", pretrained=path)


def test_state_dict_of_another_model(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"conv.weight": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match="not a CoaT checkpoint"):
        coat.create_model("coat_lite_tiny", pretrained=path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        coat.create_model("coat_lite_tiny", pretrained=tmp_path / "nope.pth")


def test_wrong_variant_names_the_first_mismatches(authors_checkpoint):
    with pytest.raises(CheckpointError) as err:
        coat.create_model("coat_lite_mini", pretrained=authors_checkpoint("coat_lite_tiny"))
    message = str(err.value)
    assert "shapes differ" in message and "[1, 1, 256] in the file but [1, 1, 320] in the model" in message
    assert "\n" not in message


def test_lite_weights_into_coat_reports_missing_keys(authors_checkpoint):
    with pytest.raises(CheckpointError, match=r"missing from the file: .*parallel_blocks"):
        coat.create_model("coat_tiny", pretrained=authors_checkpoint("coat_lite_tiny"))


def test_other_num_classes_reinitialises_head(authors_checkpoint, caplog):
    path = authors_checkpoint("coat_lite_tiny")
    with caplog.at_level(logging.WARNING):
        model = coat.create_model("coat_lite_tiny", pretrained=path, num_classes=10)
    assert model.head.weight.shape == (10, 320)
    assert "re-initialised the classifier" in caplog.text and "1000 classes" in caplog.text
    reference = coat.create_model("coat_lite_tiny", pretrained=path)
    assert torch.equal(model.stages[0].patch_embed.proj.weight, reference.stages[0].patch_embed.proj.weight)


def test_own_format_carries_config_and_metadata(tmp_path):
    model = coat.create_model("coat_tiny", num_classes=3, drop_path_rate=0.1, coscale="attention")
    path = coat.save_checkpoint(model, tmp_path / "m.safetensors", metadata={"note": "hi"})
    checkpoint = coat.read_checkpoint(path)
    assert checkpoint.variant == "coat_tiny" and checkpoint.metadata["note"] == "hi"
    rebuilt = coat.load_model(path)
    assert rebuilt.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), k


def test_preprocessing_travels_with_our_files(tmp_path):
    model = coat.create_model("coat_lite_tiny", num_classes=3)
    assert model.preprocessing == coat.get_weights("coat_lite_tiny").preprocessing  # the default weights'
    model.preprocessing = Preprocessing(input_size=64, crop_pct=1.0, mean=(0.5,) * 3, std=(0.2,) * 3)
    path = coat.save_checkpoint(model, tmp_path / "m.safetensors")
    assert coat.load_model(path).preprocessing == model.preprocessing
    assert coat.create_model("coat_lite_tiny", pretrained=path).preprocessing == model.preprocessing


def test_files_from_before_preprocessing_left_the_config(tmp_path):
    """Older files kept input_size / crop_pct / mean / std in the config: they still load, with them."""
    model = coat.create_model("coat_lite_tiny", num_classes=3)
    config = {**model.config.to_dict(), "input_size": 32, "crop_pct": 1.0, "mean": [0.1] * 3, "std": [0.3] * 3}
    meta = {"format": "coat", "format_version": "1", "config": json.dumps(config), "variant": "coat_lite_tiny"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "old.safetensors"), meta)
    loaded = coat.load_model(tmp_path / "old.safetensors")
    assert loaded.config == model.config
    assert loaded.preprocessing == Preprocessing(input_size=32, crop_pct=1.0, mean=(0.1,) * 3, std=(0.3,) * 3)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = coat.create_model("coat_lite_tiny")
    path = tmp_path / "m.safetensors"
    coat.save_checkpoint(model, path)
    coat.save_checkpoint(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
