"""End-to-end `coat train` / `coat eval`: outputs, DDP equivalence, kill-and-resume, bad input."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import coat
from coat.cli import main
from coat.train.classify import train_step
from coat.train.optim import build_optimizer
from conftest import file_modes, kill_and_resume_matches_straight_run, torchrun_two_processes
from ddp_reference import make_batch, make_model

TINY = [
    "--model",
    "coat_lite_tiny",
    "--input-size",
    "32",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--recipe",
    "small",
    "--lr",
    "1e-3",
    "--warmup-epochs",
    "0.5",
    "--no-amp",
]


@pytest.mark.slow
def test_train_on_png_folder_then_eval(image_folder, tmp_path, capsys, group_umask):
    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(image_folder), "--output", str(out), "--epochs", "3", *TINY, "--ema-decay", "0.9"])
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    for key in ("best_top1", "final_top1", "epochs", "images_per_second", "model", "checkpoint"):
        assert key in summary
    assert summary["epochs"] == 3 and 0 <= summary["final_top1"] <= 100
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and "val_ema_top1" in records[0]
    for plot in ("loss", "accuracy", "lr"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert list((out / "tensorboard").iterdir())
    assert (out / "config.yaml").exists()
    stdout = capsys.readouterr().err + capsys.readouterr().out
    best = coat.read_checkpoint(out / "best.safetensors")
    assert json.loads(best.metadata["class_names"]) == ["circle", "square", "stripes"]
    assert best.preprocessing.input_size == 32 and best.config.num_classes == 3
    del stdout

    assert (
        main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(image_folder), "--workers", "0"])
        == 0
    )
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["images"] == 12 and set(results["per_class_accuracy"]) == {"circle", "square", "stripes"}
    assert results["top1"] == pytest.approx(summary["best_top1"])
    assert (out / "eval" / "confusion.png").stat().st_size > 1000
    # results are never overwritten silently
    assert main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(image_folder)]) == 2
    bf16 = ["--dtype", "bf16", "--output", str(out / "eval_bf16"), "--workers", "0"]
    assert main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(image_folder), *bf16]) == 0
    in_bf16 = json.loads((out / "eval_bf16" / "results.json").read_text())
    assert in_bf16["dtype"] == "bf16" and abs(in_bf16["top1"] - results["top1"]) <= 100 / 12  # one image at most
    modes = file_modes(out)  # every file the run and the evaluation wrote, as the umask says
    assert {"last.pt", "best.safetensors", "summary.json", "eval/confusion.png"} <= modes.keys()
    assert set(modes.values()) == {group_umask}, modes


def test_progress_bar_shows_running_mean_loss_and_speed_at_log_intervals(image_folder, tmp_path, monkeypatch):
    import coat.train.loop as loop

    bars = []

    class RecordingBar(loop.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.postfixes = []
            bars.append(self)

        def set_postfix(self, *args, **kwargs):
            self.postfixes.append(kwargs)
            super().set_postfix(*args, **kwargs)

    monkeypatch.setattr(loop, "tqdm", RecordingBar)
    out = tmp_path / "run"  # 24 training images in batches of 4: 6 steps an epoch, read at steps 1, 3, 5 and 6
    assert (
        main(
            [
                "train",
                "--data",
                str(image_folder),
                "--output",
                str(out),
                "--epochs",
                "2",
                *TINY,
                "--batch-size",
                "4",
                "--log-interval",
                "2",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch_bars = [bar for bar in bars if bar.postfixes]
    assert [len(bar.postfixes) for bar in epoch_bars] == [4, 4]
    for bar, record in zip(epoch_bars, records):
        assert all(float(p["img_s"]) > 0 for p in bar.postfixes)
        assert len({p["loss"] for p in bar.postfixes}) > 1  # it moves within the epoch
        assert float(bar.postfixes[-1]["loss"]) == pytest.approx(record["train_loss"], abs=1e-3)  # the epoch mean


def test_ddp_step_equals_single_process_double_batch(tmp_path):
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            *torchrun_two_processes(29517),
            str(Path(__file__).parent / "ddp_step_worker.py"),
            str(out),
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ddp = load_file(str(out))
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = make_batch(8)
    train_step(model, images, targets, build_optimizer(model, lr=1e-4, weight_decay=0.05), label_smoothing=0.1)
    grads = dict(model.named_parameters())
    moved = 0
    for name, value in model.state_dict().items():
        grad = grads[name].grad
        grad_error = (ddp[f"grad.{name}"] - grad).abs().max()
        assert grad_error <= 1e-4 * grad.abs().max(), name  # DDP averages the gradients
        # Adam's first step is lr * g / (|g| + eps): where |g| is near eps, round-off in g (two processes on
        # one thread each against one on two) moves the step by a sizeable part of lr, so weights are
        # compared where the step is well defined
        settled = grad.abs() > 1e-6
        assert (ddp[name] - value)[settled].abs().max().item() < 1e-6, name
        moved += not torch.equal(value, before[name])
    assert moved > 100  # the step really changed the weights


def test_a_non_finite_loss_on_one_process_stops_every_process(image_folder, tmp_path):
    # 24 images, 4 per process: 3 steps an epoch; rank 1's loss is NaN at step 2, read at step 3 (the epoch's last)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        *TINY,
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--data",
        str(image_folder),
        "--output",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    ]  # Gloo on CPUs, also where one GPU could not serve both processes
    result = subprocess.run(
        [
            *torchrun_two_processes(29518),
            str(Path(__file__).parent / "ddp_nonfinite_worker.py"),
            "train",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode != 0
    stopped = [line for line in result.stderr.splitlines() if "coat train: error: the loss was not finite" in line]
    assert len(stopped) == 2, result.stderr[-3000:]  # each process stopped itself; none was left waiting
    # rank 1's NaN at step 2 reaches both processes' weights through DDP's gradient average: step 3 is NaN on both
    assert all(
        "not finite in 3 step(s) (over all processes) of epoch 1 up to step 3; every process stopped, "
        "no checkpoint was written yet" in line
        for line in stopped
    ), stopped
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.safetensors").exists()


@pytest.mark.slow
def test_kill_and_resume_ends_like_an_uninterrupted_run(image_folder, tmp_path):
    args = ["--data", str(image_folder), "--epochs", "3", *TINY, "--device", "cpu"]
    kill_and_resume_matches_straight_run(args, tmp_path, epochs=3)


# ---------------------------------------------------------------------------- bad input
def _one_line_exit_2(capsys, args: list[str], *needles: str) -> None:
    """``coat ARGS`` (in this process: the CLI's own error handling) exits 2 with one line naming the problem."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("coat ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-1500:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_data_folder(tmp_path, capsys):
    _one_line_exit_2(
        capsys, ["train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), *TINY], "does not exist"
    )


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    (tmp_path / "d" / "val" / "a").mkdir(parents=True)
    _one_line_exit_2(
        capsys, ["train", "--data", str(tmp_path / "d"), "--output", str(tmp_path / "o"), *TINY], "no images"
    )


def test_class_mismatch(image_folder, tmp_path, capsys):
    (image_folder / "val" / "stripes").rename(image_folder / "val" / "zigzag")
    _one_line_exit_2(
        capsys,
        ["train", "--data", str(image_folder), "--output", str(tmp_path / "o"), *TINY],
        "classes differ",
        "zigzag",
    )


def test_corrupt_image_is_named_or_skipped(image_folder, tmp_path, capsys):
    bad = image_folder / "train" / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _one_line_exit_2(
        capsys,
        ["train", "--data", str(image_folder), "--output", str(tmp_path / "o"), "--epochs", "1", *TINY],
        str(bad),
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(image_folder),
                "--output",
                str(tmp_path / "o2"),
                "--epochs",
                "1",
                "--skip-corrupt",
                *TINY,
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "o2" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["skipped_images"] >= 1


def test_existing_run_is_not_overwritten(image_folder, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    _one_line_exit_2(capsys, ["train", "--data", str(image_folder), "--output", str(out), *TINY], "--overwrite")
    assert (out / "metrics.jsonl").read_text() == "{}\n"
    assert (
        main(["train", "--data", str(image_folder), "--output", str(out), "--epochs", "1", "--overwrite", *TINY]) == 0
    )
    assert (out / "notes.txt").read_text() == "mine"  # only run files are replaced


def test_pretrained_of_another_variant(image_folder, authors_checkpoint, tmp_path, capsys):
    _one_line_exit_2(
        capsys,
        [
            "train",
            "--data",
            str(image_folder),
            "--output",
            str(tmp_path / "o"),
            "--pretrained",
            str(authors_checkpoint("coat_tiny")),
            *TINY,
        ],
        "does not fit",
    )


def test_fine_tune_from_pretrained_reinitialises_head(image_folder, authors_checkpoint, tmp_path):
    assert (
        main(
            [
                "train",
                "--data",
                str(image_folder),
                "--output",
                str(tmp_path / "o"),
                "--epochs",
                "1",
                "--pretrained",
                str(authors_checkpoint("coat_lite_tiny")),
                *TINY,
            ]
        )
        == 0
    )
    assert coat.load_model(tmp_path / "o" / "best.safetensors").head.weight.shape == (3, 320)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(image_folder, tmp_path, monkeypatch, capsys):
    from coat.train.classify import ClassificationTask

    real_loss = ClassificationTask.batch_loss
    calls = {"n": 0}

    def loss_turning_nan(*args, **kwargs):
        calls["n"] += 1
        loss, count = real_loss(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 5 else loss), count  # epoch 2 (3 steps per epoch), step 2

    monkeypatch.setattr(ClassificationTask, "batch_loss", loss_turning_nan)
    out = tmp_path / "o"
    assert main(["train", "--data", str(image_folder), "--output", str(out), "--epochs", "3", *TINY]) == 2
    err = capsys.readouterr().err
    # read at the epoch's last step (3), after which the weights are NaN too
    assert "not finite in 2 step(s) (over all processes) of epoch 2 up to step 3" in err
    assert f"the last good checkpoint is {out / 'last.pt'}" in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1


@pytest.mark.slow
def test_coat_train_under_torchrun_two_processes(image_folder, tmp_path):
    out = tmp_path / "ddp_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            *torchrun_two_processes(29518),
            "-m",
            "coat.cli",
            "train",
            "--data",
            str(image_folder),
            "--output",
            str(out),
            "--epochs",
            "2",
            "--repeated-aug",
            "2",
            *TINY,
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
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # written once, by rank 0
    # the metrics reduced over the two processes equal a single-process evaluation of the same weights
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "best.safetensors"),
                "--data",
                str(image_folder),
                "--workers",
                "0",
                "--output",
                str(tmp_path / "eval"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )  # where it trained
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["images"] == 12 and results["top1"] == pytest.approx(summary["best_top1"])


def test_amp_bf16_on_cpu(image_folder, tmp_path):
    out = tmp_path / "amp"
    assert main(["train", "--data", str(image_folder), "--output", str(out), "--epochs", "1", "--amp", *TINY]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["val_loss"] == record["val_loss"] and 0 <= record["val_top1"] <= 100  # finite
