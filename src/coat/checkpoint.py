"""Reading and writing CoaT checkpoints.

Readable: the authors' ``.pth`` (weights under ``model``), timm's ``.pth``/``.safetensors`` (the
authors' key names without the unused norms), ours (safetensors whose metadata holds the config
and the preprocessing), Hugging Face model folders, ``hf-hub:ORG/NAME[@REVISION]`` and the names
of released weights (``coat.weights``), both fetched through ``coat.download``. Files are never
unpickled beyond plain tensors (``torch.load(weights_only=True)``).
The authors' key names are mapped to ours by ``authors_to_coat``; nothing in the module tree
depends on them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .data.preprocessing import Preprocessing
from .download import fetch, fetch_hub_file
from .errors import CoatError
from .files import atomic_write
from .models.config import CoaTConfig
from .weights import Weights, get_weights, is_weights_name

FORMAT_NAME = "coat"
FORMAT_VERSION = "1"
DETECTOR_FORMAT_NAME = "coat-detector"
SEGMENTER_FORMAT_NAME = "coat-segmenter"


class CheckpointError(CoatError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one sentence."""


@dataclass
class Checkpoint:
    """Weights in our key names plus what the file said about itself."""

    state_dict: dict[str, torch.Tensor]
    source_format: str  # "coat", "authors" or "timm"
    config: CoaTConfig | None = None  # only our own files carry one
    variant: str | None = None
    preprocessing: Preprocessing | None = None  # from our metadata, timm's config.json or the weights table
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what conversion changed
    path: str = ""  # where it was read from, for messages

    @property
    def num_classes(self) -> int:
        head = self.state_dict.get("head.weight")
        return 0 if head is None else head.shape[0]


# ---------------------------------------------------------------------------- reading
def read_checkpoint(source: str | os.PathLike | Weights) -> Checkpoint:
    """Read any supported checkpoint into our key names.

    ``source`` is a file, a Hugging Face style folder (``config.json`` + ``model.safetensors``),
    ``hf-hub:ORG/NAME[@REVISION]``, or released weights: a ``Weights`` entry, its name
    (``coat_lite_tiny.in1k``, ``coat_lite_tiny.authors``) or a variant name (its default weights).
    Hub files and released weights are downloaded into the cache first (``coat.download``).
    """
    if isinstance(source, Weights) or (is_weights_name(source) and not Path(source).exists()):
        weights = source if isinstance(source, Weights) else get_weights(source)
        checkpoint = _read(fetch(weights))
        checkpoint.variant, checkpoint.preprocessing = weights.variant, weights.preprocessing
        checkpoint.path = weights.name
        return checkpoint
    checkpoint = _read(source)
    checkpoint.path = str(source)
    return checkpoint


