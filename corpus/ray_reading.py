"""Ray Data's readers with every row numbered where it is read: no zip, no order to keep.

A row's number (its 0-based row across the inputs in order: the local mode's id and the key of
exactly-once) is its file's first row number, from the validation pass's per-file counts, plus its
position in the file: Ray's file readers read each file whole, from its start, in one task (a
retry replays it) and can say which file each row came from (`include_paths`). The number is a
column from then on, so Ray may hand blocks to any actor and write them in any order. Each file's
count is checked against the validation pass's as it is read, so no misnumbered row is handed on;
the read task keeps only the columns the job needs. Why not a zip: docs/architecture.md, The tools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CorpusError

ROW = "__row"
TEXT = "__text"
ID = "__id"
# The column Ray's readers fill with each row's file under include_paths.
PATH = "path"


def file_key(path: str | Path) -> str:
    """One spelling of a file for the driver's offsets and the reader's `path` column."""
    return str(Path(path).resolve())


@dataclass(frozen=True)
class FileRows:
    """Each input's first global row number and its row count, by file_key."""

    first: dict[str, int]
    rows: dict[str, int]

    @classmethod
    def of(cls, paths: Sequence[Path], counts: Sequence[int]) -> FileRows:
        first: dict[str, int] = {}
        rows: dict[str, int] = {}
        start = 0
        for path, count in zip(paths, counts, strict=True):
            key = file_key(path)
            if key in first:
                # Ray reads a file once whatever the list says; its rows would have two numbers.
                raise CorpusError(f"{path}: given twice; --ray reads each input once, so give "
                                  "each file once")
            first[key], rows[key] = start, count
            start += count
        return cls(first, rows)


class NumberingError(Exception):
    """Ray's reader and the validation pass disagree about a file's rows."""


def mismatch(path: str, read: str, rows: int) -> NumberingError:
    return NumberingError(f"{path}: Ray's reader read {read} rows where the validation pass "
                          f"read {rows} (for plain text, a line holding a character that Ray "
                          "splits lines at, such as U+2028; run without --ray, or give JSON "
                          "Lines)")


def numbered(read_fn: Callable[[], Iterable[Any]], files: FileRows, task_files: Sequence[str],
             text: str, id_field: str | None) -> Callable[[], Iterator[Any]]:
    """A read task's function whose blocks carry only ROW, TEXT (and ID)."""

    def read() -> Iterator[Any]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        from ray.data.block import BlockAccessor

        seen: dict[str, int] = {}
        for block in read_fn():
            table = BlockAccessor.for_block(block).to_arrow()
            if not table.num_rows:
                continue
            keys = pc.unique(table[PATH]).to_pylist()
            if len(keys) != 1:  # Ray's readers make a block from one file
                raise NumberingError(f"a block of Ray's reader holds rows of {keys}")
            key = file_key(keys[0])
            done = seen.get(key, 0)
            if done + table.num_rows > files.rows[key]:
                raise mismatch(key, f"at least {done + table.num_rows}", files.rows[key])
            seen[key] = done + table.num_rows
            first = files.first[key] + done
            columns = {TEXT: table[text].cast(pa.string()),
                       ROW: pa.array(np.arange(first, first + table.num_rows, dtype=np.int64))}
            if id_field:
                columns[ID] = table[id_field]
            yield pa.table(columns)
        for key in task_files:
            if seen.get(key, 0) != files.rows[key]:
                raise mismatch(key, str(seen.get(key, 0)), files.rows[key])

    return read


def numbered_datasource(inner: Any, files: FileRows, text: str, id_field: str | None) -> Any:
    """`inner` (one of Ray's file readers, built with include_paths=True) with numbered rows."""
    from ray.data.datasource import Datasource, ReadTask

    class Numbered(Datasource):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]

        def get_name(self) -> str:
            return str(inner.get_name())

        def estimate_inmemory_data_size(self) -> int | None:
            size: int | None = inner.estimate_inmemory_data_size()
            return size

        @property
        def supports_distributed_reads(self) -> bool:
            return bool(inner.supports_distributed_reads)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            tasks = inner.get_read_tasks(parallelism, per_task_row_limit=per_task_row_limit,
                                         data_context=data_context)
            out = []
            for task in tasks:
                task_files = [file_key(p) for p in task.metadata.input_files or ()]
                unknown = [p for p in task_files if p not in files.first]
                if not task_files or unknown:
                    raise CorpusError(f"Ray's reader planned a read of {unknown or 'no file'}, "
                                      "which is not one of the inputs")
                out.append(ReadTask(numbered(task.read_fn, files, task_files, text, id_field),
                                    task.metadata))
            return out

    return Numbered()
