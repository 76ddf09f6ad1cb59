"""COCO-format data for detection: the shapes generator, checks of bad files, samples, COCO evaluation."""

import json

import pytest
import torch

from coat.data.datasets import DataError
from coat.detection.coco_eval import coco_metrics, to_coco_results
from coat.detection.data import CocoDetectionSet, detection_transform, read_coco
from coat.detection.shapes import make_split
from coat.train.optim import warmup_multistep


@pytest.fixture
def shapes(tmp_path):
    """Six generated images (64-96 px) and their instances file."""
    annotations = tmp_path / "instances.json"
    make_split(tmp_path / "images", annotations, count=6, seed=3, size=(64, 96))
    return tmp_path / "images", annotations


def rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_generated_shapes_read_back_with_masks_inside_boxes(shapes):
    images, annotations = shapes
    index = read_coco(annotations, images)
    assert len(index.images) == 6 and index.class_names == ["circle", "square", "triangle"] and index.has_masks
    dataset = CocoDetectionSet(index, detection_transform(0.0), with_masks=True)
    for i in range(len(dataset)):
        image, target = dataset[i]
        info = index.images[i]
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        k = len(index.annotations[info["id"]])
        assert target["boxes"].shape == (k, 4) and target["masks"].shape == (k, info["height"], info["width"])
        assert set(target["labels"].tolist()) <= {1, 2, 3}
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert mask.sum() > 20  # a drawn shape, not a sliver
            assert (
                xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1
            )


def test_horizontal_flip_moves_boxes_and_masks_together(shapes):
    images, annotations = shapes
    index = read_coco(annotations, images)
    plain = CocoDetectionSet(index, detection_transform(0.0), with_masks=True)[0]
    flipped = CocoDetectionSet(index, detection_transform(1.0), with_masks=True)[0]
    width = plain[0].shape[-1]
    assert torch.equal(flipped[0], plain[0].flip(-1))
    assert torch.equal(flipped[1]["masks"], plain[1]["masks"].flip(-1))
    expected = plain[1]["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([width, 0, width, 0])
    assert torch.allclose(flipped[1]["boxes"], expected)


def test_ground_truth_as_detections_scores_ap_100_with_sparse_category_ids(shapes):
    images, annotations = shapes

    def sparse_ids(data):
        for category in data["categories"]:
            category["id"] *= 10
        for annotation in data["annotations"]:
            annotation["category_id"] *= 10

    rewrite(annotations, sparse_ids)
    index = read_coco(annotations, images)
    assert index.category_ids == [10, 20, 30]
    dataset = CocoDetectionSet(index, detection_transform(0.0), with_masks=True)
    results = []
    for _image, target in (dataset[i] for i in range(len(dataset))):
        output = {
            "boxes": target["boxes"],
            "labels": target["labels"],
            "scores": torch.ones(len(target["labels"])),
            "masks": target["masks"][:, None].float(),
        }  # [K, 1, H, W] like Mask R-CNN's
        results += to_coco_results(output, target["image_id"], index.category_ids)
    metrics = coco_metrics(index.coco, results, [im["id"] for im in index.images], with_masks=True)
    assert metrics["box_ap"] == pytest.approx(100.0, abs=0.5) and metrics["mask_ap"] == pytest.approx(100.0, abs=0.5)
    # a wrong class for every detection scores zero: the category mapping matters
    for r in results:
        r["category_id"] = 10 if r["category_id"] != 10 else 20
    assert coco_metrics(index.coco, results, [im["id"] for im in index.images], False)["box_ap"] < 50


def test_nothing_detected_is_ap_zero(shapes):
    images, annotations = shapes
    index = read_coco(annotations, images)
    metrics = coco_metrics(index.coco, [], [im["id"] for im in index.images], with_masks=True)
    assert metrics["box_ap"] == 0.0 and metrics["mask_ap50"] == 0.0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["categories"].clear(), "has no categories"),
        (lambda d: d.pop("annotations"), "has no 'annotations' list"),
        (lambda d: d["annotations"][0].update(category_id=99), "category_id 99"),
        (lambda d: d["annotations"][0].update(image_id=999), "image id 999"),
        (lambda d: d["annotations"][0].pop("bbox"), "needs image_id, category_id and a bbox"),
        (lambda d: d["images"][0].pop("file_name"), "lacks 'file_name'"),
    ],
)
def test_bad_annotation_files_are_one_line_errors(shapes, change, message):
    images, annotations = shapes
    rewrite(annotations, change)
    with pytest.raises(DataError, match=message) as err:
        read_coco(annotations, images)
    assert "\n" not in str(err.value)


