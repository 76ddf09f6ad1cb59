"""CoaT as a torchvision detection backbone: Mask R-CNN / Faster R-CNN on tiny generated images."""

import pytest
import torch

import coat
from coat.detection import coat_fpn_backbone, fasterrcnn_coat, maskrcnn_coat

SMALL = {"min_size": 128, "max_size": 192}  # keep the tests quick on 2 CPU cores


def shapes_sample(h, w, seed=0):
    """An image with two coloured rectangles, their boxes, labels and masks."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g) * 0.2
    boxes, masks = [], []
    for i, (y, x) in enumerate([(h // 8, w // 8), (h // 2, w // 2)]):
        box = [x, y, x + w // 4, y + h // 4]
        image[i, box[1] : box[3], box[0] : box[2]] = 1.0
        mask = torch.zeros(h, w, dtype=torch.uint8)
        mask[box[1] : box[3], box[0] : box[2]] = 1
        boxes.append(box)
        masks.append(mask)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor([1, 2]),
        "masks": torch.stack(masks),
    }
    return image, target


def test_backbone_feature_maps_and_fpn(authors_checkpoint):
    backbone = coat_fpn_backbone("coat_lite_tiny", weights=authors_checkpoint("coat_lite_tiny"))
    reference = coat.create_model("coat_lite_tiny", pretrained=authors_checkpoint("coat_lite_tiny")).eval()
    backbone.eval()
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        body = backbone.body(x)
        for mine, theirs in zip(body.values(), reference.forward_intermediates(x, intermediates_only=True)):
            assert torch.equal(mine, theirs)  # weights loaded, head dropped, features unchanged
        out = backbone(x)
    assert list(out) == ["0", "1", "2", "3", "pool"] and backbone.out_channels == 256
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    assert not any(n.startswith(("body.head", "body.aggregate")) for n, _ in backbone.named_parameters())


def test_frozen_stages_and_norms():
    backbone = coat_fpn_backbone("coat_tiny", frozen_stages=1, frozen_norms=True)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert not any(n.startswith("body.body.stages.0.") for n in trainable)
    assert any(n.startswith("body.body.stages.1.") for n in trainable)
    assert not any("norm" in n and "body.body" in n for n in trainable)


@pytest.mark.parametrize("variant", ["coat_lite_tiny", "coat_tiny"])
def test_maskrcnn_train_losses_and_eval_detections(variant):
    model = maskrcnn_coat(variant, num_classes=3, **SMALL)
    images, targets = zip(*[shapes_sample(120, 150, 0), shapes_sample(160, 128, 1)])  # two sizes
    model.train()
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for n, p in model.backbone.named_parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        detections = model([images[0], torch.rand(3, 97, 211)])
    assert len(detections) == 2 and {"boxes", "labels", "scores", "masks"} <= set(detections[0])


def test_fasterrcnn_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = fasterrcnn_coat("coat_lite_tiny", num_classes=3, min_size=128, max_size=160)
    image, target = shapes_sample(128, 128)
    target = {k: v for k, v in target.items() if k != "masks"}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    model.train()
    losses = []
    for _ in range(6):
        loss = sum(model([image], [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_aligned_pooler_pools_each_box_from_mmdetections_level_with_aligned_roi_align():
    from torchvision.ops import roi_align
    from torchvision.ops.poolers import LevelMapper

    from coat.detection.poolers import AlignedMultiScaleRoIAlign

    torch.manual_seed(0)
    strides = (4, 8, 16, 32)
    features = {str(i): torch.randn(2, 3, 640 // s, 640 // s) for i, s in enumerate(strides)}
    # sides 40, 150, 300, 600 and 2000: levels 0, 1, 2, 3 and 3 (clamped)
    first = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 150.0, 150.0], [5.5, 7.25, 305.5, 307.25]])
    second = torch.tensor([[20.0, 20.0, 620.0, 620.0], [0.0, 0.0, 1000.0, 4000.0]])
    pooler = AlignedMultiScaleRoIAlign(list(features), 7)
    pooled = pooler(features, [first, second], [(640, 640), (600, 640)])
    assert pooled.shape == (5, 3, 7, 7)
    boxes, images = torch.cat([first, second]), [0, 0, 0, 1, 1]
    assert pooler.levels(boxes).tolist() == [0, 1, 2, 3, 3]
    assert torch.equal(pooler.levels(boxes), LevelMapper(2, 5)([boxes]))  # torchvision's FPN rule agrees
    for k, (level, image) in enumerate(zip([0, 1, 2, 3, 3], images, strict=True)):
        roi = torch.cat([torch.tensor([[float(image)]]), boxes[k : k + 1]], dim=1)
        expected = roi_align(features[str(level)], roi, 7, 1 / strides[level], sampling_ratio=0, aligned=True)
        assert torch.allclose(pooled[k : k + 1], expected, atol=1e-6)
        unaligned = roi_align(features[str(level)], roi, 7, 1 / strides[level], sampling_ratio=0, aligned=False)
        assert not torch.allclose(pooled[k : k + 1], unaligned, atol=1e-3)  # the half-pixel shift matters


def test_rcnn_with_aligned_pooling_trains():
    from coat.detection.poolers import AlignedMultiScaleRoIAlign

    model = maskrcnn_coat("coat_lite_tiny", num_classes=3, aligned_roi_pool=True, min_size=96, max_size=96)
    assert isinstance(model.roi_heads.box_roi_pool, AlignedMultiScaleRoIAlign)
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)
    masks = torch.zeros(1, 96, 96, dtype=torch.uint8)
    masks[0, 20:60, 30:70] = 1
    target = {"boxes": torch.tensor([[30.0, 20.0, 70.0, 60.0]]), "labels": torch.tensor([1]), "masks": masks}
    losses = model([torch.rand(3, 96, 96)], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.body.stages[0].patch_embed.proj.weight.grad.abs().sum() > 0