def _read(path: str | os.PathLike) -> Checkpoint:
    if str(path).startswith(HUB_PREFIX):
        path = _hub_folder(str(path)[len(HUB_PREFIX) :])
    path = Path(path)
    if path.is_dir():
        return _read_hub_folder(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pth or .safetensors file")
    if is_safetensors(path):
        tensors, metadata = read_safetensors(path)
    else:
        tensors, metadata = read_torch_state(path), {}
    if metadata.get("format") == DETECTOR_FORMAT_NAME or is_mmdet_detector(tensors):
        raise CheckpointError(
            f"{path} is a detector checkpoint (coat detect train, or the authors' mmdetection detectors); use it "
            "with `coat detect eval` or `coat detect predict`"
        )
    if metadata.get("format") == SEGMENTER_FORMAT_NAME:
        raise CheckpointError(
            f"{path} is a segmentation checkpoint (coat segment train); use it with `coat segment eval` "
            "or `coat segment predict`"
        )
    if metadata.get("format") == FORMAT_NAME:
        config_data = json.loads(metadata["config"])
        # files written before preprocessing left the config carry it there
        legacy = {key: config_data.pop(key) for key in LEGACY_PREPROCESSING_KEYS if key in config_data}
        saved = json.loads(metadata["preprocessing"]) if "preprocessing" in metadata else legacy
        return Checkpoint(
            tensors,
            "coat",
            CoaTConfig.from_dict(config_data),
            metadata.get("variant"),
            Preprocessing.from_dict(saved) if saved else None,
            metadata,
        )
    return state_checkpoint(tensors, metadata, str(path))


def state_checkpoint(
    tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None, where: str = "the state dict"
) -> Checkpoint:
    """A bare state dict in our, the authors' or timm's key names as a ``Checkpoint`` in ours."""
    metadata = metadata or {}
    if any(key.startswith("stages.") for key in tensors):
        return Checkpoint(dict(tensors), "coat", metadata=metadata)
    if "patch_embed1.proj.weight" not in tensors:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
        raise CheckpointError(f"{where} is not a CoaT checkpoint: no patch_embed1/stages keys (found {sample})")
    source = "authors" if "norm1.weight" in tensors else "timm"  # timm drops the unused norms
    state, notes = authors_to_coat(tensors)
    return Checkpoint(state, source, metadata=metadata, notes=notes)


HUB_PREFIX = "hf-hub:"
LEGACY_PREPROCESSING_KEYS = ("input_size", "crop_pct", "mean", "std")


def _hub_folder(spec: str) -> Path:
    """``ORG/NAME[@REVISION]`` -> the snapshot folder holding its model.safetensors (and config.json)."""
    repo_id, _, revision = spec.partition("@")
    fetch_hub_file(repo_id, "config.json", revision or None, name=HUB_PREFIX + spec, required=False)
    return fetch_hub_file(repo_id, "model.safetensors", revision or None, name=HUB_PREFIX + spec).parent


def _read_hub_folder(folder: Path) -> Checkpoint:
    weights, config_file = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file():
        raise CheckpointError(
            f"{folder} has no model.safetensors; a model folder holds config.json + model.safetensors"
        )
    checkpoint = read_checkpoint(weights)
    if config_file.is_file():
        try:
            hub_config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_file} is not valid JSON ({err.msg} at line {err.lineno})") from None
        architecture = str(hub_config.get("architecture", "")).split("/")[-1].split(".")[0]
        checkpoint.variant = checkpoint.variant or architecture or None
        if isinstance(hub_config.get("pretrained_cfg"), dict):  # timm's config.json
            checkpoint.preprocessing = checkpoint.preprocessing or Preprocessing.from_dict(hub_config["pretrained_cfg"])
        if hub_config.get("label_names"):
            checkpoint.metadata["class_names"] = json.dumps(list(hub_config["label_names"]))
    return checkpoint


def is_mmdet_detector(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is an mmdetection two-stage detector's (a backbone, an RPN head and RoI heads)."""
    return any(k.startswith("rpn_head.") for k in state) and any(k.startswith("roi_head.") for k in state)


def is_mmdet_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``torch.save`` file of an mmdetection two-stage detector (the authors' detectors)."""
    path = Path(path)
    return path.is_file() and not is_safetensors(path) and is_mmdet_detector(read_torch_state(path))


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file (by its suffix or its first bytes)."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {key: f.get_tensor(key) for key in f.keys()}, metadata  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_first_line(err)}); "
            "it may be truncated, re-download or re-save it"
        ) from None


def read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of tensors in a ``torch.save`` file (at the top level or under ``model`` / ``state_dict`` /
    ``model_ema``), loaded with ``weights_only=True``; a one-line ``CheckpointError`` otherwise."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on garbage input
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):  # a reference to code, refused
            raise CheckpointError(
                f"{path} contains pickled Python objects beyond plain tensors, which could run code; refusing to "
                "load it (re-save the weights alone, or convert them with `coat convert` where trusted)"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(err)}); "
            "it may be truncated or not a checkpoint at all"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_ema"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} holds no state dict of tensors (top level: {type(obj).__name__}); "
            "expected a dict of weights, optionally under 'model'"
        )
    return dict(obj)


