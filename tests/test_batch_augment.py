"""Batch augmentation: per-sample random crops and rotations in one resampling of the batch."""

import pytest
import torch

from coat.data.batch_augment import BatchTrainTransform, RandomResizedCropRotate


def test_full_window_without_rotation_is_a_resize():
    images = torch.rand(3, 1, 28, 28)
    crop = RandomResizedCropRotate(28, scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0)
    assert torch.allclose(crop(images), images, atol=1e-5)  # same size, whole image: the identity


def test_each_sample_gets_its_own_parameters():
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 28, 28)
    image[..., 10:18, 6:22] = 1.0  # a bar
    out = RandomResizedCropRotate(32, scale=(0.5, 1.0), degrees=30)(image.expand(8, -1, -1, -1))
    assert out.shape == (8, 1, 32, 32)
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[0], flat[i]) for i in range(1, 8))


def test_quarter_turn_matches_rot90():
    image = torch.rand(2, 1, 16, 16)
    crop = RandomResizedCropRotate(16, scale=(1.0, 1.0))
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]]).expand(2, -1, -1)
    assert torch.allclose(crop.warp(image, quarter), torch.rot90(image, 1, dims=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("degrees", [0.0, 10.0])
def test_sampled_angles_and_windows_stay_in_range(degrees):
    torch.manual_seed(0)
    crop = RandomResizedCropRotate(32, scale=(0.5, 1.0), degrees=degrees)
    theta = crop.sample_theta(2000, torch.device("cpu"))
    linear = theta[:, :, :2]
    width, height = linear[:, :, 0].norm(dim=1), linear[:, :, 1].norm(dim=1)  # column norms: the window's sides
    angles = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert angles.abs().max() <= degrees + 1e-4
    if degrees:
        assert angles.min() < -0.9 * degrees and angles.max() > 0.9 * degrees
    area = width * height
    assert area.min() >= 0.5 - 1e-4 and area.max() <= 1.0 + 1e-4
    assert (theta[:, 0, 2].abs() <= 1 - width + 1e-5).all() and (theta[:, 1, 2].abs() <= 1 - height + 1e-5).all()


def test_window_stays_inside_the_image():
    torch.manual_seed(0)
    ones = torch.ones(64, 1, 28, 28)
    out = RandomResizedCropRotate(32, scale=(0.8, 1.0))(ones)  # no rotation: never samples outside
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)


def test_batch_train_transform_normalises_to_three_channels():
    torch.manual_seed(0)
    images = torch.full((4, 1, 28, 28), 255, dtype=torch.uint8)
    out = BatchTrainTransform(32, 0.8, 0.0, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))(images)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.ones(4, 32, 32), atol=1e-5)
    assert torch.allclose(out[:, 1], torch.full((4, 32, 32), 3.0), atol=1e-5)
    assert torch.allclose(out[:, 2], torch.ones(4, 32, 32), atol=1e-5)
