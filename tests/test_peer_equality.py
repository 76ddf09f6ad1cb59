"""Same weights, same outputs as timm's CoaT (which follows the authors' code) at other sizes.

timm's CoaT only accepts sizes divisible by 32 (fixed at construction), so sizes that are not are
checked by the flooring rule the authors' code follows: every stage's conv floors, so an image gives
the same result as its top-left crop to (stage-1 grid x 4) pixels.
"""

import pytest
import torch

import coat
from coat.bench import timm_pair

pytestmark = pytest.mark.usefixtures("speed_path")  # on the reference and the fast paths

pytest.importorskip("timm")  # a test extra; the fixture tests cover the authors' outputs without it


@pytest.mark.parametrize("name", coat.list_models())
@pytest.mark.parametrize("size", [(64, 96), (160, 96)])
def test_same_outputs_as_timm_at_other_sizes(name, size):
    ours, peer = timm_pair(name, num_classes=10, img_size=size)
    ours.eval(), peer.eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny", "coat_mini"])
@pytest.mark.parametrize("size", [(33, 47), (250, 250), (101, 67)])
def test_sizes_not_divisible_by_32_floor_like_the_authors(name, size):
    model = coat.create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, *size)
    cropped = x[..., : size[0] // 4 * 4, : size[1] // 4 * 4]
    with torch.no_grad():
        assert (model(x) - model(cropped)).abs().max().item() < 1e-5