def _first_line(err: BaseException) -> str:
    message = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


# ---------------------------------------------------------------------------- key map
def _stage(s: str) -> int:
    return int(s) - 1


def _parallel_scale(s: str) -> int:
    return int(s) - 2  # parallel blocks act on scales 2, 3, 4


# Each rule maps an authors' key to (our key, rank). Shared modules appear under several keys
# in the authors' files (the stage's CPE/CRPE inside every block, the parallel MLP as
# mlp2/mlp3/mlp4). PyTorch's load_state_dict visits every alias in module order, so the
# authors' model ends up with the copy it visits last; the rank reproduces that order
# (top-level module < serial block i < parallel block j, then mlp2 < mlp3 < mlp4).
_Rank = tuple[int, int, int]
_Rule = Callable[[re.Match], tuple[str, _Rank]]
_TOP: _Rank = (0, 0, 0)
_AUTHORS_RULES: list[tuple[str, _Rule]] = [
    (r"patch_embed(\d)\.(.*)", lambda m: (f"stages.{_stage(m[1])}.patch_embed.{m[2]}", _TOP)),
    (r"cls_token(\d)", lambda m: (f"stages.{_stage(m[1])}.cls_token", _TOP)),
    (r"cpe(\d)\.(.*)", lambda m: (f"stages.{_stage(m[1])}.cpe.{m[2]}", _TOP)),
    (r"crpe(\d)\.conv_list\.(.*)", lambda m: (f"stages.{_stage(m[1])}.crpe.convs.{m[2]}", _TOP)),
    (r"serial_blocks(\d)\.(\d+)\.cpe\.(.*)", lambda m: (f"stages.{_stage(m[1])}.cpe.{m[3]}", (1, int(m[2]), 0))),
    (
        r"serial_blocks(\d)\.(\d+)\.factoratt_crpe\.crpe\.conv_list\.(.*)",
        lambda m: (f"stages.{_stage(m[1])}.crpe.convs.{m[3]}", (1, int(m[2]), 0)),
    ),
    (
        r"serial_blocks(\d)\.(\d+)\.factoratt_crpe\.(qkv|proj)\.(.*)",
        lambda m: (f"stages.{_stage(m[1])}.blocks.{m[2]}.attn.{m[3]}.{m[4]}", _TOP),
    ),
    (
        r"serial_blocks(\d)\.(\d+)\.(norm1|norm2|mlp)\.(.*)",
        lambda m: (f"stages.{_stage(m[1])}.blocks.{m[2]}.{m[3]}.{m[4]}", _TOP),
    ),
    (
        r"parallel_blocks\.(\d+)\.norm([12])(\d)\.(.*)",
        lambda m: (f"parallel_blocks.{m[1]}.norms{m[2]}.{_parallel_scale(m[3])}.{m[4]}", _TOP),
    ),
    (
        r"parallel_blocks\.(\d+)\.factoratt_crpe(\d)\.crpe\.conv_list\.(.*)",
        lambda m: (f"stages.{_stage(m[2])}.crpe.convs.{m[3]}", (2, int(m[1]), 0)),
    ),
    (
        r"parallel_blocks\.(\d+)\.factoratt_crpe(\d)\.(qkv|proj)\.(.*)",
        lambda m: (f"parallel_blocks.{m[1]}.attns.{_parallel_scale(m[2])}.{m[3]}.{m[4]}", _TOP),
    ),
    (r"parallel_blocks\.(\d+)\.mlp([234])\.(.*)", lambda m: (f"parallel_blocks.{m[1]}.mlp.{m[3]}", (2, 0, int(m[2])))),
    (r"(aggregate|head)\.(.*)", lambda m: (f"{m[1]}.{m[2]}", _TOP)),
]


