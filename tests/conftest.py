import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from fixture_weights import official_state_dict  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory):
    """Path of an authors'-format .pth (weights under 'model') for a variant, made once per variant."""
    cache: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in cache:
            path = tmp_path_factory.mktemp("official") / f"{variant}.pth"
            torch.save({"model": official_state_dict(variant)}, path)
            cache[variant] = path
        return cache[variant]

    return make
