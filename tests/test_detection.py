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
