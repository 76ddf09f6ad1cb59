"""Deformable DETR behind torchvision's detector interface (coat.detection.deformable_detr.DeformableDetrDetector),
its data augmentation, recipes and optimiser groups."""

import pytest
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert

pytest.importorskip("transformers")

from coat.detection.builders import DETECTORS
from coat.detection.config import RECIPES, resolve
from coat.detection.data import RandomSizeCrop, detection_transform
from coat.detection.deformable_detr import DeformableDetrDetector, authors_losses, detr_targets, image_mask
from coat.detection.task import DetectionTask
from coat.errors import UsageError
from coat.models.coat import find_coat
from coat.train.optim import build_optimizer

SMALL = {"num_queries": 10, "encoder_layers": 1, "decoder_layers": 2, "d_model": 64}
SMALL.update(encoder_ffn_dim=64, decoder_ffn_dim=64)
DATA = {"train_images": "t", "train_annotations": "t.json", "val_images": "v", "val_annotations": "v.json"}


def _detector(variant: str = "coat_lite_tiny", **kwargs) -> DeformableDetrDetector:
    torch.manual_seed(0)
    return DeformableDetrDetector.build(variant, num_classes=4, min_size=(64, 80), max_size=128, **SMALL, **kwargs)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0], [10.0, 10.0, 20.0, 50.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[0.0, 0.0, 60.0, 60.0]]), "labels": torch.tensor([2])},
    ]


def test_targets_become_detrs_normalised_centre_boxes_and_zero_based_labels():
    (converted,) = detr_targets(_targets()[:1], [(60, 80)])
    assert converted["class_labels"].tolist() == [0, 2]
    assert torch.allclose(converted["boxes"][0], torch.tensor([22 / 80, 18 / 60, 36 / 80, 24 / 60]))
    mask = image_mask(torch.zeros(2, 3, 64, 96), [(64, 80), (50, 96)])
    assert mask.shape == (2, 64, 96) and mask[0, :, :80].all() and not mask[0, :, 80:].any()
    assert mask[1, :50].all() and not mask[1, 50:].any()