def test_missing_or_malformed_file(shapes, tmp_path):
    images, _ = shapes
    with pytest.raises(DataError, match="does not exist"):
        read_coco(tmp_path / "nope.json", images)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DataError, match="not valid JSON"):
        read_coco(broken, images)


def test_images_without_files_stop_or_are_skipped_and_counted(shapes):
    images, annotations = shapes
    (images / "000002.png").unlink()
    with pytest.raises(DataError, match=r"1 of the 6 images .* have no file .*\(first: 000002.png\).*--skip-corrupt"):
        read_coco(annotations, images)
    index = read_coco(annotations, images, skip_missing=True)
    assert len(index.images) == 5 and index.missing_images == ["000002.png"]


def test_degenerate_boxes_are_dropped_and_counted(shapes):
    images, annotations = shapes
    rewrite(annotations, lambda d: [d["annotations"][i]["bbox"].__setitem__(2, 0.0) for i in (0, 1)])
    index = read_coco(annotations, images)
    assert index.dropped_boxes == 2
    assert sum(len(v) for v in index.annotations.values()) == len(index.coco.dataset["annotations"]) - 2


def test_warmup_then_step_schedule():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_multistep(optimizer, warmup_steps=10, warmup_factor=0.001, milestones=[20, 30])
    lrs = []
    for _ in range(35):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[5] == pytest.approx(0.001 + 0.999 * 0.5)
    assert lrs[10] == lrs[19] == 1.0 and lrs[20] == pytest.approx(0.1) and lrs[34] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "background", [{"id": 0, "name": "_background_"}, {"id": 9, "name": "Background"}, {"id": 0, "name": "unlabeled"}]
)
def test_unused_background_category_is_dropped_with_one_line(shapes, background, caplog):
    images, annotations = shapes  # labelme2coco style: a background category that no annotation uses
    rewrite(annotations, lambda data: data["categories"].insert(0, background))
    with caplog.at_level("INFO", logger="coat.detection.data"):
        index = read_coco(annotations, images)
    assert index.class_names == ["circle", "square", "triangle"] and index.empty_categories == []
    dropped = [r.getMessage() for r in caplog.records if "background" in r.getMessage()]
    assert len(dropped) == 1 and repr(background["name"]) in dropped[0]


def test_other_categories_without_annotations_are_kept_and_counted(shapes):
    images, annotations = shapes
    rewrite(annotations, lambda data: data["categories"].append({"id": 40, "name": "hexagon"}))
    index = read_coco(annotations, images)
    assert index.class_names == ["circle", "square", "triangle", "hexagon"] and index.empty_categories == ["hexagon"]


def test_background_category_with_annotations_stays_a_class(shapes):
    images, annotations = shapes

    def relabel_first_as_background(data):
        data["categories"].append({"id": 0, "name": "background"})
        data["annotations"][0]["category_id"] = 0

    rewrite(annotations, relabel_first_as_background)
    assert "background" in read_coco(annotations, images).class_names


def test_only_background_categories_is_one_clear_error(shapes):
    images, annotations = shapes
    rewrite(annotations, lambda data: data.update(categories=[{"id": 0, "name": "_background_"}], annotations=[]))
    with pytest.raises(DataError, match="no categories besides background"):
        read_coco(annotations, images)
