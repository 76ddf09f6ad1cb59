"""The authors' mmdetection 2.x detectors into our torchvision models, tested on state dicts written to mmdetection's
module layout (the names and shapes of its FPN, RPNHead, Shared2FCBBoxHead / ConvFCBBoxHead with SyncBN and
FCNMaskHead as the authors' configs build them), with random values so that every placement can be checked."""

import math

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from coat.checkpoint import CheckpointError
from coat.cli import main
from coat.detection.anchors import mmdet_anchor_generator
from coat.detection.mmdet_convert import COCO_IDS, COCO_NAMES, convert_mmdet_detector
from coat.detection.weights import load_detector
from fixture_weights import authors_state_dict

CLASSES = 80
CLASSIFIER_ONLY = ("norm", "head.", "aggregate.")  # the classifier's keys, absent from a detection backbone


def random(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) * 0.02


def conv(prefix: str, out_channels: int, in_channels: int, kernel: int) -> dict:
    return {
        f"{prefix}.weight": random(out_channels, in_channels, kernel, kernel),
        f"{prefix}.bias": random(out_channels),
    }


def conv_module(prefix: str, out_channels: int, in_channels: int, kernel: int, norm: bool = False) -> dict:
    """mmcv's ConvModule: ``.conv`` (no bias before a norm) and its BatchNorm / SyncBN as ``.bn``."""
    if not norm:
        return conv(f"{prefix}.conv", out_channels, in_channels, kernel)
    return {
        f"{prefix}.conv.weight": random(out_channels, in_channels, kernel, kernel),
        f"{prefix}.bn.weight": 1 + random(out_channels),
        f"{prefix}.bn.bias": random(out_channels),
        f"{prefix}.bn.running_mean": random(out_channels),
        f"{prefix}.bn.running_var": 1 + random(out_channels).abs(),
        f"{prefix}.bn.num_batches_tracked": torch.tensor(1000),
    }


def linear(prefix: str, out_features: int, in_features: int) -> dict:
    return {f"{prefix}.weight": random(out_features, in_features), f"{prefix}.bias": random(out_features)}


def mask_head(prefix: str) -> dict:
    """FCNMaskHead: 4 convs, a 2x2 transposed conv (weight [in, out, 2, 2]) and class-specific 1x1 logits."""
    state = {}
    for i in range(4):
        state |= conv_module(f"{prefix}.convs.{i}", 256, 256, 3)
    state |= {f"{prefix}.upsample.weight": random(256, 256, 2, 2), f"{prefix}.upsample.bias": random(256)}
    state |= {f"{prefix}.conv_logits.weight": random(CLASSES, 256, 1, 1), f"{prefix}.conv_logits.bias": random(CLASSES)}
    return state


def mmdet_state(variant: str, cascade: bool) -> dict[str, torch.Tensor]:
    """An authors'-layout detector: CoaT backbone (the fixtures' authors' keys without the classifier), FPN (5 outputs,
    max-pooled extra level: no weights), RPN with 3 anchors per location, and the RoI heads."""
    backbone = {k: v for k, v in authors_state_dict(variant).items() if not k.startswith(CLASSIFIER_ONLY)}
    state = {f"backbone.{k}": v for k, v in backbone.items()}
    channels = [backbone[f"patch_embed{i}.proj.weight"].shape[0] for i in range(1, 5)]
    for i, c in enumerate(channels):
        state |= conv_module(f"neck.lateral_convs.{i}", 256, c, 1) | conv_module(f"neck.fpn_convs.{i}", 256, 256, 3)
    # RPNHead: plain convolutions (3 anchors per location: one objectness logit and 4 deltas each)
    state |= conv("rpn_head.rpn_conv", 256, 256, 3) | conv("rpn_head.rpn_cls", 3, 256, 1)
    state |= conv("rpn_head.rpn_reg", 12, 256, 1)
    if cascade:
        for stage in range(3):
            for i in range(4):
                state |= conv_module(f"roi_head.bbox_head.{stage}.shared_convs.{i}", 256, 256, 3, norm=True)
            state |= linear(f"roi_head.bbox_head.{stage}.shared_fcs.0", 1024, 256 * 7 * 7)
            state |= linear(f"roi_head.bbox_head.{stage}.fc_cls", CLASSES + 1, 1024)
            state |= linear(f"roi_head.bbox_head.{stage}.fc_reg", 4 * CLASSES, 1024)  # reg_class_agnostic=False
            state |= mask_head(f"roi_head.mask_head.{stage}")
    else:
        state |= linear("roi_head.bbox_head.shared_fcs.0", 1024, 256 * 7 * 7)
        state |= linear("roi_head.bbox_head.shared_fcs.1", 1024, 1024)
        state |= linear("roi_head.bbox_head.fc_cls", CLASSES + 1, 1024) | linear("roi_head.bbox_head.fc_reg", 320, 1024)
        state |= mask_head("roi_head.mask_head")
    return state


def save_mmdet(state: dict, path) -> None:
    """As mmdetection's checkpoint hook saves: meta (plain values) and state_dict."""
    torch.save(
        {"meta": {"CLASSES": tuple(COCO_NAMES), "epoch": 12, "mmdet_version": "2.11.0"}, "state_dict": state}, path
    )


