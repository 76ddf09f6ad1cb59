"""Fetching released weights into a local cache, verified, with an offline mode for clusters.

- Hugging Face hub files (timm's copies, ``hf-hub:ORG/NAME``) go through ``huggingface_hub``: its
  cache, revisions, ``HF_ENDPOINT`` mirrors and partial-download handling. A cached file whose
  SHA-256 no longer equals the name of its blob is fetched again, not loaded.
- The authors' files are downloaded by ``torch.hub.download_url_to_file`` (progress bar, temporary
  file) into ``<cache>/<file name>``, renamed into place only after the SHA-256 prefix in the file's
  name matched; a cached file that no longer matches is fetched again. ``COAT_WEIGHTS_URL``
  replaces the authors' base address (a proxy or an internal mirror).
- ``COAT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: every load reads the cache only; a miss names the file,
  where it was looked for, and the ``coat download`` command to run where there is network.
- ``COAT_CACHE=DIR`` puts both caches under ``DIR`` (``DIR/huggingface``, ``DIR/authors``); otherwise
  huggingface_hub's default cache and ``torch.hub.get_dir()/checkpoints`` are used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
from pathlib import Path

import torch

from .errors import CoatError
from .weights import AUTHORS_BASE_URL, Weights

logger = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("COAT_OFFLINE", "HF_HUB_OFFLINE")
CACHE_VARIABLE = "COAT_CACHE"
MIRROR_VARIABLE = "COAT_WEIGHTS_URL"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(CoatError, ValueError):
    """Weights that could not be fetched or verified; the message is one sentence with the fix."""


def offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_VARIABLES)


def hub_cache_dir() -> Path | None:
    root = os.environ.get(CACHE_VARIABLE)
    return Path(root) / "huggingface" if root else None


def authors_cache_dir() -> Path:
    root = os.environ.get(CACHE_VARIABLE)
    return Path(root) / "authors" if root else Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(weights: Weights) -> Path:
    """The local, verified file of ``weights``, downloaded first unless offline."""
    if weights.hub_repo:
        return fetch_hub_file(weights.hub_repo, weights.file_name, name=weights.name)
    return _fetch_authors(weights)


def _offline_miss(name: str, what: str, where: Path | str) -> DownloadError:
    return DownloadError(
        f"{what} is not in the cache ({where}) and COAT_OFFLINE/HF_HUB_OFFLINE forbids downloading; "
        f"run `coat download {name}` where there is network (with the same {CACHE_VARIABLE}) "
        "and copy the cache here"
    )


def _fetch_authors(weights: Weights) -> Path:
    folder = authors_cache_dir()
    path = folder / weights.file_name
    if path.is_file():
        actual = sha256_of(path)
        if actual.startswith(weights.sha256_prefix):
            return path
        logger.warning(
            "%s no longer matches its SHA-256 prefix %s (it is %s...): fetching it again",
            path,
            weights.sha256_prefix,
            actual[:8],
        )
        path.unlink()
    if offline():
        raise _offline_miss(weights.name, weights.file_name, folder)
    base = os.environ.get(MIRROR_VARIABLE, AUTHORS_BASE_URL).rstrip("/")
    url = f"{base}/{weights.file_name}"
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # never read as weights; replaced by the next try
    try:
        torch.hub.download_url_to_file(url, str(partial), progress=True)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadError(
            f"could not download {url} ({reason}); check the network, set {MIRROR_VARIABLE} to a "
            f"mirror, or run `coat download {weights.name}` where there is network"
        ) from None
    actual = sha256_of(partial)
    if not actual.startswith(weights.sha256_prefix):
        partial.unlink()
        raise DownloadError(
            f"{url} has SHA-256 {actual}, but {weights.file_name} must start with "
            f"{weights.sha256_prefix}; the download was deleted (a wrong mirror or a damaged file)"
        )
    os.replace(partial, path)
    return path


def fetch_hub_file(
    repo_id: str, filename: str, revision: str | None = None, name: str | None = None, required: bool = True
) -> Path | None:
    """``filename`` of Hugging Face repository ``repo_id`` from huggingface_hub's cache (downloaded first
    unless offline); ``None`` for a missing optional file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    name = name or f"hf-hub:{repo_id}"
    cache = hub_cache_dir()

    def download(force: bool = False) -> Path:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache,
                force_download=force,
                local_files_only=offline() and not force,
                endpoint=os.environ.get("HF_ENDPOINT"),
            )
        )

    try:
        path = download()
        blob = path.resolve().name
        if _SHA256.fullmatch(blob) and sha256_of(path) != blob:
            if offline():
                raise DownloadError(
                    f"the cached {repo_id}/{filename} ({path.resolve()}) is damaged (its SHA-256 is "
                    f"not {blob[:12]}...) and offline mode forbids fetching it again; run "
                    f"`coat download {name}` where there is network"
                )
            logger.warning("the cached %s/%s no longer matches its SHA-256: fetching it again", repo_id, filename)
            path = download(force=True)
        return path
    # most specific first: LocalEntryNotFoundError is also an EntryNotFoundError
    except LocalEntryNotFoundError:
        if offline():
            if not required:
                return None
            raise _offline_miss(name, f"{repo_id}/{filename}", cache or "huggingface_hub's cache") from None
        raise DownloadError(
            f"could not download {repo_id}/{filename} from the Hugging Face hub (no connection); "
            f"check the network, set HF_ENDPOINT to a mirror, or run `coat download {name}` where "
            "there is network"
        ) from None
    except EntryNotFoundError:
        if required:
            raise DownloadError(
                f"{repo_id} has no file {filename}; a CoaT model repository holds model.safetensors (and config.json)"
            ) from None
        return None
    except HfHubHTTPError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DownloadError(
            f"could not download {repo_id}/{filename} from the Hugging Face hub ({first_line})"
        ) from None
