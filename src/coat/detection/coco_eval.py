"""Detections -> COCO results format -> pycocotools' COCOeval: box and mask AP, AP50, AP75, S/M/L.

Every process predicts its shard; rank 0 gathers the results, runs COCOeval and shares the
numbers, so the metrics are those of the whole evaluation set. APs are in percent (the paper's
scale); a size range without ground truth gives ``None`` (pycocotools' -1).
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.datasets import DataError
from ..train.distributed import DistInfo, gather_objects

# The first six of COCOeval.stats, in order.
AP_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
MASK_THRESHOLD = 0.5


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, category_ids: list[int]) -> list[dict[str, Any]]:
    """One image's detections (torchvision's output dict) as COCO result entries (bbox xywh, RLE masks)."""
    boxes = output["boxes"].detach().cpu().clone()  # [K, 4] xyxy
    boxes[:, 2:] -= boxes[:, :2]  # -> xywh
    results = [
        {
            "image_id": image_id,
            "category_id": category_ids[int(label) - 1],
            "bbox": [round(float(v), 2) for v in box],
            "score": round(float(score), 5),
        }
        for box, label, score in zip(boxes, output["labels"].tolist(), output["scores"].tolist())
    ]
    if "masks" in output:
        binary = (output["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)  # [K, H, W]
        for result, mask in zip(results, binary):
            rle = coco_mask.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")  # JSON-ready
            result["segmentation"] = rle
    return results


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    category_ids: list[int],
    info: DistInfo = DistInfo(),
    progress: str | None = None,
) -> tuple[list[dict], list[int], int]:
    """This process's detections in COCO results format, the image ids it saw, and how many it skipped."""
    model.eval()
    results, image_ids, skipped = [], [], 0
    for images, targets, n_skipped in tqdm(
        loader, desc=progress, leave=False, disable=progress is None or not info.is_main
    ):
        skipped += n_skipped
        if not images:
            continue
        outputs = model([image.to(device) for image in images])
        for output, target in zip(outputs, targets):
            results += to_coco_results(output, target["image_id"], category_ids)
            image_ids.append(target["image_id"])
    return results, image_ids, skipped


def coco_metrics(ground_truth: COCO, results: list[dict], image_ids: list[int], with_masks: bool) -> dict[str, Any]:
    """``box_ap`` ... ``box_ap_large`` (and ``mask_*``) in percent over ``image_ids``."""
    metrics: dict[str, Any] = {}
    for iou_type, prefix in [("bbox", "box"), ("segm", "mask")][: 2 if with_masks else 1]:
        if not results:  # pycocotools cannot load an empty result list: nothing detected is AP 0
            metrics.update({f"{prefix}_{name}": 0.0 for name in AP_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            # loadRes writes into the entries it gets (area, id, a box polygon as segmentation): give it copies
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(copy.deepcopy(results)), iou_type)
            evaluator.params.imgIds = sorted(set(image_ids))
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics.update(
            {
                f"{prefix}_{name}": (100.0 * float(v) if v >= 0 else None)
                for name, v in zip(AP_NAMES, evaluator.stats[:6])
            }
        )
    return metrics


def evaluate_detector(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    ground_truth: COCO,
    category_ids: list[int],
    with_masks: bool,
    info: DistInfo = DistInfo(),
    progress: str | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """COCO metrics over the whole (sharded) ``loader`` and all detections; the same on every process."""
    results, image_ids, skipped = predict_dataset(model, loader, device, category_ids, info, progress)
    shards = gather_objects((results, image_ids, skipped), info)
    all_results = [r for shard in shards for r in shard[0]]
    all_ids = [i for shard in shards for i in shard[1]]
    shared: list[Any] = [None]
    if info.is_main:
        if not all_ids:
            raise DataError("the evaluation set yielded no readable images")
        shared[0] = {
            **coco_metrics(ground_truth, all_results, all_ids, with_masks),
            "images": len(all_ids),
            "skipped": sum(shard[2] for shard in shards),
        }
    if info.enabled:
        dist.broadcast_object_list(shared, src=0)
    return shared[0], all_results
