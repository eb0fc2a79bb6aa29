"""A bundle's files against its manifest: every file it lists, with its size and sha256.

The tools list the files when they write a bundle (`entries`); the service checks them before it
loads anything (`verify`), so that a copy cut short, a file replaced by another model's or an
external-data file left behind stops start-up with the file's name, instead of an onnxruntime
error deep in the graph or another model's vectors served under this id. sha256 reads every byte
once (and fills the page cache onnxruntime reads next); `--verify-files size` skips it for
multi-GB bundles on CPUs without SHA extensions (figures: docs/measurements.md, "Start-up file
check"). Pure standard library: the serving install imports it at start-up.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from edge_embed.core.errors import BundleFileError

from .bundle import MANIFEST_NAME, FileEntry, Manifest

VerifyMode = Literal["sha256", "size"]
VERIFY_MODES: tuple[VerifyMode, ...] = ("sha256", "size")
# Bytes per read while hashing: large enough that the per-call overhead is nothing next to the
# hashing, small enough that a multi-GB file never sits in memory.
HASH_CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def entries(folder: Path) -> dict[str, FileEntry]:
    """Every file in `folder` but the manifest, with its size and sha256 (for the manifest)."""
    return {p.name: FileEntry(p.stat().st_size, sha256(p)) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != MANIFEST_NAME}


def verify(folder: Path, manifest: Manifest, mode: VerifyMode = "sha256") -> int:
    """Refuse a bundle whose files are not the ones its manifest lists; returns the bytes
    checked. A manifest that lists no files (hand-made) has nothing to check."""
    checked = 0
    for name, want in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise BundleFileError(path, f"is missing; {MANIFEST_NAME} lists it "
                                  f"({_size(want.size)}): copy the whole bundle folder")
        size = path.stat().st_size
        if want.size is not None and size != want.size:
            raise BundleFileError(path, f"is {size} bytes where {MANIFEST_NAME} lists "
                                  f"{want.size}: truncated or replaced (copy or rebuild the "
                                  "bundle)")
        if mode == "sha256":
            got = sha256(path)
            if got != want.sha256:
                raise BundleFileError(path, f"sha256 {got[:16]}… is not the {want.sha256[:16]}… "
                                      f"{MANIFEST_NAME} lists: the file was replaced or changed "
                                      "after the bundle was built (copy or rebuild the bundle)")
        checked += size
    return checked


def _size(size: int | None) -> str:
    return "size not recorded" if size is None else f"{size} bytes"
