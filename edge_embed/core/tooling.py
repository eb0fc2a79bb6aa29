"""What the offline tools share: one-line errors, atomic bundle folders, progress, provenance.

`export` and `quantize` both write bundles; both must leave either a whole bundle or nothing,
fail with one clear line and exit code 2, and say what they are doing unless `--quiet`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .bundle import _ID_RE, MANIFEST_NAME, load_manifest
from .errors import BundleError
from .machine import CPUINFO, cpu_facts

T = TypeVar("T")
EXIT_USAGE = 2


class ToolError(Exception):
    """A user-facing failure: printed as one line, exit code 2, no traceback."""


class Reporter:
    """Says what a long step is doing, with a tqdm bar over loops; silent when quiet."""

    def __init__(self, quiet: bool = False, prog: str = "edge-embed") -> None:
        self.quiet = quiet
        self.prog = prog

    def step(self, message: str) -> None:
        if not self.quiet:
            print(f"{self.prog}: {message}", file=sys.stderr, flush=True)

    def progress(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
        if self.quiet:
            return items
        from tqdm import tqdm  # the offline tools' extra: the serving install has no tqdm

        bar: Iterable[T] = tqdm(items, desc=f"{self.prog}: {desc}", total=total,
                                file=sys.stderr, leave=False, dynamic_ncols=True)
        return bar

    def bar(self, total: int, initial: int = 0, unit: str = "inputs") -> Any:
        """A bar the caller advances (`update(n)`) over `total` items, `initial` of them done
        before this run; disabled when quiet. A context manager that closes it."""
        from tqdm import tqdm  # the offline tools' extra: the serving install has no tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=self.prog, disable=self.quiet,
                    file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a tool's body: ToolError and bad input become one line on stderr and exit 2."""
    try:
        return body()
    except ToolError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected fault: still one line, the trace only on request
        if os.environ.get("EDGE_EMBED_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {type(exc).__name__}: {exc} "
              "(set EDGE_EMBED_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def tool_parser(prog: str, description: str, id_default: str) -> argparse.ArgumentParser:
    """A parser with the options every bundle-writing tool takes, in their own help section:
    --out, --id (its default named by `id_default`), --alias, --force, --quiet."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    out = p.add_argument_group("the bundle written")
    out.add_argument("--out", required=True, type=Path, help="the bundle folder to write")
    out.add_argument("--id", dest="bundle_id", help="the bundle id the service serves it under "
                     f"(default: {id_default})")
    out.add_argument("--alias", action="append", default=[], help="another name the service "
                     "accepts for this model (repeatable)")
    out.add_argument("--force", action="store_true", help="replace an existing output folder")
    out.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def run_tool(parser: argparse.ArgumentParser, argv: list[str] | None,
             body: Callable[[argparse.Namespace], int]) -> int:
    """Parse `argv`, refuse a bad --id before any work, then run `body(args)` under run_cli."""
    args = parser.parse_args(argv)

    def checked() -> int:
        if args.bundle_id is not None and not _ID_RE.match(args.bundle_id):
            raise ToolError(f"--id '{args.bundle_id}' must be 1-128 letters, digits or ._:/- "
                            "characters")
        return body(args)

    return run_cli(parser.prog, checked)


def check_bundles(bundles: dict[str, Path | None]) -> None:
    """One line naming the flag for a bundle that is missing or broken, before anything starts."""
    for flag, path in bundles.items():
        if path is not None:
            try:
                load_manifest(path)
            except BundleError as exc:
                raise ToolError(f"{flag}: {exc}") from None


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing output unless forced, and an unwritable parent, before any work."""
    if out.exists() and not force:
        raise ToolError(f"output {out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise ToolError(f"output {out} exists and is not a folder")
    # --force replaces a bundle (or an empty folder), never a folder a bundle was not built in.
    if out.is_dir() and not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise ToolError(f"output {out} is a folder that holds no {MANIFEST_NAME}: not a bundle, "
                        "so not replaced even with --force; choose another --out")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolError(f"cannot create {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ToolError(f"output folder {parent} is not writable")


@contextlib.contextmanager
def atomic_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` in one rename.

    Built beside the destination (same filesystem) so the final rename is atomic; on any failure
    the temporary folder is removed and `out` is left as it was.
    """
    check_output(out, force)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    # mkdtemp makes the folder 0700; a bundle should be readable like any folder the user makes
    # (a service running as another user, a container mounting it).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        for path in tmp.iterdir():
            # likewise its files: onnx writes external data 0600
            if path.is_file():
                os.chmod(path, 0o666 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tool_versions(*packages: str) -> dict[str, str]:
    names = ("edge-embed", "onnxruntime", "onnx", "tokenizers", "numpy", *packages)
    versions: dict[str, str] = {}
    for name in dict.fromkeys(names):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def measured_on(cpuinfo: Path = CPUINFO) -> dict[str, object]:
    """{cpu, isa, target, onnxruntime}: what a manifest records beside figures measured here."""
    return {**cpu_facts(cpuinfo), "onnxruntime": tool_versions().get("onnxruntime", "")}


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()
