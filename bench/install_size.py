"""Size of the runtime install: a venv holding `pip install edge-embed` with no extra.

Measured on `.venv-runtime` (what `make install-runtime` builds), created on the spot when
missing. The venv's own tooling (pip, setuptools) is counted apart: it is in every venv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUNTIME_VENV = REPO / ".venv-runtime"
# pip installing the runtime from a local registry took ~10 s here; 10 minutes means stuck.
INSTALL_TIMEOUT_S = 600
TOOLING = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "wheel")


def _tree_bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def create(venv: Path) -> None:
    # setuptools builds in the source tree; a build/ left behind would feed stale files to the
    # next `pip install .`, so remove it unless it was there before.
    build = REPO / "build"
    had_build = build.exists()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       timeout=INSTALL_TIMEOUT_S)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(REPO)], check=True,
                       timeout=INSTALL_TIMEOUT_S, cwd=REPO)
    finally:
        if not had_build:
            shutil.rmtree(build, ignore_errors=True)


def measure(venv: Path) -> dict[str, Any]:
    site = next(iter(sorted(venv.glob("lib/python*/site-packages"))), None)
    if site is None:
        raise FileNotFoundError(f"{venv} has no lib/python*/site-packages")
    total = tooling = 0
    for entry in site.iterdir():
        size = _tree_bytes(entry)
        total += size
        if entry.name.split("-")[0].split(".")[0] in TOOLING:
            tooling += size
    return {"venv": str(venv), "site_packages_mb": round(total / 1e6, 1),
            "venv_tooling_mb": round(tooling / 1e6, 1),
            "runtime_mb": round((total - tooling) / 1e6, 1)}
