import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through Triton's interpreter; Triton reads this when its language module
    # is first imported, which importing coat does, so it is set before any test module is collected.
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

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
