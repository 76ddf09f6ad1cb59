"""Cascade (Mask) R-CNN: the stages' sampling, losses, refinement and score averaging against hand-worked cases, and
training / inference of the whole detector on tiny generated images."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import MultiScaleRoIAlign

from coat.detection import cascade_maskrcnn_coat, cascade_rcnn_coat
from coat.detection.cascade import (
    AUTHORS_STAGES,
    CascadeRoIHeads,
    CascadeStage,
    SampledRoIs,
    StageSettings,
    sample_rois,
)
from coat.detection.config import resolve
from coat.detection.poolers import AlignedMultiScaleRoIAlign
from test_detection import shapes_sample

CHANNELS = 8  # feature channels of the hand-worked cases (the heads' own widths are the authors')
IMAGE = (100, 100)


def constant_stage(settings: StageSettings, logits: list[float], deltas: list[list[float]]) -> CascadeStage:
    """A 3-class stage (background, 1, 2) whose outputs are ``logits`` and per-class ``deltas`` for every RoI."""
    stage = CascadeStage(settings, num_classes=3, channels=CHANNELS, box_pool_size=7, with_masks=False)
    with torch.no_grad():
        for layer in (stage.box_predictor.cls_score, stage.box_predictor.bbox_pred):
            layer.weight.zero_()
        stage.box_predictor.cls_score.bias.copy_(torch.tensor(logits))
        stage.box_predictor.bbox_pred.bias.copy_(torch.tensor(deltas).flatten())
    return stage.eval()


def features() -> dict[str, torch.Tensor]:
    return {str(i): torch.randn(1, CHANNELS, IMAGE[0] // s, IMAGE[1] // s) for i, s in enumerate((4, 8, 16, 32))}


def test_the_authors_stages():
    assert [s.iou_threshold for s in AUTHORS_STAGES] == [0.5, 0.6, 0.7]
    assert [s.loss_weight for s in AUTHORS_STAGES] == [1.0, 0.5, 0.25]
    # box coder weights are the inverses of mmdetection's target stds
    assert AUTHORS_STAGES[2].coder_weights == pytest.approx((30.303, 30.303, 14.925, 14.925), abs=1e-3)


def test_inference_averages_stage_logits_and_refines_by_the_best_class():
    ln2 = math.log(2)
    w2 = AUTHORS_STAGES[2].coder_weights[2]
    stages = [
        # stage 0: best foreground class 2, whose deltas move the box right by 4 px (dx 1 / 10 of the width 40);
        # class 1's deltas would move it left by 20
        constant_stage(AUTHORS_STAGES[0], [0.0, 1.0, 3.0], [[0, 0, 0, 0], [-5, 0, 0, 0], [1, 0, 0, 0]]),
        # stage 1: best class 1, down by 2 px (dy 2 / 20 of the height 20)
        constant_stage(AUTHORS_STAGES[1], [0.0, 3.0, 0.0], [[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]]),
        # stage 2: class 1 doubles the width (dw ln 2 x the coder's weight), class 2 leaves the box
        constant_stage(AUTHORS_STAGES[2], [0.0, 2.0, 0.0], [[0, 0, 0, 0], [0, 0, ln2 * w2, 0], [0, 0, 0, 0]]),
    ]
    heads = CascadeRoIHeads(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), stages).eval()
    proposal = torch.tensor([[10.0, 10.0, 50.0, 30.0]])
    with torch.no_grad():
        (detections,), losses = heads(features(), [proposal], [IMAGE])
    assert losses == {}
    # mean logits (0, 2, 1): both foreground classes score above 0.05
    total = 1 + math.e**2 + math.e
    assert detections["labels"].tolist() == [1, 2]
    assert detections["scores"].tolist() == pytest.approx([math.e**2 / total, math.e / total], abs=1e-6)
    # stages 0 and 1 give [14, 12, 54, 32]; class 1 of the last stage widens it to 80 px about x = 34, clipped at 0
    expected = torch.tensor([[0.0, 12.0, 74.0, 32.0], [14.0, 12.0, 54.0, 32.0]])
    assert torch.allclose(detections["boxes"], expected, atol=1e-4)
    heads.score_thresh = 0.3  # torchvision's attribute name: class 2 (0.245) drops out
    with torch.no_grad():
        (detections,), _ = heads(features(), [proposal], [IMAGE])
    assert detections["labels"].tolist() == [1]


def test_training_refinement_uses_ground_truth_classes_and_drops_added_ground_truth():
    stage = constant_stage(AUTHORS_STAGES[0], [0.0, 0.0, 5.0], [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    rois = SampledRoIs(
        boxes=[torch.tensor([[10.0, 10.0, 50.0, 30.0], [60.0, 60.0, 80.0, 80.0], [10.0, 10.0, 50.0, 30.0]])],
        labels=[torch.tensor([1, 0, 1])],
        matched=[torch.tensor([0, 0, 0])],
        target_boxes=[torch.tensor([[10.0, 10.0, 50.0, 30.0]] * 3)],
        from_ground_truth=[torch.tensor([False, False, True])],
    )
    logits = torch.tensor([[0.0, 0.0, 5.0]] * 3)
    deltas = torch.tensor([[0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]] * 3, dtype=torch.float32)
    (refined,) = stage.refine(logits, deltas, rois, [IMAGE])
    # the positive moves by its ground-truth class 1 (right 4 px), the background by the best class 2 (down 2 px)
    assert torch.allclose(refined, torch.tensor([[14.0, 10.0, 54.0, 30.0], [60.0, 62.0, 80.0, 82.0]]))
    assert not refined.requires_grad


def test_losses_are_cross_entropy_and_ten_times_giou_over_all_sampled_rois():
    stage = constant_stage(AUTHORS_STAGES[0], [0.0, 0.0, 0.0], [[0, 0, 0, 0]] * 3)
    rois = SampledRoIs(
        boxes=[torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])],
        labels=[torch.tensor([2, 0])],
        matched=[torch.tensor([0, 0])],
        target_boxes=[torch.tensor([[5.0, 0.0, 15.0, 10.0], [5.0, 0.0, 15.0, 10.0]])],
        from_ground_truth=[torch.tensor([False, False])],
    )
    losses = stage.losses(torch.zeros(2, 3), torch.zeros(2, 12), rois)
    assert losses["loss_classifier"].item() == pytest.approx(math.log(3))
    # IoU 50 / 150 and the union fills the enclosing box: GIoU 1/3, loss 2/3 for the one positive, over 2 RoIs
    assert losses["loss_box_giou"].item() == pytest.approx(10 * (2 / 3) / 2, abs=1e-5)


def test_sampling_adds_ground_truth_and_labels_by_the_stage_threshold():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 18.0], [50.0, 50.0, 60.0, 60.0]])]  # IoU 100/180 = 0.56 and 0
    targets = [{"boxes": gt, "labels": torch.tensor([2])}]
    sampler = BalancedPositiveNegativeSampler(512, 0.25)
    for threshold, labels in ((0.5, [2, 0, 2]), (0.6, [0, 0, 2])):
        rois = sample_rois(proposals, targets, Matcher(threshold, threshold, False), sampler)
        assert rois.labels[0].tolist() == labels  # everything kept: fewer RoIs than the sample size
        assert rois.from_ground_truth[0].tolist() == [False, False, True]
        assert torch.equal(rois.boxes[0][2], gt[0]) and torch.equal(rois.target_boxes[0][0], gt[0])
    empty = sample_rois(proposals, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
                        Matcher(0.5, 0.5, False), sampler)  # fmt: skip
    assert empty.labels[0].tolist() == [0, 0]


# few RoIs and detections: the cascade's heads (4 convs per box head, 3 mask heads per detection) dominate on a CPU
SMALL = {
    "min_size": 96,
    "max_size": 160,
    "box_batch_size_per_image": 16,
    "rpn_post_nms_top_n_test": 50,
    "box_detections_per_img": 10,
}


@pytest.mark.parametrize("variant", ["coat_lite_tiny", "coat_tiny"])
def test_cascade_mask_rcnn_trains_every_stage_and_detects(variant):
    torch.manual_seed(0)
    model = cascade_maskrcnn_coat(variant, num_classes=3, **SMALL)
    assert isinstance(model.roi_heads.box_roi_pool, AlignedMultiScaleRoIAlign)  # as mmdetection pools
    assert len(model.roi_heads.stages) == 3 and model.roi_heads.stages[0].box_head[0][1].__class__.__name__ == (
        "BatchNorm2d"
    )
    images, targets = zip(*[shapes_sample(120, 150, 0), shapes_sample(160, 128, 1)])
    losses = model.train()(list(images), list(targets))
    per_stage = {f"{name}_{i}" for i in range(3) for name in ("loss_classifier", "loss_box_giou", "loss_mask")}
    assert set(losses) == per_stage | {"loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    for stage in model.roi_heads.stages:
        assert stage.box_head[0][0].weight.grad.abs().sum() > 0 and stage.mask_head[0][0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        detections = model([images[0], torch.rand(3, 97, 211)])
    assert [set(d) for d in detections] == [{"boxes", "labels", "scores", "masks"}] * 2
    assert detections[1]["masks"].shape[1:] == (1, 97, 211) and len(detections[0]["boxes"]) <= 10
    assert all(((d["labels"] >= 1) & (d["labels"] <= 2)).all() and (d["scores"] > 0.05).all() for d in detections)


def test_cascade_rcnn_is_boxes_only_and_refuses_single_stage_options():
    model = cascade_rcnn_coat("coat_lite_tiny", num_classes=3, **SMALL)
    image, target = shapes_sample(96, 96)
    losses = model([image], [{k: v for k, v in target.items() if k != "masks"}])
    assert not any(name.startswith("loss_mask") for name in losses) and "loss_box_giou_2" in losses
    model.eval()
    with torch.no_grad():
        assert set(model([image])[0]) == {"boxes", "labels", "scores"}
    with pytest.raises(TypeError, match="the cascade sets these per stage"):
        cascade_rcnn_coat("coat_lite_tiny", num_classes=3, box_fg_iou_thresh=0.6)


def test_recipes_give_the_cascades_the_authors_augmentation_and_3x_schedule():
    data = dict.fromkeys(("train_images", "train_annotations", "val_images", "val_annotations"), "x")
    cascade = resolve({**data, "detector": "cascade-mask"})
    assert (cascade.epochs, cascade.lr_steps, cascade.lr, cascade.random_crop) == (12, (8, 11), 1e-4, 0.5)
    assert resolve({**data, "detector": "maskrcnn"}).random_crop == 0  # the authors' Mask R-CNN: no crop
    long = resolve({**data, "detector": "cascade", "recipe": "coco-3x"})
    assert (long.epochs, long.lr_steps, long.random_crop) == (36, (27, 33), 0.5)
    assert resolve({**data, "detector": "cascade", "random_crop": 0.0}).random_crop == 0  # flags win
    assert resolve({**data, "recipe": "coco-3x"}).epochs == 36


def test_box_outputs_stay_float32_under_autocast():
    """Decoding bf16 deltas would round box coordinates of a few hundred pixels to 2 px."""
    stage = constant_stage(AUTHORS_STAGES[0], [0.0, 1.0, 2.0], [[0, 0, 0, 0], [0.3, 0, 0, 0], [0, 0, 0, 0]])
    with torch.autocast("cpu", torch.bfloat16):
        logits, deltas = stage(torch.randn(2, CHANNELS, 7, 7))
        moved = stage.boxes_of_class(deltas, torch.tensor([[301.0, 5.0, 341.0, 45.0]] * 2), torch.tensor([1, 1]))
    assert logits.dtype == deltas.dtype == torch.float32
    # 0.3 / 10 of the width 40 (the bias itself is bf16 inside the layer: 0.30078); bf16 boxes would be 302 or 304
    assert torch.allclose(moved[0], torch.tensor([302.2, 5.0, 342.2, 45.0]), atol=0.01)
