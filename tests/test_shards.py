"""WebDataset shards: `coat data pack`, the streamed reader's split over processes and workers, its exact epoch
length and per-epoch order, and `coat train | eval --data wds:DIR`."""

import json
import os
import shutil
import subprocess
import tarfile
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from coat.cli import main
from coat.data.datasets import DataError, eval_split
from coat.data.shards import ShardStream, expand_braces, pack_folder, read_samples, read_split
from coat.train.distributed import DistInfo
from conftest import kill_and_resume_matches_straight_run, make_image_folder, torchrun_two_processes

CLASSES = ["circle", "square", "stripes"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """An image folder of 3 classes x 8 train / 4 val images, packed 5 images a shard (5 + 2 shards)."""
    root = tmp_path_factory.mktemp("shards")
    make_image_folder(root / "images")
    pack_folder(root / "images", root / "wds", shard_size=5)
    return root


def keys_read(stream: ShardStream, worker: int, workers: int, monkeypatch) -> list[tuple[int, int]]:
    """(label, fingerprint of the pixels) of what one reader (``worker`` of ``workers``) yields, in order."""
    monkeypatch.setattr("coat.data.shards.get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))
    return [(label, hash(image.tobytes())) for image, label in stream]


def test_pack_writes_timms_split_info_and_samples(shards, capsys, tmp_path):
    info = json.loads((shards / "wds" / "_info.json").read_text())
    assert info["class_names"] == CLASSES
    train = info["splits"]["train"]
    assert train["num_samples"] == 24 and train["shard_lengths"] == [5, 5, 5, 5, 4]
    assert train["filenames"][0] == "train-000000.tar" and info["splits"]["val"]["shard_lengths"] == [5, 5, 2]
    with tarfile.open(shards / "wds" / "train-000000.tar") as tar:
        names = tar.getnames()
    assert names[:2] == ["000000000.png", "000000000.cls"]  # a sample: the image file's bytes and its class
    samples = list(read_samples(shards / "wds" / "val-000002.tar"))
    assert [(key, label) for key, _, label in samples] == [("000000010", 2), ("000000011", 2)]
    original = sorted((shards / "images" / "val" / "stripes").iterdir())[2].read_bytes()
    assert samples[0][1] == original
    assert main(["data", "pack", str(shards / "images"), str(shards / "wds")]) == 2  # not into a used folder
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["data", "pack", str(shards / "images"), str(tmp_path / "w"), "--shard-size", "100"]) == 0
    assert "train 1 shards / 24 images, val 1 shards / 12 images, 3 classes" in capsys.readouterr().out


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 2), (3, 1)])
def test_evaluation_reads_every_sample_once_over_processes_and_workers(shards, world, workers, monkeypatch):
    split = read_split(shards / "wds", "val")
    everything = Counter()
    for rank in range(world):
        for worker in range(workers):
            stream = ShardStream(split, None, shuffle=False, info=DistInfo(rank, world))
            everything.update(keys_read(stream, worker, workers, monkeypatch))
    single = Counter(keys_read(ShardStream(split, None, shuffle=False), 0, 1, monkeypatch))
    assert everything == single and sum(single.values()) == 12  # 4 readers > 3 shards: split by sample


def test_training_yields_exact_whole_batches_in_an_order_drawn_from_seed_and_epoch(shards, monkeypatch):
    split = read_split(shards / "wds", "train")
    streams = [ShardStream(split, None, shuffle=True, info=DistInfo(r, 2), batch_size=4, seed=3) for r in (0, 1)]
    assert [len(s) for s in streams] == [12, 12]  # 24 images over 2 processes, whole batches of 4
    per_worker = [keys_read(streams[0], w, 2, monkeypatch) for w in (0, 1)]
    assert sum(len(k) for k in per_worker) == 12 and all(len(k) % 4 == 0 for k in per_worker)  # whole batches
    first = keys_read(streams[1], 0, 1, monkeypatch)
    assert first == keys_read(streams[1], 0, 1, monkeypatch)  # the same epoch: the same order
    streams[1].set_epoch(1)
    assert first != keys_read(streams[1], 0, 1, monkeypatch)
    # one epoch's two processes read different shards (5 shards: 3 and 2, re-read to fill the quota)
    other = keys_read(streams[0], 0, 1, monkeypatch)
    assert len(other) == 12 and not set(other) & set(first)


