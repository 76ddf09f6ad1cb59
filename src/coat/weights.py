"""The released ImageNet-1k weights as data: one entry per file, apart from the architecture.

Two sources per variant: ``VARIANT.in1k``, timm's safetensors copy on the Hugging Face hub
(``timm/VARIANT.in1k``, the default), and ``VARIANT.authors``, the authors' ``.pth`` release whose
name carries the first 8 hex digits of its SHA-256. Each entry says how to preprocess images for
it (timm evaluates its copies at crop 0.9, the authors at 0.875), what accuracy was reported, and
where the file comes from; ``coat.download`` fetches and verifies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchvision.transforms import v2

from .data.preprocessing import Preprocessing
from .errors import UsageError
from .models.config import VARIANTS

AUTHORS_BASE_URL = "https://vcl.ucsd.edu/coat/pretrained"
HUB_FILE = "model.safetensors"
DEFAULT_TAG = "in1k"
LICENSE = "Apache-2.0"
CITATION = (
    "Weijian Xu, Yifan Xu, Tyler Chang, Zhuowen Tu. Co-Scale Conv-Attentional Image Transformers. "
    "ICCV 2021. arXiv:2104.06399"
)


@dataclass(frozen=True)
class Weights:
    """One released weights file and everything needed to use it."""

    variant: str
    tag: str  # "in1k" (timm's copy on the hub) or "authors"
    file_name: str
    preprocessing: Preprocessing
    metrics: dict[str, float | None]  # top-1 / top-5 on ImageNet-1k val, percent
    hub_repo: str | None = None  # Hugging Face repository (the in1k copies)
    sha256_prefix: str | None = None  # the authors' files: first hex digits of the SHA-256
    size_bytes: int | None = None  # None: not published where we could read it
    categories: str = "imagenet-1k"  # coat.inference.imagenet_class_names()
    license: str = LICENSE
    citation: str = CITATION
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.variant}.{self.tag}"

    @property
    def url(self) -> str:
        """The download address (the authors' base address may be replaced by COAT_WEIGHTS_URL)."""
        if self.hub_repo:
            return f"https://huggingface.co/{self.hub_repo}/resolve/main/{self.file_name}"
        return f"{AUTHORS_BASE_URL}/{self.file_name}"

    @property
    def params_m(self) -> float:
        return VARIANTS[self.variant].params_m

    @property
    def gmacs(self) -> float:
        return VARIANTS[self.variant].gmacs

    def transforms(self) -> v2.Compose:
        """The evaluation transform these weights were measured with (PIL image -> normalised tensor)."""
        return self.preprocessing.transforms()


# variant -> (authors' file, authors' top-1, top-5 (README; None where not published), timm's re-evaluated
# top-1, top-5 (timm's results-imagenet.csv))
_RELEASES: dict[str, tuple[str, float, float | None, float, float]] = {
    "coat_lite_tiny": ("coat_lite_tiny_e88e96b0.pth", 77.5, 93.8, 77.548, 93.924),
    "coat_lite_mini": ("coat_lite_mini_6b4a8ae5.pth", 79.1, 94.5, 79.104, 94.606),
    "coat_lite_small": ("coat_lite_small_8d362f48.pth", 81.9, 95.5, 82.304, 95.854),
    "coat_lite_medium": ("coat_lite_medium_a750cd63.pth", 83.6, 96.7, 83.602, 96.714),
    "coat_lite_medium_384": ("coat_lite_medium_384x384_f9129688.pth", 84.5, None, 84.890, 97.376),
    "coat_tiny": ("coat_tiny_c6efc33c.pth", 78.3, 94.0, 78.442, 94.044),
    "coat_mini": ("coat_mini_40667eec.pth", 81.0, 95.2, 81.320, 95.388),
    "coat_small": ("coat_small_7479cf9b.pth", 82.1, 96.1, 82.378, 96.214),
}


def _entries(variant: str) -> list[Weights]:
    file_name, top1, top5, timm_top1, timm_top5 = _RELEASES[variant]
    size = 384 if variant.endswith("_384") else 224
    authors = Preprocessing(input_size=size, crop_pct=1.0 if size == 384 else 0.875)
    timm = Preprocessing(
        input_size=size, crop_pct=1.0 if size == 384 else 0.9, crop_mode="squash" if size == 384 else "center"
    )
    reported = {"top1": top1, "top5": top5}
    return [
        Weights(
            variant,
            DEFAULT_TAG,
            HUB_FILE,
            timm,
            {**reported, "timm_top1": timm_top1, "timm_top5": timm_top5},
            hub_repo=f"timm/{variant}.in1k",
            notes=("timm's copy of the authors' weights, in safetensors",),
        ),
        Weights(
            variant,
            "authors",
            file_name,
            authors,
            reported,
            sha256_prefix=file_name.rsplit("_", 1)[1][:8],
            notes=("the authors' release (a pickle dict; read with weights_only=True)",),
        ),
    ]


WEIGHTS: dict[str, Weights] = {w.name: w for variant in VARIANTS for w in _entries(variant)}


def list_weights(variant: str | None = None) -> list[str]:
    """Names of the released weights (``VARIANT.TAG``), optionally of one variant."""
    return [name for name, w in WEIGHTS.items() if variant is None or w.variant == variant]


def is_weights_name(name: object) -> bool:
    return isinstance(name, str) and (name in WEIGHTS or name in VARIANTS)


def get_weights(name: str) -> Weights:
    """``VARIANT.TAG`` or a bare ``VARIANT`` (its default, ``VARIANT.in1k``)."""
    if name in VARIANTS:
        name = f"{name}.{DEFAULT_TAG}"
    if name not in WEIGHTS:
        raise UsageError(f"unknown weights {name!r}; choose one of: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]
