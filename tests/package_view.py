"""The import package laid out as an install lays it out, as a folder of links to the sources.

`edge_embed`'s subpackages are top-level folders mapped in by setuptools (pyproject.toml's
package-dir); `pip install -e` maps them with an import hook, which tools that read the files
rather than import them (mypy) and a bare PYTHONPATH (the emulated arm64 root of
tests/crosscpu/run.sh) do not see. This writes DIR/edge_embed/ with relative links (so the view
also works where the checkout is mounted elsewhere), and DIR/tests.

usage: python3 tests/package_view.py DIR
       python3 tests/package_view.py DIR --mypy MYPY [ARG...]
The second form runs mypy on the view (pyproject.toml's settings) and prints its messages with
the sources' own paths (service/app.py rather than edge_embed/service/app.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "edge_embed"


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """Subpackage name under edge_embed -> its folder in the checkout (pyproject's mapping)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {name.removeprefix(f"{PACKAGE}."): folder for name, folder in mapping.items()}


def _link(target: Path, link: Path) -> None:
    link.symlink_to(os.path.relpath(target, link.parent))


def write_view(out: Path, root: Path = ROOT) -> Path:
    """DIR/edge_embed (the package's own files and the mapped folders) and DIR/tests, as links;
    anything else in DIR (a mypy cache) is kept."""
    out.mkdir(parents=True, exist_ok=True)
    pkg = out / PACKAGE
    if pkg.is_symlink() or pkg.is_file():
        pkg.unlink()
    elif pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir()
    for entry in sorted((root / PACKAGE).iterdir()):
        if entry.name != "__pycache__":
            _link(entry, pkg / entry.name)
    for name, folder in package_dirs(root).items():
        _link(root / folder, pkg / name)
    tests = out / "tests"
    if tests.is_symlink():
        tests.unlink()
    _link(root / "tests", tests)
    return pkg


def source_path(line: str, dirs: dict[str, str]) -> str:
    """A message's path in the view, rewritten to the file in the checkout."""
    for name, folder in dirs.items():
        prefix = f"{PACKAGE}/{name}/"
        if line.startswith(prefix):
            return folder + "/" + line.removeprefix(prefix)
    return line


def run_mypy(out: Path, mypy: str, args: list[str]) -> int:
    write_view(out)
    if os.sep in mypy:  # a path relative to here, and mypy runs in the view
        mypy = str(Path(mypy).absolute())
    result = subprocess.run([mypy, "--config-file", str(ROOT / "pyproject.toml"), *args],
                            cwd=out, capture_output=True, text=True)
    dirs = package_dirs()
    for line in result.stdout.splitlines():
        print(source_path(line, dirs))
    sys.stderr.write(result.stderr)
    return result.returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        sys.stderr.write(__doc__.split("\n\n")[-1] if __doc__ else "")
        return 2
    out = Path(argv[0]).absolute()
    if len(argv) > 2 and argv[1] == "--mypy":
        return run_mypy(out, argv[2], argv[3:])
    if len(argv) > 1:
        sys.stderr.write(f"unexpected arguments: {' '.join(argv[1:])}\n")
        return 2
    write_view(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