def authors_to_coat(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the authors' (or timm's) key names to ours; returns the new dict and what changed.

    Aliases of shared modules collapse to one tensor (the copy the authors' loader keeps), and
    the final norms that the authors build but never use (``norm1..3`` in CoaT-Lite, ``norm1``
    in CoaT) are dropped. Unknown keys are kept so that loading reports them.
    """
    is_lite = not any(key.startswith("parallel_blocks.") for key in state)
    head_norm_scales = [4] if is_lite else [2, 3, 4]
    ranked: dict[str, tuple[_Rank, torch.Tensor]] = {}
    unused_norms: set[str] = set()
    dropped = 0
    for key, value in state.items():
        norm = re.fullmatch(r"norm(\d)\.(weight|bias)", key)
        if norm:
            scale = int(norm[1])
            if scale not in head_norm_scales:
                unused_norms.add(f"norm{scale}")
                dropped += 1
                continue
            target, rank = f"head_norms.{head_norm_scales.index(scale)}.{norm[2]}", _TOP
        else:
            target, rank = next(
                (rule(m) for pattern, rule in _AUTHORS_RULES if (m := re.fullmatch(pattern, key))), (key, _TOP)
            )
        if target not in ranked or rank >= ranked[target][0]:
            ranked[target] = (rank, value)
    out = {key: value for key, (_, value) in ranked.items()}
    aliases = len(state) - len(out) - dropped
    notes = [f"mapped {len(out)} tensors from the authors' key names"]
    if aliases:
        notes.append(f"collapsed {aliases} duplicate keys of shared CPE/CRPE/MLP modules")
    if unused_norms:
        notes.append(f"dropped the unused norms {sorted(unused_norms)}")
    return out, notes


# ---------------------------------------------------------------------------- loading into a model
def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state``; any disagreement becomes one sentence naming the first few."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} is {list(state[k].shape)} in the file but {list(expected[k].shape)} in the model"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if wrong_shape:
        problems.append(_listing("shapes differ", wrong_shape))
    if missing:
        problems.append(_listing("missing from the file", missing))
    if unexpected:
        problems.append(_listing("not in the model", unexpected))
    if problems:
        raise CheckpointError(
            f"{source} does not fit this model ({'; '.join(problems)}); check that the file is for the same variant"
        )
    model.load_state_dict(state, strict=True)


def _listing(title: str, items: list[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return f"{title}: {', '.join(items[:shown])}{more}"


# ---------------------------------------------------------------------------- writing
def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, variant: str | None = None, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model`` as safetensors with its config in the metadata, atomically (temp + rename)."""
    config: CoaTConfig = model.config
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": json.dumps(config.to_dict())}
    if getattr(model, "preprocessing", None) is not None:
        meta["preprocessing"] = model.preprocessing.to_json()
    variant = variant or getattr(model, "variant", None)
    if variant:
        meta["variant"] = variant
    meta.update(metadata or {})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def save_model_state(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``model``'s state dict and ``metadata`` as safetensors, atomically. Tied weights (Deformable DETR
    shares its class and box heads across decoder layers) are written once per name; loading fills each tied
    parameter with equal values."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        state[name] = tensor.clone() if storage in seen else tensor  # safetensors refuses shared memory
        seen.add(storage)
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def read_task_checkpoint(
    path: str | os.PathLike, format_name: str, kind: str, command: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a ``kind`` checkpoint (``format_name`` in its metadata) that ``command`` wrote,
    or a one-line ``CheckpointError`` naming what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the best.safetensors of a `{command}` run")
    state, meta = read_safetensors(path)
    if meta.get("format") != format_name:
        raise CheckpointError(
            f"{path} is not a {kind} checkpoint (format {meta.get('format', 'unknown')}); pass the "
            f"best.safetensors of a `{command}` run"
        )
    return state, meta
