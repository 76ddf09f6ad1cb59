"""Segmentation data layouts, their checks, and the mIoU metrics."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from coat.data.datasets import DataError
from coat.segmentation.data import IGNORE_INDEX, read_split
from coat.segmentation.metrics import confusion_matrix, segmentation_metrics
from coat.segmentation.shapes import CLASS_NAMES, LAYOUTS, make_segmentation_shapes


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_both_splits_with_the_class_names(layout, tmp_path):
    root = make_segmentation_shapes(tmp_path / layout, layout, train_images=4, val_images=2)
    train = read_split(root, "train")
    val = read_split(root, "val", train.class_names)
    assert train.layout == layout and len(train.pairs) == 4 and len(val.pairs) == 2
    assert train.class_names == CLASS_NAMES
    image, mask = train.pairs[0]
    classes = train.to_classes(np.asarray(Image.open(mask)))
    assert classes.shape == np.asarray(Image.open(image)).shape[:2]
    assert set(np.unique(classes)) <= {0, 1, 2, 3} and 0 in classes  # ADE20K's values shifted back down


def test_ade20k_value_zero_is_ignored_and_the_rest_shift_down(tmp_path):
    root = make_segmentation_shapes(tmp_path / "ade", "ade20k", train_images=1, val_images=1)
    split = read_split(root, "train")
    assert split.reduce_zero_label
    values = np.array([[0, 1, 4], [255, 2, 3]], dtype=np.uint8)
    assert split.to_classes(values).tolist() == [[IGNORE_INDEX, 0, 3], [IGNORE_INDEX, 1, 2]]


def test_voc_without_split_lists_is_all_training_and_without_names_has_voc_classes(tmp_path):
    root = make_segmentation_shapes(tmp_path / "voc", "voc", train_images=3, val_images=2)
    for listing in (root / "ImageSets" / "Segmentation").iterdir():
        listing.unlink()
    (root / "class_names.txt").unlink()
    train = read_split(root, "train")
    assert len(train.pairs) == 5 and read_split(root, "val") is None
    assert train.class_names[:2] == ["background", "aeroplane"] and len(train.class_names) == 21


def test_plain_layout_without_names_counts_classes_and_labelme_ignore_is_not_a_class(tmp_path):
    root = make_segmentation_shapes(tmp_path / "plain", "plain", train_images=3, val_images=1)
    (root / "class_names.txt").write_text("__ignore__\n_background_\ncircle\nsquare\ntriangle\n")
    assert read_split(root).class_names == ["_background_", "circle", "square", "triangle"]
    (root / "class_names.txt").unlink()
    assert read_split(root).class_names == ["0", "1", "2", "3"]


def _bad(root, what: str):
    image, mask = read_split(root).pairs[0]
    if what == "size":
        Image.new("L", (7, 5)).save(mask)
    elif what == "label":
        values = np.asarray(Image.open(mask)).copy()
        values[0, 0] = 9
        Image.fromarray(values).save(mask)
    elif what == "missing":
        mask.unlink()
    elif what == "colour":
        Image.new("RGB", Image.open(image).size).save(mask)
    return mask, image


@pytest.mark.parametrize(
    "what, message",
    [
        ("size", "is 7x5 but its image"),
        ("label", "has label 9, outside the 4 classes"),
        ("missing", "have no mask"),
        ("colour", "is a RGB image; masks hold one class index per pixel"),
    ],
)
def test_bad_data_is_one_line_naming_the_file_and_the_fix(what, message, tmp_path):
    root = make_segmentation_shapes(tmp_path / "voc", "voc", train_images=2, val_images=1)
    mask, image = _bad(root, what)
    with pytest.raises(DataError) as error:
        read_split(root)
    text = str(error.value)
    assert message in text and (mask.name in text or image.name in text) and len(text.splitlines()) == 1


def test_an_unknown_folder_names_the_layouts(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="JPEGImages/ with SegmentationClassPNG/"):
        read_split(tmp_path / "stuff")
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "nowhere")


def test_metrics_against_a_hand_computed_case():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    predicted = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion = confusion_matrix(predicted, target, num_classes=4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    metrics = segmentation_metrics(confusion, ["a", "b", "c", "d"])
    # IoU a: 1 / (2 + 2 - 1) = 1/3; b: 3 / (3 + 4 - 3) = 3/4; c: 1 / (2 + 1 - 1) = 1/2; d never occurs
    assert metrics["class_iou"]["a"] == pytest.approx(100 / 3) and metrics["class_iou"]["d"] is None
    assert metrics["class_iou"]["b"] == pytest.approx(75.0) and metrics["class_iou"]["c"] == pytest.approx(50.0)
    assert metrics["miou"] == pytest.approx(100 * (1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(100 * 5 / 7)  # the ignored pixel counts nowhere
    assert metrics["mean_accuracy"] == pytest.approx(100 * (1 / 2 + 1 + 1 / 2) / 3)
    empty = segmentation_metrics(torch.zeros(2, 2, dtype=torch.long), ["a", "b"])
    assert empty["miou"] == 0.0 and not math.isnan(empty["pixel_accuracy"])


@pytest.mark.parametrize("cat_max_ratio", [1.0, 0.75])
def test_training_transform_keeps_masks_on_their_pixels_and_pads_with_ignore(cat_max_ratio):
    """An image whose grey level encodes its mask's class: after rescale, crop, flip and normalisation the two
    still agree (bilinear against nearest differ only at region edges), and padding is labelled ignore."""
    from torchvision import tv_tensors

    from coat.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from coat.segmentation.dataset import train_transform

    classes = torch.zeros(60, 80, dtype=torch.uint8)
    classes[10:40, 20:70] = 1
    classes[45:, :30] = 2
    image = tv_tensors.Image((classes * 100).expand(3, -1, -1).contiguous())
    torch.manual_seed(0)
    transform = train_transform(96, (160, 120), (0.5, 2.0), 0.5, photometric=False, cat_max_ratio=cat_max_ratio)
    for _ in range(5):
        out, mask = transform(image, tv_tensors.Mask(classes))
        grey = out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to 0..1
        assert out.shape == (3, 96, 96) and mask.shape == (96, 96)
        labelled = mask != IGNORE_INDEX
        agree = (torch.round(grey * 255 / 100) == mask)[labelled].float().mean()
        assert agree > 0.95
        assert (grey[~labelled].abs() < 1e-6).all() if (~labelled).any() else True  # padding: image 0, mask 255


def test_capped_crop_redraws_crops_that_one_class_fills():
    """A 40x40 block of class 1 in a 100x100 mask of class 0, ignore in one corner: 16% of the 40x40 crops hold
    both classes with neither at 75%; capped at 0.75, ten draws find one 1 - 0.84^10 = 83% of the time. The image
    is cut alike."""
    from torchvision import tv_tensors

    from coat.segmentation.dataset import CappedRandomCrop

    mask = torch.zeros(100, 100, dtype=torch.uint8)
    mask[:40, :40] = 1
    mask[90:, 90:] = IGNORE_INDEX
    image = tv_tensors.Image(mask.expand(3, -1, -1).contiguous())
    checker, rates = CappedRandomCrop(40, 0.75), {}
    for ratio in (1.0, 0.75):
        crop = CappedRandomCrop(40, ratio)
        torch.manual_seed(0)
        balanced = 0
        for _ in range(40):
            cut_image, cut_mask = crop(image, tv_tensors.Mask(mask))
            assert cut_mask.shape == (40, 40) and torch.equal(cut_image[0], cut_mask)
            balanced += checker._balanced(cut_mask)
        rates[ratio] = balanced / 40
    assert rates[1.0] < 0.35 and rates[0.75] > 0.65, rates
    small = CappedRandomCrop(40, 0.75)(image[:, :30, :50], tv_tensors.Mask(mask[:30, :50]))  # padded to 40x40
    assert small[1].shape == (40, 40) and (small[1][30:] == IGNORE_INDEX).all() and (small[0][:, 30:] == 0).all()
