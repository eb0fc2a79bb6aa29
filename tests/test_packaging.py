"""The distribution: one import namespace, one version, the Python it claims is the one tested.

The wheel is built from this checkout as pip builds it for a user, and its contents are read: a
generic top-level name (`service`, `export`, …) installed into site-packages would collide with
any other distribution that has one.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import edge_embed
from tests.fixtures.server import ROOT

# The folders that live at the top of the repository and are importable only as edge_embed.*.
SUBPACKAGES = ("core", "service", "export", "quantize", "bench", "corpus")
BUILD_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools (the dev extra pins a new enough one) builds it
    # offline, exactly from this checkout.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                             "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    (built,) = out.glob("edge_embed-*.whl")
    return built


def test_wheel_installs_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split()
    assert top_level == ["edge_embed"]
    roots = {n.split("/")[0] for n in names}
    assert roots == {"edge_embed", dist_info}, roots
    for package in SUBPACKAGES:
        assert f"edge_embed/{package}/__init__.py" in names, package
    # Data and markers the tools and type checkers read from the installed package.
    assert "edge_embed/core/data/eval.jsonl" in names
    assert "edge_embed/py.typed" in names


def test_version_is_defined_once(wheel: Path) -> None:
    assert wheel.name.startswith(f"edge_embed-{edge_embed.__version__}-")
    assert importlib.metadata.version("edge-embed") == edge_embed.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_requires_python_is_what_runs_and_what_mypy_checks() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = config["project"]["requires-python"].removeprefix(">=")
    major, minor = (int(x) for x in floor.split("."))
    assert sys.version_info[:2] >= (major, minor)
    assert config["tool"]["mypy"]["python_version"] == floor
    assert config["tool"]["ruff"]["target-version"] == f"py{major}{minor}"


def _bare_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in SUBPACKAGES]
    return found


def test_no_module_imports_a_folder_by_its_bare_name() -> None:
    """`import service` would load a second copy of every module beside edge_embed.service."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    bare = [hit for f in files for hit in _bare_imports(ROOT / f)]
    assert files and not bare, bare


def test_serving_never_imports_the_corpus_extras() -> None:
    """pyarrow, tqdm and ray are extras (`corpus`, `ray`): the server and the CLI's dispatch
    must start without them."""
    probe = ("import sys, edge_embed.service.serve, edge_embed.service.app, "
             "edge_embed.service.cli; "
             "print(sorted(m for m in ('pyarrow', 'ray', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
