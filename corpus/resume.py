"""Where a run stands in its output folder: new, part-way (go on), finished, or someone else's.

Progress is the shard files themselves: a shard exists only whole (written under a temporary
name, renamed), so the shards present are exactly the work done, and a restart after SIGINT or
SIGKILL embeds only what is missing. `run.json` ties those shards to one spec (bundle, inputs,
options); a restart with a different spec is refused rather than mixing two runs' vectors, and
`--overwrite` removes this job's files (never anything else) to start again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import CorpusError
from .manifest import MANIFEST_NAME, RUN_NAME, Spec, read_json, write_json_atomic
from .shards import RAY_SHARDS_DIR, SHARD_RE, TMP_PREFIX, remove_temporaries


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