def test_repeats_and_augmentation_seeds(shards, monkeypatch):
    split = read_split(shards / "wds", "train")
    repeated = ShardStream(split, None, shuffle=True, batch_size=4, repeats=3, buffer=1)  # no shuffling
    keys = keys_read(repeated, 0, 1, monkeypatch)
    assert len(keys) == 24 and keys[0] == keys[1] == keys[2] and keys[3] == keys[4] == keys[5]

    def draw(image):
        return torch.rand(1).item()  # stands for a random augmentation

    stream = ShardStream(split, draw, shuffle=True, batch_size=4)
    monkeypatch.setattr("coat.data.shards.get_worker_info", lambda: None)
    draws = [value for value, _ in stream]
    assert draws == [value for value, _ in stream] and len(set(draws)) == 24  # per-sample seeds, replayed


def test_a_loader_with_two_workers_keeps_the_epoch_length_and_reaches_them_with_set_epoch(shards):
    split = read_split(shards / "wds", "train")
    stream = ShardStream(split, lambda image: torch.tensor(image.size), shuffle=True, batch_size=4)
    loader = DataLoader(stream, batch_size=4, drop_last=True, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == 6
        epochs.append(torch.cat([labels for _, labels in batches]).tolist())
    assert epochs[0] != epochs[1] and len(epochs[0]) == 24


def test_bad_shard_folders_are_one_line_errors(shards, tmp_path):
    with pytest.raises(DataError, match=r"_info\.json does not exist; write shards with `coat data pack"):
        read_split(tmp_path, "train")
    (tmp_path / "_info.json").write_text(json.dumps({"splits": {}, "class_names": CLASSES}))
    with pytest.raises(DataError, match="no usable 'train' split"):
        read_split(tmp_path, "train")
    info = json.loads((shards / "wds" / "_info.json").read_text())
    (tmp_path / "_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="lacks shards of split train"):
        read_split(tmp_path, "train")


def test_brace_patterns_name_shards_and_need_their_sample_count(shards, tmp_path):
    assert expand_braces("a-{08..10}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"] and expand_braces("plain.tar") == ["plain.tar"]
    split = read_split(shards / "wds", "train-{000000..000004}.tar", num_samples=24)
    assert split.shard_lengths == (5, 5, 5, 5, 4) and split.class_names == CLASSES
    assert read_split(shards / "wds", "train-{000000..000004}.tar|24").shard_lengths == split.shard_lengths  # timm's
    with pytest.raises(DataError, match="needs the number of samples it holds: give --train-samples"):
        read_split(shards / "wds", "train-{000000..000004}.tar")
    with pytest.raises(DataError, match="apply to shard patterns"):
        read_split(shards / "wds", "train", num_samples=24)
    with pytest.raises(DataError, match=r"lacks shards of split train-\{000000\.\.000009\}\.tar"):
        read_split(shards / "wds", "train-{000000..000009}.tar", num_samples=24)
    with pytest.raises(DataError, match=r"_info\.json names 3 classes, not 4"):
        read_split(shards / "wds", "train", num_classes=4)
    bare = tmp_path / "bare"
    shutil.copytree(shards / "wds", bare, ignore=shutil.ignore_patterns("_info.json"))
    with pytest.raises(DataError, match=r"bare name no classes \(no class_names in _info\.json\); give --num-classes"):
        read_split(bare, "val-{000000..000002}.tar", num_samples=12)
    assert read_split(bare, "val-000002.tar", 2, num_classes=3).class_names == ["0", "1", "2"]
    info = json.loads((shards / "wds" / "_info.json").read_text())
    (bare / "_info.json").write_text(json.dumps({"splits": info["splits"]}))  # timm's info: no class names
    assert len(eval_split(f"wds:{bare}", None, num_classes=3)) == 12  # coat eval: the checkpoint's class count
    pattern = eval_split(f"wds:{bare}", None, num_classes=3, split="val-{000000..000002}.tar", num_samples=12)
    assert len(pattern) == 12  # coat eval --split PATTERN --samples N
    with pytest.raises(DataError, match="--samples counts the images of a shard pattern"):
        eval_split(str(tmp_path), None, num_samples=12)
    with pytest.raises(DataError, match="one held-out split, 'val', not 'train'"):
        eval_split(None, None, split="train")


def test_shard_options_need_shards(capsys):
    assert main(["train", "--train-samples", "10", "--epochs", "1"]) == 2
    assert "--train-samples applies only with --data wds:DIR (shards)" in capsys.readouterr().err


@pytest.mark.slow
def test_train_from_shards_resumes_like_an_uninterrupted_run_and_eval_agrees(shards, tmp_path):
    data = f"wds:{shards / 'wds'}"
    args = ["--data", data, "--model", "coat_lite_tiny", "--input-size", "32", "--batch-size", "8", "--no-amp"]
    args += ["--recipe", "small", "--epochs", "2", "--device", "cpu", "--workers", "2"]  # readers set the order
    kill_and_resume_matches_straight_run(args, tmp_path, epochs=2)
    out = tmp_path / "killed"
    summary = json.loads((out / "summary.json").read_text())
    assert f"data: {data}" in (out / "config.yaml").read_text()
    assert main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", data, "--workers", "0"]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["images"] == 12 and results["top1"] == pytest.approx(summary["best_top1"])
    bare = tmp_path / "bare"  # shards named by a pattern, without _info.json
    shutil.copytree(shards / "wds", bare, ignore=shutil.ignore_patterns("_info.json"))
    by_pattern = ["--data", f"wds:{bare}", "--split", "val-{000000..000002}.tar", "--samples", "12"]
    args = ["eval", "--checkpoint", str(out / "best.safetensors"), *by_pattern, "--workers", "0"]
    assert main([*args, "--output", str(tmp_path / "by-pattern")]) == 0
    again = json.loads((tmp_path / "by-pattern" / "results.json").read_text())
    assert again["top1"] == results["top1"] and again["split"] == "val-{000000..000002}.tar"


def test_split_in_proportion():
    from coat.data.shards import split_in_proportion

    assert split_in_proportion(6, [14, 10]) == [4, 2] and split_in_proportion(3, [5, 5]) == [2, 1]
    assert split_in_proportion(5, [0, 0]) == [3, 2] and sum(split_in_proportion(7, [3, 9, 1])) == 7


@pytest.mark.slow
def test_train_from_shards_under_torchrun_two_processes(shards, tmp_path):
    """Both processes take the same number of steps (else DDP would hang) and evaluate their halves of val; the
    shards are named by brace patterns with sample counts."""
    out, bare = tmp_path / "ddp", tmp_path / "bare"  # bare: the shards without _info.json (timm's pattern form)
    shutil.copytree(shards / "wds", bare, ignore=shutil.ignore_patterns("_info.json"))
    command = [*torchrun_two_processes(29525), "-m", "coat.cli", "train", "--data", f"wds:{bare}", "--num-classes", "3"]
    command += ["--train-split", "train-{000000..000004}.tar", "--train-samples", "24"]
    command += ["--val-split", "val-{000000..000002}.tar", "--val-samples", "12"]
    command += ["--model", "coat_lite_tiny", "--input-size", "32", "--batch-size", "4", "--workers", "1"]
    command += ["--recipe", "small", "--epochs", "2", "--no-amp", "--device", "cpu", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(shards / "images")]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["images"] == 12 and results["top1"] == pytest.approx(summary["best_top1"])


def test_a_corrupt_image_is_named_by_sample_and_shard_or_skipped(tmp_path):
    from coat.data.datasets import CorruptImageError
    from coat.data.shards import write_shard

    make_image_folder(tmp_path / "images", train_per_class=1, val_per_class=1)
    pack_folder(tmp_path / "images", tmp_path / "wds", shard_size=10)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    write_shard(tmp_path / "wds" / "val-000000.tar", [(str(broken), 0), (str(broken), 1), (str(broken), 2)], 0)
    split = read_split(tmp_path / "wds", "val")
    with pytest.raises(CorruptImageError, match=r"sample 000000000 of .*val-000000\.tar"):
        list(ShardStream(split, None, shuffle=False))
    assert list(ShardStream(split, None, shuffle=False, skip_corrupt=True)) == [None, None, None]
