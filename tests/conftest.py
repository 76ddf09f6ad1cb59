import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: each, and the commands its tests start, on one thread
    # (two processes on all cores each would oversubscribe them)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through Triton's interpreter; Triton reads this when its language module
    # is first imported, which importing coat does, so it is set before any test module is collected.
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

import coat
from coat.data.preprocessing import Preprocessing
from fixture_weights import authors_state_dict


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["fast", "reference"])
def speed_path(request):
    """Run a test as users get it (the seam picks a fast path where one applies) and on the reference modules."""
    import coat

    if request.param == "reference":
        with coat.fast.only():
            yield request.param
    else:
        yield request.param


@pytest.fixture(scope="session")
def authors_checkpoint(tmp_path_factory):
    """Path of an authors'-format .pth (weights under 'model') for a variant, made once per variant."""
    cache: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in cache:
            path = tmp_path_factory.mktemp("authors") / f"{variant}.pth"
            torch.save({"model": authors_state_dict(variant)}, path)
            cache[variant] = path
        return cache[variant]

    return make


def small_coscale_model(num_classes: int = 5) -> coat.CoaT:
    """A CoaT with every module kind of the co-scale variants (serial and parallel blocks, resizing between
    scales) at one block each and narrow widths: for tools whose time grows with the op count (export, dynamo)."""
    config = coat.CoaTConfig(
        embed_dims=(32, 48, 48, 48),
        serial_depths=(1, 1, 1, 1),
        parallel_depth=1,
        mlp_ratios=(2, 2, 2, 2),
        num_classes=num_classes,
    )
    return coat.CoaT(config)


NAMED_CLASSES = ["a", "b", "c"]  # named_checkpoint's class names, labelled_images' folders


def coat_in_child(*argv: str) -> subprocess.CompletedProcess:
    """``coat ARGV`` in a child process (OpenVINO runs only there: with its CPU plugin loaded, the test process
    segfaulted at a later test's ``fork``)."""
    return subprocess.run([sys.executable, "-m", "coat.cli", *argv], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def named_checkpoint(tmp_path_factory):
    """A 3-class small co-scale CoaT at 64 pixels (crop 0.9), NAMED_CLASSES in its metadata."""
    torch.manual_seed(0)
    model = small_coscale_model(num_classes=3)
    model.preprocessing = Preprocessing(input_size=64, crop_pct=0.9)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    coat.save_checkpoint(model, path, metadata={"class_names": json.dumps(NAMED_CLASSES)})
    return path


@pytest.fixture(scope="module")
def labelled_images(tmp_path_factory):
    """``CLASS/i.png`` for named_checkpoint's classes, three 80x72 images each (not the model's input size)."""
    root = tmp_path_factory.mktemp("images")
    for label, name in enumerate(NAMED_CLASSES):
        (root / name).mkdir()
        for i in range(3):
            Image.new("RGB", (80, 72), (110 * label, 40 * i, 200 - 90 * label)).save(root / name / f"{i}.png")
    return root


def make_image_folder(
    root: Path, classes=("circle", "square", "stripes"), train_per_class=8, val_per_class=4, size=40, seed=0
) -> Path:
    """A small learnable image folder: one colour/shape per class, mixed formats and modes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40)]
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
                pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colours[c % len(colours)]
                image = Image.fromarray(pixels)
                if i % 4 == 1:
                    image.convert("L").save(folder / f"{i}.png")
                elif i % 4 == 2:
                    image.convert("RGBA").save(folder / f"{i}.png")
                elif i % 4 == 3:
                    image.save(folder / f"{i}.jpg", quality=95)
                else:
                    image.save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data")


@pytest.fixture
def group_umask():
    """Run a test under umask 027 (files should come out rw-r-----); the mode files are expected to have."""
    previous = os.umask(0o027)
    try:
        yield 0o640
    finally:
        os.umask(previous)


def file_modes(folder: Path) -> dict[str, int]:
    """``{relative path: permission bits}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}


def torchrun_two_processes(port: int) -> list[str]:
    """The command line that starts what follows it in two processes under torchrun, rendezvous on ``port``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]


def kill_and_resume_matches_straight_run(args: list[str], tmp_path: Path, epochs: int) -> None:
    """``coat train ARGS`` run straight, and run again killed (SIGKILL) once its first checkpoint exists, then
    resumed with ``--resume auto`` and persistent workers: every epoch's metrics (to 1e-6: CPU kernels) and the
    summaries' top-1 are the same."""
    import json
    import signal
    import subprocess
    import time

    def train(output: Path, *extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "coat.cli", "train", "--output", str(output), *args, *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=600)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train(straight).returncode == 0
    command = [sys.executable, "-m", "coat.cli", "train", "--output", str(killed), *args, "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [json.loads(x)["epoch"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert done and done[-1] < epochs, "the run finished before it could be killed"
    resumed = train(killed, "--workers", "2", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stderr + resumed.stdout

    def metrics(run: Path) -> list[dict]:
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in record.items() if "second" not in k} for record in records]

    a, b = metrics(straight), metrics(killed)
    assert [r["epoch"] for r in b] == list(range(1, epochs + 1))
    for ra, rb in zip(a, b):
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["epoch"], key)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (straight, killed))
    assert sa["best_top1"] == sb["best_top1"] and sa["final_top1"] == sb["final_top1"]
