"""``create_model`` / ``list_models`` / ``load_model``: variants by name, weights from any checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointError, load_state_into, read_checkpoint
from .data.preprocessing import Preprocessing
from .errors import UsageError
from .models.coat import FIRST_CONV, CoaT
from .models.config import VARIANTS, CoaTConfig
from .models.features import CoaTFeatures
from .weights import Weights, get_weights

logger = logging.getLogger(__name__)

# timm's feature classes that CoaTFeatures is: "getter" (maps from forward_intermediates), "list" (a list of maps)
FEATURE_CLASSES = ("getter", "list")


def list_models() -> list[str]:
    """Names of the released variants."""
    return list(VARIANTS)


def variant_config(name: str, **overrides: Any) -> CoaTConfig:
    """The config of variant ``name`` with ``overrides`` (CoaTConfig fields) applied."""
    if name not in VARIANTS:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(VARIANTS)}")
    known = {f.name for f in dataclasses.fields(CoaTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown model options {unknown}; CoaTConfig fields are {sorted(known)}")
    return dataclasses.replace(VARIANTS[name].config, **overrides)


def create_model(
    name: str,
    pretrained: bool | str | os.PathLike | Weights | Checkpoint | None = None,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    feature_cls: str | None = None,
    **overrides: Any,
) -> CoaT | CoaTFeatures:
    """Build variant ``name``; with ``pretrained``, load weights:

    ``True`` (the variant's default released weights, ``NAME.in1k``), a weights name
    (``"coat_lite_small.authors"``), a ``Weights`` entry, any readable checkpoint (a path, a
    Hugging Face folder, ``hf-hub:ORG/NAME``) or a ``Checkpoint`` already read.

    ``num_classes`` defaults to the checkpoint's (or 1000); a different value re-initialises the
    classifier and logs that it did. ``model.preprocessing`` is what the weights expect.
    ``features_only=True`` returns timm's feature model instead: the maps of scales ``out_indices``, read
    through ``forward_intermediates`` (timm's ``feature_cls="getter"``, also accepted by that name; ``"list"``
    gives the same list of maps).
    """
    if feature_cls is not None and (not features_only or feature_cls.lower() not in FEATURE_CLASSES):
        raise UsageError(
            f"feature_cls={feature_cls!r} is not available: CoaT's feature model reads "
            f"forward_intermediates; pass features_only=True with feature_cls in {FEATURE_CLASSES}"
        )
    if pretrained is True:
        pretrained = get_weights(name)
    elif pretrained is False:
        pretrained = None
    checkpoint = pretrained if isinstance(pretrained, Checkpoint) or pretrained is None else read_checkpoint(pretrained)
    file_classes = checkpoint.num_classes if checkpoint else None
    if num_classes is None:
        num_classes = file_classes or VARIANTS.get(name, VARIANTS["coat_lite_tiny"]).config.num_classes
    model = CoaT(variant_config(name, num_classes=num_classes, **overrides))
    model.variant = name
    model.preprocessing = (checkpoint and checkpoint.preprocessing) or default_preprocessing(name)
    if checkpoint is not None:
        _load_weights(model, checkpoint, name, checkpoint.path)
    return CoaTFeatures(model, out_indices) if features_only else model


def default_preprocessing(name: str | None) -> Preprocessing:
    """The preprocessing of the variant's default weights (generic ImageNet 224 for unknown names)."""
    return get_weights(name).preprocessing if name in VARIANTS else Preprocessing()


def load_model(path: str | os.PathLike | Checkpoint, **overrides: Any) -> CoaT:
    """Rebuild a model from one of our own checkpoint files alone (config from its metadata)."""
    checkpoint = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    if checkpoint.config is None:
        raise CheckpointError(
            f"{checkpoint.path} carries no model config; use create_model(NAME, "
            f"pretrained={checkpoint.path!r}) or `coat convert` it first"
        )
    model = CoaT(dataclasses.replace(checkpoint.config, **overrides))
    model.variant = checkpoint.variant
    model.preprocessing = checkpoint.preprocessing or default_preprocessing(checkpoint.variant)
    _load_weights(model, checkpoint, checkpoint.variant or "model", checkpoint.path)
    return model


def _load_weights(model: CoaT, checkpoint: Checkpoint, name: str, source: str) -> None:
    state = dict(checkpoint.state_dict)
    if checkpoint.num_classes != model.config.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
        if model.config.num_classes:
            logger.warning(
                "re-initialised the classifier of %s: the file has %d classes, the model %d",
                name,
                checkpoint.num_classes,
                model.config.num_classes,
            )
        else:
            logger.info("dropped the %d-class classifier of %s (num_classes=0)", checkpoint.num_classes, name)
    for note in checkpoint.notes:
        logger.debug("%s: %s", source, note)
    first_conv = f"{FIRST_CONV}.weight"
    if first_conv in state:  # weights for RGB into a model for other inputs (in_chans=1, say)
        state[first_conv] = adapt_input_conv(state[first_conv], model.config.in_chans, name)
    load_state_into(model, state, source=f"{source} ({checkpoint.source_format} format)")


def adapt_input_conv(weight: torch.Tensor, in_chans: int, name: str = "model") -> torch.Tensor:
    """The first conv's kernel ``[C_out, C_in, k, k]`` for ``in_chans`` inputs (timm's rule): one channel gets the
    sum over the file's channels (a gray image x then gives what RGB (x, x, x) gave); more channels repeat the
    kernel cyclically, scaled by C_in / in_chans (for multiples of C_in, equal channels answer as before)."""
    file_chans = weight.shape[1]
    if in_chans == file_chans:
        return weight
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_chans // file_chans)
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (file_chans / in_chans)
    logger.info("adapted the first conv of %s from %d to %d input channels", name, file_chans, in_chans)
    return adapted


def infer_variant(state: dict) -> str:
    """The first variant whose parameter names and shapes equal ``state``'s (head size aside)."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("head.")}
    for name in VARIANTS:
        with torch.device("meta"):
            reference = CoaT(variant_config(name, num_classes=0)).state_dict()
        if shapes == {k: tuple(v.shape) for k, v in reference.items()}:
            return name
    raise CheckpointError(
        f"the weights match none of the known variants ({', '.join(VARIANTS)}); pass the variant name explicitly"
    )
