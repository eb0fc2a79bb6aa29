"""Are bundle builds reproducible? Export and quantize the same source twice, compare the bytes.

`python -m edge_embed.quantize.repro SRC` (`make model-repro`): two full builds (fp32 export, then
int8 quantize), each in its own processes with a different PYTHONHASHSEED, so that an output
hanging on set or dict-of-str order would show. Every file must be byte-identical, and
bundle.json too once its "build" field (when, how long) is set aside. Exit 0 when they are,
1 when not, naming each difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_embed.core.bundle import MANIFEST_NAME
from edge_embed.core.files import sha256

# The manifest field that records when and how long a build ran: the one thing allowed to differ.
BUILD_FIELD = "build"
# One hash seed per build: different on purpose (see the module's docstring).
HASH_SEEDS = ("1", "2")


def manifest_without_build(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    data.pop(BUILD_FIELD, None)
    return data


def bundle_differences(a: Path, b: Path) -> list[str]:
    """What differs between two bundle folders: files, bytes, manifest fields (not `build`)."""
    names_a = {p.name for p in a.iterdir() if p.is_file()}
    names_b = {p.name for p in b.iterdir() if p.is_file()}
    out = [f"{name}: only in {a}" for name in sorted(names_a - names_b)]
    out += [f"{name}: only in {b}" for name in sorted(names_b - names_a)]
    for name in sorted((names_a & names_b) - {MANIFEST_NAME}):
        if sha256(a / name) != sha256(b / name):
            out.append(f"{name}: bytes differ")
    if MANIFEST_NAME in names_a & names_b:
        ma, mb = manifest_without_build(a), manifest_without_build(b)
        out += [f"{MANIFEST_NAME}: field '{key}' differs" for key in sorted(ma.keys() | mb.keys())
                if ma.get(key) != mb.get(key)]
    return out


class BuildFailed(Exception):
    """A build step exited non-zero (its own error line is already on stderr)."""


def _build(src: Path, work: Path, seed: str) -> tuple[Path, Path]:
    """fp32 and int8 bundles of `src` under `work`, built by the CLI in fresh processes."""
    env = {**os.environ, "PYTHONHASHSEED": seed}
    fp32, int8 = work / "fp32", work / "int8"
    for argv in (["export", str(src), "--out", str(fp32)],
                 ["quantize", str(fp32), "--out", str(int8)]):
        done = subprocess.run([sys.executable, "-m", "edge_embed.service.cli", *argv,
                               "--quiet", "--force"], env=env, check=False)
        if done.returncode != 0:
            raise BuildFailed(f"edge-embed {argv[0]} exited {done.returncode}")
    return fp32, int8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.quantize.repro",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("src", type=Path, help="the model folder `edge-embed export` reads")
    p.add_argument("--work", type=Path, help="where to build (default: a temporary folder, "
                   "removed afterwards)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="edge-embed-repro-"))
    try:
        runs = [_build(args.src, work / f"run{i}", seed) for i, seed in enumerate(HASH_SEEDS, 1)]
        failed = False
        for kind, first, second in zip(("fp32", "int8"), runs[0], runs[1], strict=True):
            diffs = bundle_differences(first, second)
            failed = failed or bool(diffs)
            for name in sorted(p.name for p in first.iterdir() if p.name != MANIFEST_NAME):
                print(f"{kind} {name}: sha256 {sha256(first / name)}")
            print(f"{kind}: " + ("identical (bundle.json apart from 'build')" if not diffs
                                 else "DIFFERENT: " + "; ".join(diffs)))
        return 1 if failed else 0
    except BuildFailed as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
