"""Files are written whole (temp + rename) with the permissions the umask gives, as open(path, "w") does."""

import json
import os

import pytest

import coat
from coat.files import atomic_directory, atomic_write, current_umask, write_json


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        checkpoint = coat.save_checkpoint(
            coat.create_model("coat_lite_tiny", num_classes=2), tmp_path / "m.safetensors"
        )
        summary = write_json(tmp_path / "summary.json", {"top1": 1.0})
        raw = atomic_write(tmp_path / "raw.bin", lambda tmp: tmp.write_bytes(b"x"))
    finally:
        os.umask(previous)
    for path in (checkpoint, summary, raw):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert json.loads(summary.read_text()) == {"top1": 1.0}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json(tmp_path / "results.json", {"run": 1})

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"run": 1} and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _write_two_files(folder):
    (folder / "model.xml").write_text("graph")
    (folder / "model.bin").write_bytes(b"weights")


def test_a_folder_is_written_whole_with_the_umask_modes(tmp_path, group_umask):
    out = atomic_directory(tmp_path / "ir", _write_two_files)
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    assert out.stat().st_mode & 0o777 == 0o750 and all(p.stat().st_mode & 0o777 == group_umask for p in out.iterdir())
    (out / "stale.txt").write_text("from before")
    atomic_directory(out, _write_two_files)  # replaces the whole folder: nothing of the old one stays
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    assert [p.name for p in tmp_path.iterdir()] == ["ir"]  # no temporary folder left


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    out = atomic_directory(tmp_path / "ir", _write_two_files)

    def fail(folder):
        (folder / "model.xml").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_directory(out, fail)
    assert (out / "model.xml").read_text() == "graph" and [p.name for p in tmp_path.iterdir()] == ["ir"]
