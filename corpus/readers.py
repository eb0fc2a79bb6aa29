"""The four input formats as one stream of (text, id) records, every bad row named.

JSON Lines, CSV and plain text are read line by line and Parquet batch by batch, so memory does
not grow with the corpus. A record's position is its 1-based row in its file (the line number
for JSON Lines and plain text, the data row under the header for CSV); error messages name it.
Without `--id-field` a document's id is its 0-based row across all inputs in the order given,
which is stable from run to run because the run records each input's sha256 and refuses a
changed one.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from .errors import at

Format = Literal["jsonl", "csv", "parquet", "text"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet", "text")
SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                               ".parquet": "parquet", ".pq": "parquet", ".txt": "text"}
# Parquet is read this many rows at a time: a bounded slice of a large row group.
PARQUET_BATCH_ROWS = 4096
# CSV fields may hold whole documents; the csv module's default limit (128 Ki characters) is
# below a long chunk of text, and a bounded limit still stops a runaway unquoted field.
CSV_FIELD_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Source:
    path: Path
    format: Format


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: str | None = None  # None: ids are row numbers


def detect(path: Path, forced: Format | None) -> Source:
    if forced is not None:
        return Source(path, forced)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise at(path, None, f"unknown format '{path.suffix}' (known: "
                 f"{', '.join(sorted(SUFFIXES))}); pass --format {{{','.join(FORMATS)}}}")
    return Source(path, fmt)


def row_unit(fmt: Format) -> str:
    return "line" if fmt in ("jsonl", "text") else "row"


def records(source: Source, fields: Fields) -> Iterator[tuple[str, str | None]]:
    """(text, id or None) for each row of `source`; raises CorpusError naming the bad row."""
    if fields.id is not None and source.format == "text":
        raise at(source.path, None, "plain text has no fields: --id-field applies to JSON "
                 "Lines, CSV and Parquet")
    try:
        if source.format == "jsonl":
            yield from _jsonl(source.path, fields)
        elif source.format == "csv":
            yield from _csv(source.path, fields)
        elif source.format == "text":
            yield from _text(source.path)
        else:
            yield from _parquet(source.path, fields)
    except OSError as exc:
        raise at(source.path, None, f"cannot be read ({exc.strerror or exc})") from None


def _text_of(value: Any, path: Path, row: int, fields: Fields, unit: str) -> str:
    if value is None:
        raise at(path, row, f"has no field '{fields.text}'", unit)
    if not isinstance(value, str):
        raise at(path, row, f"field '{fields.text}' must be a string, got "
                 f"{type(value).__name__}", unit)
    if not value.strip():
        raise at(path, row, f"field '{fields.text}' is an empty document", unit)
    return value


def _id_of(value: Any, path: Path, row: int, fields: Fields, unit: str) -> str | None:
    if fields.id is None:
        return None
    if value is None:
        raise at(path, row, f"has no id field '{fields.id}'", unit)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise at(path, row, f"id field '{fields.id}' must be a string or an integer, got "
                 f"{type(value).__name__}", unit)
    text = str(value)
    if not text:
        raise at(path, row, f"id field '{fields.id}' is empty", unit)
    return text


def _jsonl(path: Path, fields: Fields) -> Iterator[tuple[str, str | None]]:
    with path.open("rb") as f:
        for row, line in enumerate(f, 1):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise at(path, row, f"is not valid JSON ({exc})", "line") from None
            if not isinstance(obj, dict):
                raise at(path, row, f"must be a JSON object, got {type(obj).__name__}", "line")
            yield (_text_of(obj.get(fields.text), path, row, fields, "line"),
                   _id_of(obj.get(fields.id) if fields.id else None, path, row, fields, "line"))


def _csv(path: Path, fields: Fields) -> Iterator[tuple[str, str | None]]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
            for name in (fields.text, fields.id):
                if name is not None and name not in header:
                    raise at(path, None, f"has no column '{name}' (columns: "
                             f"{', '.join(header) or 'none'})")
            for row, rec in enumerate(reader, 1):
                yield (_text_of(rec.get(fields.text), path, row, fields, "row"),
                       _id_of(rec.get(fields.id) if fields.id else None, path, row, fields,
                              "row"))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise at(path, reader.line_num or None, f"is not valid UTF-8 CSV ({exc})",
                     "line") from None


def _text(path: Path) -> Iterator[tuple[str, str | None]]:
    with path.open("rb") as f:
        for row, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise at(path, row, f"is not valid UTF-8 ({exc.reason})", "line") from None
            line = line.rstrip("\r\n")
            if not line.strip():
                raise at(path, row, "is an empty document", "line")
            yield line, None


def _parquet(path: Path, fields: Fields) -> Iterator[tuple[str, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError) as exc:
        raise at(path, None, f"is not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    wanted = [n for n in (fields.text, fields.id) if n is not None]
    for name in wanted:
        if name not in names:
            raise at(path, None, f"has no column '{name}' (columns: {', '.join(names)})")
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        texts = batch.column(fields.text).to_pylist()
        ids = batch.column(fields.id).to_pylist() if fields.id else [None] * len(texts)
        for text, ident in zip(texts, ids, strict=True):
            row += 1
            yield (_text_of(text, path, row, fields, "row"),
                   _id_of(ident, path, row, fields, "row"))