@pytest.mark.parametrize(("variant", "cascade"), [("coat_lite_tiny", True), ("coat_tiny", False)])
def test_every_key_placed_with_torchvisions_class_order(variant, cascade, tmp_path):
    state = mmdet_state(variant, cascade)
    save_mmdet(state, tmp_path / "authors.pth")
    model, spec = convert_mmdet_detector(tmp_path / "authors.pth")  # strict: every key used, every tensor set
    assert spec.detector == ("cascade-mask" if cascade else "maskrcnn") and spec.variant == variant
    assert spec.class_names[:3] == ["person", "bicycle", "car"] and spec.category_ids[-1] == 90
    assert spec.options == {"aligned_roi_pool": True, "mmdet_anchors": True}
    ours = model.state_dict()
    heads = [f"roi_heads.stages.{s}" for s in range(3)] if cascade else ["roi_heads"]
    sources = [f"roi_head.bbox_head.{s}" for s in range(3)] if cascade else ["roi_head.bbox_head"]
    masks = [f"roi_head.mask_head.{s}" for s in range(3)] if cascade else ["roi_head.mask_head"]
    for head, source, mask in zip(heads, sources, masks, strict=True):
        cls_score, fc_cls = ours[f"{head}.box_predictor.cls_score.weight"], state[f"{source}.fc_cls.weight"]
        assert torch.equal(cls_score[0], fc_cls[80]) and torch.equal(cls_score[1:], fc_cls[:80])  # background first
        bbox_pred, fc_reg = ours[f"{head}.box_predictor.bbox_pred.weight"], state[f"{source}.fc_reg.weight"]
        assert bbox_pred.shape == (4 * 81, 1024) and not bbox_pred[:4].any() and torch.equal(bbox_pred[4:], fc_reg)
        logits = ours[f"{head}.mask_predictor.mask_fcn_logits.weight"]
        assert not logits[0].any() and torch.equal(logits[1:], state[f"{mask}.conv_logits.weight"])
    if cascade:
        assert torch.equal(ours["roi_heads.stages.2.box_head.3.1.running_var"],
                           state["roi_head.bbox_head.2.shared_convs.3.bn.running_var"])  # fmt: skip
        assert torch.equal(
            ours["roi_heads.stages.1.box_head.5.weight"], state["roi_head.bbox_head.1.shared_fcs.0.weight"]
        )
    assert torch.equal(ours["backbone.fpn.inner_blocks.3.0.weight"], state["neck.lateral_convs.3.conv.weight"])
    assert torch.equal(ours["rpn.head.bbox_pred.weight"], state["rpn_head.rpn_reg.weight"])
    # the backbone computes the authors' features: its weights are the fixtures' authors' tensors, mapped
    assert torch.equal(
        ours["backbone.body.body.stages.0.patch_embed.proj.weight"], state["backbone.patch_embed1.proj.weight"]
    )
    with torch.no_grad():
        detections = model([torch.rand(3, 64, 80)])
    assert {"boxes", "labels", "scores", "masks"} <= set(detections[0])


def test_convert_command_writes_a_detector_checkpoint_and_eval_reads_the_pth(tmp_path, capsys):
    state = mmdet_state("coat_lite_tiny", cascade=True)
    save_mmdet(state, tmp_path / "authors.pth")
    assert main(["convert", str(tmp_path / "authors.pth"), str(tmp_path / "ours.safetensors")]) == 0
    assert "mmdetection cascade-mask on coat_lite_tiny, 80 COCO classes" in capsys.readouterr().out
    saved, spec = load_detector(tmp_path / "ours.safetensors")
    direct, _ = load_detector(tmp_path / "authors.pth")  # what `coat detect eval --checkpoint authors.pth` loads
    assert spec.category_ids == COCO_IDS and spec.min_sizes == (800,) and spec.max_size == 1333
    assert all(
        torch.equal(a, b) for a, b in zip(saved.state_dict().values(), direct.state_dict().values(), strict=True)
    )
    assert main(["predict", str(tmp_path), "--checkpoint", str(tmp_path / "authors.pth")]) == 2
    assert "is a detector checkpoint" in capsys.readouterr().err


def test_unknown_keys_and_foreign_classes_are_refused_in_one_line(tmp_path):
    state = mmdet_state("coat_lite_tiny", cascade=False)
    save_mmdet({**state, "roi_head.semantic_head.conv.weight": random(2, 2)}, tmp_path / "htc.pth")
    with pytest.raises(CheckpointError, match=r"keys with no place .*roi_head\.semantic_head\.conv\.weight"):
        convert_mmdet_detector(tmp_path / "htc.pth")
    lvis = {**state, "roi_head.bbox_head.fc_cls.weight": random(1204, 1024)}
    save_mmdet(lvis, tmp_path / "lvis.pth")
    with pytest.raises(CheckpointError, match="detects 1203 classes; only COCO's 80"):
        convert_mmdet_detector(tmp_path / "lvis.pth")


def test_anchors_are_mmdetections_unrounded_at_true_strides():
    generator = mmdet_anchor_generator()
    images = ImageList(torch.zeros(1, 3, 800, 800), [(800, 800)])
    maps = [torch.zeros(1, 1, math.ceil(800 / s), math.ceil(800 / s)) for s in (4, 8, 16, 32, 64)]
    (anchors,) = generator(images, maps)
    half_w, half_h = 32 / math.sqrt(0.5) / 2, 32 * math.sqrt(0.5) / 2  # size 32, ratio (height / width) 0.5
    assert torch.allclose(anchors[0], torch.tensor([-half_w, -half_h, half_w, half_h]))  # torchvision rounds these
    first_coarse = sum(3 * m.shape[-1] * m.shape[-2] for m in maps[:4])
    # the stride-64 level (13 x 13 cells for 800 px) steps by 64, where torchvision would step by 800 // 13 = 61
    assert anchors[first_coarse + 3, 0] - anchors[first_coarse, 0] == pytest.approx(64)
