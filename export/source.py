"""Resolve SRC: a local model folder, or a Hugging Face hub id downloaded with huggingface_hub.

The hub path is real (snapshot_download, commit recorded), but this project's build machines
have no hub access, so a failed download must say so in one line rather than a stack of
connection errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge_embed.core.tooling import ToolError

# What a hub id looks like: "owner/name" (the hub's own naming rules: letters, digits, -_.).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The files snapshot_download needs for an export: configs, tokenizer, weights, and the Python
# files a model's auto_map names (run only with --trust-remote-code); no other framework's
# weights (tf/flax/onnx copies would multiply the download).
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "pytorch_model*.bin", "*.md",
                 "*.py", "1_Pooling/*", "2_Normalize/*"]


@dataclass(frozen=True)
class Source:
    folder: Path  # the local folder the export reads
    name: str  # the model's name: the hub id, or the folder's name
    revision: str | None  # the hub commit, or the revision the user named, or None
    hub: bool


def looks_like_hub_id(src: str) -> bool:
    return bool(_HUB_ID.match(src)) and not src.startswith((".", "/"))


def resolve(src: str, revision: str | None = None) -> Source:
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ToolError(f"{src} is a file; SRC must be a model folder or a hub id")
        folder = path.resolve()
        return Source(folder, folder.name, revision or _cache_commit(folder), hub=False)
    if not looks_like_hub_id(src):
        raise ToolError(f"no such model folder: {src} (SRC is a local folder or a hub id "
                        "such as sentence-transformers/all-MiniLM-L6-v2)")
    return _download(src, revision)


def _cache_commit(folder: Path) -> str | None:
    """A folder inside the hub cache (…/snapshots/<commit>) names its own commit."""
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name
    return None


def _download(repo_id: str, revision: str | None) -> Source:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise ToolError(f"{repo_id} is not a local folder, and huggingface_hub is not "
                        "installed to download it") from None
    try:
        folder = Path(snapshot_download(repo_id, revision=revision,
                                        allow_patterns=_HUB_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ToolError(f"{repo_id}: no such model on the Hugging Face hub (or it needs a "
                        "token: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ToolError(f"{repo_id}: no revision '{revision}' on the Hugging Face hub") from None
    except LocalEntryNotFoundError:
        raise ToolError(f"{repo_id} is not a local folder and could not be downloaded from the "
                        "Hugging Face hub (no network, or HF_HUB_OFFLINE is set); pass a "
                        "local model folder") from None
    except OSError as exc:
        raise ToolError(f"{repo_id} is not a local folder and could not be downloaded from "
                        f"the Hugging Face hub: {exc}") from None
    return Source(folder, repo_id, _cache_commit(folder) or revision, hub=True)
