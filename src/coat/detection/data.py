"""COCO-format detection data: an images folder plus an instances JSON, checked before training.

``read_coco`` validates the file once (one-line errors naming the problem and the fix) and keeps
what training needs; ``CocoDetectionSet`` yields ``(image [3, H, W] in 0..1, target)`` with
torchvision's detection target keys (``boxes`` xyxy, ``labels`` 1..C, ``masks`` [K, H, W],
``image_id``). Category ids need not be contiguous: labels are their rank, and ``category_ids``
maps back for COCO results.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data.datasets import CorruptImageError, DataError, load_rgb

logger = logging.getLogger(__name__)

MIN_BOX_SIDE = 1.0  # pixels; thinner boxes are degenerate and dropped (counted)


@dataclass
class CocoIndex:
    """A checked instances file: the images that have files, their usable annotations, the categories."""

    annotation_file: Path
    images_dir: Path
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]  # image id -> its non-crowd annotations with usable boxes
    category_ids: list[int]  # label i + 1 <-> category_ids[i]
    class_names: list[str]
    has_masks: bool
    dropped_boxes: int = 0
    missing_images: list[str] = field(default_factory=list)
    coco: COCO | None = None  # pycocotools' index of the whole file, the ground truth of evaluation
    empty_categories: list[str] = field(default_factory=list)  # kept categories that no annotation uses

    def label_of(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(
            f"annotation file {path} does not exist; pass the instances JSON of the images "
            "(e.g. annotations/instances_train.json)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"annotation file {path} is not valid JSON ({err}); re-export it in COCO format") from None
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {path} is not a COCO instances file (expected an object with images, "
            "annotations and categories)"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file {path} has no '{key}' list; it is not a COCO instances file")
    return data


def read_coco(annotation_file: str | Path, images_dir: str | Path, skip_missing: bool = False) -> CocoIndex:
    """Check ``annotation_file`` against ``images_dir``; raise ``DataError`` on anything unusable."""
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    data = _load_json(annotation_file)
    if not images_dir.is_dir():
        raise DataError(
            f"image folder {images_dir} does not exist; pass the folder the file names in "
            f"{annotation_file.name} are relative to"
        )
    if not data["categories"]:
        raise DataError(f"annotation file {annotation_file} has no categories; a detector needs at least one")
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        category_ids = [int(c["id"]) for c in categories]
        names = [str(c["name"]) for c in categories]
        image_ids = {int(image["id"]) for image in data["images"]}
        for image in data["images"]:
            image["file_name"], image["height"], image["width"]
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"annotation file {annotation_file}: a category or image entry lacks {err}; every category "
            "needs id and name, every image id, file_name, width and height"
        ) from None
    if len(set(category_ids)) != len(category_ids):
        raise DataError(f"annotation file {annotation_file} repeats category ids; make them unique")

    per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
    dropped, has_masks = 0, bool(data["annotations"])
    known_categories = set(category_ids)
    for ann in data["annotations"]:
        try:
            image_id, category_id, (_, _, w, h) = int(ann["image_id"]), int(ann["category_id"]), ann["bbox"]
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"annotation file {annotation_file}: annotation {ann.get('id', '?')} needs image_id, "
                "category_id and a bbox [x, y, width, height]"
            ) from None
        if image_id not in image_ids:
            raise DataError(
                f"annotation file {annotation_file}: annotation {ann.get('id', '?')} refers to image id "
                f"{image_id}, which is not in its images list"
            )
        if category_id not in known_categories:
            raise DataError(
                f"annotation file {annotation_file}: annotation {ann.get('id', '?')} has category_id "
                f"{category_id}, which is not in its categories list"
            )
        has_masks = has_masks and bool(ann.get("segmentation"))
        if ann.get("iscrowd", 0):
            continue  # crowd regions are ignored in training and handled by COCOeval in evaluation
        if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
            dropped += 1
            continue
        per_image[image_id].append(ann)

    category_ids, names, empty = _drop_unused_background(annotation_file, category_ids, names, data["annotations"])
    present, missing = [], []
    for image in data["images"]:
        (present if (images_dir / image["file_name"]).is_file() else missing).append(image)
    if missing and not skip_missing:
        raise DataError(
            f"{len(missing)} of the {len(data['images'])} images in {annotation_file} have no file in "
            f"{images_dir} (first: {missing[0]['file_name']}); fix the paths or pass --skip-corrupt to "
            "skip them"
        )
    if not present:
        raise DataError(f"none of the images in {annotation_file} is in {images_dir}; pass the right image folder")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return CocoIndex(
        annotation_file,
        images_dir,
        present,
        per_image,
        category_ids,
        names,
        has_masks,
        dropped,
        [m["file_name"] for m in missing],
        coco,
        empty,
    )


def _is_background(category_id: int, name: str) -> bool:
    return category_id == 0 or name.strip("_ ").lower() == "background"


def _drop_unused_background(
    annotation_file: Path, category_ids: list[int], names: list[str], annotations: list[dict[str, Any]]
) -> tuple[list[int], list[str], list[str]]:
    """Drop categories named like background (or with id 0) that no annotation uses: exporters such as
    labelme2coco write one, and it must not become a class of the detector. Returns the kept ids and names,
    and the names of the other categories that no annotation uses (kept: a validation split may lack some)."""
    used = {int(ann["category_id"]) for ann in annotations}
    background = [(i, n) for i, n in zip(category_ids, names) if i not in used and _is_background(i, n)]
    if background:
        logger.info(
            "%s: dropped the unused background categor%s %s",
            annotation_file.name,
            "y" if len(background) == 1 else "ies",
            ", ".join(f"{n!r} (id {i})" for i, n in background),
        )
    kept = [(i, n) for i, n in zip(category_ids, names) if (i, n) not in background]
    if not kept:
        raise DataError(
            f"annotation file {annotation_file} has no categories besides background; a detector needs at least one"
        )
    empty = [n for i, n in kept if i not in used]
    return [i for i, _ in kept], [n for _, n in kept], empty


def annotation_mask(segmentation: list | dict, height: int, width: int) -> torch.Tensor:
    """A polygon list or RLE (compressed or not) -> a [H, W] uint8 mask."""
    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return torch.from_numpy(coco_mask.decode(rle))


DETR_CROP_SHORT_SIDES = [400, 500, 600]  # DETR's resize before its random crop
DETR_CROP_SIDES = (384, 600)  # the crop's height and width are drawn from this range


class RandomSizeCrop(v2.Transform):
    """A crop whose height and width are each drawn from ``[min_side, max_side]`` (at most the image's), at a
    random place; boxes and masks are cropped with the image (``SanitizeBoundingBoxes`` then drops the emptied)."""

    def __init__(self, min_side: int, max_side: int) -> None:
        super().__init__()
        self.min_side, self.max_side = min_side, max_side

    def _draw(self, length: int) -> tuple[int, int]:
        """(start, size) of a random window along a side of ``length`` pixels."""
        size = int(torch.randint(min(self.min_side, length), min(self.max_side, length) + 1, ()))
        return int(torch.randint(0, length - size + 1, ())), size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, int]:
        height, width = v2.query_size(flat_inputs)
        (top, crop_height), (left, crop_width) = self._draw(height), self._draw(width)
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt: Any, params: dict[str, int]) -> Any:
        return v2.functional.crop(inpt, **params)


def detection_transform(hflip: float, random_crop: float = 0.0) -> v2.Compose:
    """PIL image + target -> float image in 0..1; boxes and masks flipped (and cropped) with the image.

    ``random_crop``: the probability of DETR's resize-and-crop (short side to 400, 500 or 600, then a crop of
    384-600 pixels a side). Resizing to the training sizes and normalisation happen inside the detector.
    """
    steps: list[Callable] = [v2.ToImage()]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if random_crop > 0:
        crop = [v2.RandomShortestSize(DETR_CROP_SHORT_SIDES), RandomSizeCrop(*DETR_CROP_SIDES)]
        steps += [v2.RandomApply(crop, p=random_crop), v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIDE)]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


class CocoDetectionSet(Dataset):
    """The images of a ``CocoIndex`` as torchvision detection samples; unreadable images raise or yield ``None``."""

    def __init__(self, index: CocoIndex, transform: Callable, with_masks: bool, skip_corrupt: bool = False) -> None:
        self.index, self.transform = index, transform
        self.with_masks, self.skip_corrupt = with_masks, skip_corrupt

    def __len__(self) -> int:
        return len(self.index.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        info = self.index.images[i]
        try:
            image = load_rgb(str(self.index.images_dir / info["file_name"]))
        except CorruptImageError:
            if self.skip_corrupt:
                return None
            raise
        height, width = image.height, image.width
        annotations = self.index.annotations[int(info["id"])]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)  # [K, 4] xywh
        boxes[:, 2:] += boxes[:, :2]  # -> xyxy
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.index.label_of(a["category_id"]) for a in annotations], dtype=torch.int64),
            "image_id": int(info["id"]),
        }
        if self.with_masks:
            masks = [annotation_mask(a["segmentation"], height, width) for a in annotations]
            target["masks"] = tv_tensors.Mask(
                torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
            )
        image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), {
            k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()
        }


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict[str, Any]], int]:
    """Lists of images and targets (detectors take varied sizes) without the skipped ``None``s:
    (images, targets, skipped)."""
    kept = [item for item in batch if item is not None]
    images = [image for image, _ in kept]
    targets = [target for _, target in kept]
    return images, targets, len(batch) - len(kept)