@pytest.mark.parametrize("variant", ["coat_lite_tiny", "coat_tiny"])
def test_training_returns_the_authors_weighted_losses_and_reaches_every_parameter(variant):
    detector = _detector(variant).train()
    images = [torch.rand(3, 60, 70), torch.rand(3, 64, 64)]
    losses = detector(images, _targets())
    assert losses.keys() == {"loss_ce", "loss_bbox", "loss_giou"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    unused = [name for name, p in detector.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused  # DDP needs no find_unused_parameters


def test_the_losses_are_transformers_own_reweighted():
    detector = _detector().train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]  # already at the test size: no resize
    torch.manual_seed(1)
    losses = detector(images, _targets())
    torch.manual_seed(1)
    batch, resized = detector.transform(images, _targets())
    outputs = detector.detr(
        pixel_values=batch.tensors,
        pixel_mask=image_mask(batch.tensors, batch.image_sizes),
        labels=detr_targets(resized, batch.image_sizes),
    )
    expected = authors_losses(outputs.loss_dict, detector.detr.config)
    assert all(torch.allclose(losses[k], expected[k]) for k in expected)


def test_detections_are_the_top_scores_in_the_input_images_pixels():
    detector = _detector().eval()
    images = [torch.rand(3, 40, 50), torch.rand(3, 70, 60)]
    with torch.no_grad():
        detections = detector(images)
        batch, _ = detector.transform(images)
        outputs = detector.detr(pixel_values=batch.tensors, pixel_mask=image_mask(batch.tensors, batch.image_sizes))
    for found, image, logits, boxes, (height, width) in zip(
        detections, images, outputs.logits, outputs.pred_boxes, batch.image_sizes
    ):
        scores = logits.sigmoid().flatten()  # [queries x classes]
        assert len(found["scores"]) == scores.numel()  # 10 queries x 3 classes < 100: all kept
        assert torch.allclose(found["scores"], scores.sort(descending=True).values)
        assert set(found["labels"].tolist()) <= {1, 2, 3}
        best = int(scores.argmax())
        query, label = divmod(best, logits.shape[1])
        scale = torch.tensor([image.shape[2] / width, image.shape[1] / height] * 2)  # resized -> input pixels
        expected = box_convert(boxes[query], "cxcywh", "xyxy") * torch.tensor([width, height] * 2) * scale
        assert int(found["labels"][0]) == label + 1 and torch.allclose(found["boxes"][0], expected, atol=1e-4)


def test_random_size_crop_moves_boxes_with_the_image_and_drops_the_emptied():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.rand(3, 100, 120))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[0.0, 0.0, 100.0, 100.0], [110.0, 90.0, 119.0, 99.0]]), format="XYXY", canvas_size=(100, 120)
    )
    crop = RandomSizeCrop(40, 60)
    for _ in range(10):
        params = crop.make_params([image, boxes])
        assert 40 <= params["height"] <= 60 and 40 <= params["width"] <= 60
        assert params["top"] + params["height"] <= 100 and params["left"] + params["width"] <= 120
    small = RandomSizeCrop(384, 600).make_params([image])  # never larger than the image
    assert small["height"] == 100 and small["width"] == 120
    transform = detection_transform(hflip=0.0, random_crop=1.0)
    for _ in range(5):
        out, target = transform(image, {"boxes": boxes, "labels": torch.tensor([1, 2])})
        assert len(target["labels"]) == len(target["boxes"]) >= 1  # the big box survives every crop
        height, width = out.shape[-2:]
        assert (target["boxes"][:, 2] <= width).all() and (target["boxes"][:, 3] <= height).all()


def test_recipes_follow_the_detector_family():
    detr = resolve({**DATA, "detector": "deformable-detr"})
    assert (detr.epochs, detr.lr, detr.lr_steps, detr.weight_decay, detr.clip_grad) == (50, 2e-4, (40,), 1e-4, 0.1)
    assert (detr.backbone_lr_scale, detr.sampling_lr_scale, detr.random_crop, detr.warmup_iters) == (0.1, 0.1, 0.5, 0)
    rcnn = resolve({**DATA})
    assert (rcnn.epochs, rcnn.lr, rcnn.lr_steps, rcnn.backbone_lr_scale, rcnn.random_crop) == (12, 1e-4, (8, 11), 1, 0)
    families = {d.family for d in DETECTORS.values()}
    assert set(RECIPES["shapes"]) == families <= set(RECIPES["coco"]) <= families | set(DETECTORS)
    with pytest.raises(UsageError, match="--frozen-stages do\\(es\\) not apply to --detector deformable-detr"):
        resolve({**DATA, "detector": "deformable-detr", "frozen_stages": 1})
    with pytest.raises(UsageError, match="--num-queries do\\(es\\) not apply to --detector maskrcnn"):
        resolve({**DATA, "num_queries": 100})
    with pytest.raises(UsageError, match="--transformer-layers at least 2"):
        resolve({**DATA, "detector": "deformable-detr", "transformer_layers": 1})


def test_backbone_and_sampling_parameters_get_their_lr_scales():
    config = resolve({**DATA, "detector": "deformable-detr"})
    detector = _detector()
    optimizer = build_optimizer(detector, config.lr, config.weight_decay, DetectionTask(config).lr_scales(detector))
    lr_of = {p: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    backbone = {id(p) for p in find_coat(detector)[1].parameters()}
    for name, param in detector.named_parameters():
        slow = id(param) in backbone or ".sampling_offsets." in name or ".reference_points." in name
        assert lr_of[param] == pytest.approx(2e-5 if slow else 2e-4), name
    assert optimizer.param_groups[0]["lr"] == 2e-4
