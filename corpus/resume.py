"""Where a run stands in its output folder: new, part-way (go on), finished, or someone else's.

Progress is the shard files themselves: a shard exists only whole (written under a temporary
name, renamed), so the shards present are exactly the work done, and a restart after SIGINT or
SIGKILL embeds only what is missing. `run.json` ties those shards to one spec (bundle, inputs,
options); a restart with a different spec is refused rather than mixing two runs' vectors, and
`--overwrite` removes this job's files (never anything else) to start again. A lock file in the
folder, held for the whole run, refuses a second run on the same folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import CorpusError
from .manifest import MANIFEST_NAME, RUN_NAME, Spec, read_json, write_json_atomic
from .shards import RAY_SHARDS_DIR, SHARD_RE, TMP_PREFIX, remove_temporaries

log = logging.getLogger("edge_embed.corpus")

# Held (flock) by the run writing the folder, and holding its pid for the refusal's message.
# The kernel drops the lock when its process dies, so a file a killed run left is taken over.
LOCK_NAME = ".edge-embed-embed.lock"
# Attempts to lock the file, each lost only to a run that removed it just then (finishing).
LOCK_ATTEMPTS = 5


@dataclass(frozen=True)
class State:
    finished: bool
    shards: frozenset[str]  # shard files already written


def _ours(out: Path) -> list[Path]:
    return [p for p in out.iterdir()
            if SHARD_RE.match(p.name) or p.name in (RUN_NAME, MANIFEST_NAME, RAY_SHARDS_DIR)
            or p.name.startswith(TMP_PREFIX)]


def inspect(out: Path, spec: Spec, overwrite: bool) -> State:
    """Read-only: what is in `out` and whether this spec may go on with it."""
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--out {out}: is a file, not a folder")
    if not out.exists():
        return State(False, frozenset())
    if overwrite:
        return State(False, frozenset())
    shards = frozenset(p.name for p in out.iterdir() if SHARD_RE.match(p.name))
    if (out / RAY_SHARDS_DIR).is_dir():
        shards |= {p.name for p in (out / RAY_SHARDS_DIR).iterdir()}
    recorded = read_json(out / RUN_NAME)
    if recorded is None:
        if shards or (out / MANIFEST_NAME).exists():
            raise CorpusError(f"--out {out}: holds shards but no {RUN_NAME}, so they cannot be "
                              "trusted to be this run's; pass --overwrite to start again")
        return State(False, frozenset())
    changed = spec.differences(recorded)
    if changed:
        raise CorpusError(f"--out {out}: holds the output of a different run ({'; '.join(changed)} "
                          "changed); pass --overwrite to replace it, or choose another --out")
    finished = read_json(out / MANIFEST_NAME) is not None
    return State(finished, shards)


def begin(out: Path, spec: Spec, overwrite: bool) -> None:
    """Make `out` ready to write: our old files gone under --overwrite, the spec recorded."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in _ours(out):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    remove_temporaries(out)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    write_json_atomic(out / RUN_NAME, spec.to_dict())


def _locked(fd: int, path: Path) -> bool:
    """Lock `fd` (the open `path`) for this process; False when the file was removed meanwhile
    (its holder finished: open it again). Raises CorpusError when another run holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        raise CorpusError(f"--out {path.parent}: another run (pid {holder}) is writing to this "
                          f"folder (it holds {path}); wait for it to end, or choose another "
                          "--out") from None
    except OSError as exc:
        raise CorpusError(f"--out {path.parent}: cannot lock {path} ({exc.strerror})") from None
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def hold_output(out: Path) -> Iterator[None]:
    """Hold `out` for this run (created if missing): a second run on it is refused, naming the
    holder's pid; a lock a dead run left is taken over."""
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--out {out}: is a file, not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    for _ in range(LOCK_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CorpusError(f"--out {out}: cannot create {path} ({exc.strerror})") from None
        try:
            if _locked(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    else:
        raise CorpusError(f"--out {out}: cannot lock {path}: it keeps being removed")
    try:
        stale = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if stale:
            log.warning("--out %s: taking over the lock of run %s, which ended without "
                        "releasing it", out, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created:  # a run refused before it wrote anything leaves no folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
