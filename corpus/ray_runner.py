"""The same job on Ray Data: Ray's reader, an actor pool that loads the bundle once per actor,
Ray's Parquet writer, the same manifest.

Exactly once and resumable without a coordinator: every row carries its global row number from
the read on (ray_reading.py) and every shard Ray writes carries the row numbers it holds. A
restart drops any file that is not a whole Parquet file (a killed writer leaves one without its
footer), reads the `row` column of the rest and filters those rows out before they reach an
actor; the run ends by checking that the shards hold every row exactly once. Actors take
ACTOR_CPUS each and the pool grows with the cluster; reading, filtering and writing ask for no
CPU (IO_TASK_CPUS).
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_embed.core.bundle import load_manifest
from edge_embed.core.cpus import usable_cpus
from edge_embed.core.encoder import TextTokenizer
from edge_embed.core.tooling import Reporter

from .embedder import Embedder
from .errors import RAY_HINT, CorpusError
from .manifest import Spec, report, write_manifest
from .ray_reading import ID, ROW, TEXT, FileRows, NumberingError, numbered_datasource
from .readers import CSV_FIELD_LIMIT, Fields, Source
from .resume import begin
from .shards import RAY_SHARDS_DIR, ShardRows, table
from .validate import scan

# CPUs per actor: the service's measurement on 2 cores (two runs of one thread beat one run of
# two threads by 1.1-1.5x) says one CPU each; --ray-actor-cpus changes it for wider machines.
ACTOR_CPUS = 1
# Rows per map_batches call at most: the window each actor sorts by length and cuts as the
# engine does; 1024 short rows are ~32 model runs, enough for the sort to pay, small in memory.
RAY_BATCH_ROWS = 1024
# Ray Data's block size for this job (its default is 128 MiB). A block is one actor call, so a
# file must become many blocks for every actor to get a share; Ray's readers cut blocks by
# bytes, and bytes of text are about the work (tokens).
# Figures: docs/measurements.md#ray_block_bytes
RAY_BLOCK_BYTES = 256 * 1024
# CPUs Ray reserves for each read, resume-filter and write task: none. They use little CPU, and
# with a CPU each they could only run while an actor's CPU was free, which a pool that holds
# every CPU (the fastest layout) never frees. Figures: docs/measurements.md#io_task_cpus
IO_TASK_CPUS = 0
# Idle Ray workers kept beyond the CPU count when the job starts its own Ray. Ray's default
# keeps as many as there are CPUs; Ray Data's three helper actors and one embed actor per CPU
# already exceed that, so Ray ended each write task's worker after a second idle and started a
# new Python process for the next one (figures: docs/measurements.md#ray_spare_workers). The
# read, filter and write workers fit in this many.
RAY_SPARE_WORKERS = 8
# Every Parquet file starts and ends with these 4 bytes; the smallest whole file is the two of
# them around a 4-byte footer length.
PARQUET_MAGIC = b"PAR1"
PARQUET_MIN_BYTES = 3 * len(PARQUET_MAGIC)
# Links followed down an exception's causes (Ray wraps a task's error two or three deep).
MAX_CAUSES = 16
# pyarrow's JSON reader parses in blocks that must each hold whole lines: the CSV reader's field
# limit, so that any document the local mode reads, Ray reads too.
JSON_BLOCK_BYTES = CSV_FIELD_LIMIT


class EmbedActor:
    """Loads the bundle once; embeds Arrow batches into the shard columns."""

    def __init__(self, bundle: str, cpus: int, id_field: str | None) -> None:
        self.embedder = Embedder(Path(bundle), cpus=cpus)
        self.id_field = id_field

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa  # the `corpus` extra, imported where a batch is written

        texts = batch.column(TEXT).to_pylist()
        rows = batch.column(ROW).to_numpy()
        ids: list[int] | list[str] = ([str(v) for v in batch.column(ID).to_pylist()]
                                      if self.id_field else [int(r) for r in rows])
        result = self.embedder.embed(texts)
        shard = ShardRows(ids, result.vectors, result.tokens, result.original_tokens)
        shard.check(self.embedder.dimensions)
        out = table(shard, self.embedder.dimensions)
        return out.append_column("row", pa.array(rows, type=pa.int64()))


def _read(ray: Any, sources: Sequence[Source], fields: Fields, files: FileRows) -> Any:
    """Ray's reader for the inputs' format, rows numbered, columns TEXT, ROW (and ID)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    # Ray's own readers, built directly so that they can be wrapped (hence the pinned ray).
    from ray.data._internal.datasource.csv_datasource import CSVDatasource
    from ray.data._internal.datasource.json_datasource import ArrowJSONDatasource
    from ray.data._internal.datasource.parquet_datasource import ParquetDatasource
    from ray.data._internal.datasource.text_datasource import TextDatasource

    # Absolute: Ray's workers need not share the driver's working directory.
    paths = [str(s.path.resolve()) for s in sources]
    fmt = sources[0].format
    columns = [c for c in (fields.text, fields.id) if c]
    # Every input is read whatever its suffix (the readers' default filters would skip .ndjson);
    # each row says its file, which its number needs; no folder name becomes a column.
    common: dict[str, Any] = {"file_extensions": None, "include_paths": True,
                              "partitioning": None}
    text = fields.text
    inner: Any
    if fmt == "jsonl":
        # pyarrow's reader, which reads JSON Lines and keeps strings as strings (Ray's pandas
        # reader turns "007" into 7); a block must hold the longest line.
        inner = ArrowJSONDatasource(paths, arrow_json_args={
            "read_options": pajson.ReadOptions(block_size=JSON_BLOCK_BYTES)}, **common)
    elif fmt == "csv":
        inner = CSVDatasource(paths, arrow_csv_args={"convert_options": pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, include_columns=columns)},
            **common)
    elif fmt == "parquet":
        inner = ParquetDatasource(paths, columns=columns, **common)
    else:
        inner = TextDatasource(paths, drop_empty_lines=False, **common)
        text = TextDatasource._COLUMN_NAME
    # One read task per file at most: Ray reads a file in one task whatever the number, and
    # more would only split blocks that are already an actor call's size.
    return ray.data.read_datasource(
        numbered_datasource(inner, files, text, fields.id),
        override_num_blocks=len(paths), num_cpus=IO_TASK_CPUS)


def _unfinished(path: Path) -> bool:
    """Whether `path` is a Parquet file its writer never finished (shorter than a header and a
    footer, or not ending in the footer's magic): what a killed writer leaves. A file that ends
    as Parquet files end, or cannot be read at all, proves nothing of the kind."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < PARQUET_MIN_BYTES:
                return True
            f.seek(-len(PARQUET_MAGIC), os.SEEK_END)
            return f.read(len(PARQUET_MAGIC)) != PARQUET_MAGIC
    except OSError:
        return False


def _done_rows(folder: Path) -> tuple[np.ndarray, list[Path], int]:
    """The distinct row numbers in the whole shards of `folder`, those files, and how many rows
    they hold in all (more than the distinct numbers where a row was written twice). A file a
    killed writer left unfinished is removed; one that fails to read otherwise (an I/O error, a
    file system away for a moment) is kept and the run stops, since its rows are done work."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[np.ndarray] = []
    files: list[Path] = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            rows.append(pq.read_table(path, columns=["row"])["row"].to_numpy())
            files.append(path)
        except (pa.ArrowInvalid, OSError) as exc:
            if not _unfinished(path):
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise CorpusError(f"{path}: cannot be read ({reason}); the shard is kept: run "
                                  "again once it reads, or remove it to embed its rows "
                                  "again") from None
            path.unlink()
    every = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    return np.unique(every), files, len(every)


def start_local_ray(cpus: int | None = None) -> None:
    """A one-node Ray in this process for the job (`--ray` with no address, and the bench)."""
    import ray  # the `ray` extra, hundreds of MB: only a --ray run needs it

    ray.init(num_cpus=cpus, log_to_driver=False, logging_level=logging.ERROR,
             include_dashboard=False, _system_config={
                 "num_workers_soft_limit": (cpus or usable_cpus()) + RAY_SPARE_WORKERS})


def _numbering_error(exc: BaseException) -> NumberingError | None:
    """The NumberingError behind what Ray raised in the driver, if that is what it is: the
    innermost one, since Ray's wrappers of it print as the whole remote traceback."""
    found: NumberingError | None = None
    seen: BaseException | None = exc
    for _ in range(MAX_CAUSES):
        if seen is None:
            break
        if isinstance(seen, NumberingError):
            found = seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return found


def run_ray(args: argparse.Namespace, reporter: Reporter, sources: Sequence[Source],
            fields: Fields, spec: Spec) -> int:
    try:
        import ray  # the `ray` extra, hundreds of MB: only a --ray run needs it
    except ImportError:
        raise CorpusError(RAY_HINT) from None
    manifest = load_manifest(args.model)
    tokenizer = (None if spec.truncate else
                 TextTokenizer(args.model / manifest.tokenizer_file, manifest.max_tokens))
    if any(s.format != sources[0].format for s in sources):
        raise CorpusError("--ray reads every input with one Ray reader: give inputs of one "
                          "format")
    counts = scan(sources, fields, tokenizer, ray_lines=True)
    numbering = FileRows.of([s.path for s in sources], counts)
    total = sum(counts)
    begin(args.out, spec, args.overwrite)
    shards = args.out / RAY_SHARDS_DIR
    done, _, _ = _done_rows(shards)
    if len(done):
        reporter.step(f"resuming: {len(done)} of {total} rows already written")
    if not ray.is_initialized():
        if args.ray:
            ray.init(address=args.ray, log_to_driver=False, logging_level=logging.ERROR)
        else:
            start_local_ray()
    # Ray Data plans from the read tasks (one per file) before their blocks exist, and warns that
    # the pool would get one input; the blocks a file is read into keep every actor busy.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors",
                            category=UserWarning)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not args.quiet
    ctx.target_max_block_size = RAY_BLOCK_BYTES
    if args.quiet:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    actor_cpus = max(1, min(args.ray_actor_cpus, cpus))
    actors = max(1, cpus // actor_cpus)
    if len(done) < total:
        ds = _read(ray, sources, fields, numbering)
        if len(done):
            done_ref = ray.put(done)

            def keep(batch: Any, done_ref: Any = done_ref) -> Any:
                import pyarrow as pa
                import pyarrow.compute as pc

                seen = pa.array(ray.get(done_ref))
                return batch.filter(pc.invert(pc.is_in(batch[ROW], value_set=seen)))

            ds = ds.map_batches(keep, batch_format="pyarrow", num_cpus=IO_TASK_CPUS)
        ds = ds.map_batches(EmbedActor, batch_size=RAY_BATCH_ROWS, batch_format="pyarrow",
                            fn_constructor_args=(str(args.model.resolve()), actor_cpus, fields.id),
                            # Every actor from the start: a pool that starts at one grows only
                            # once Ray sees a queue, after the first windows went to one actor.
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            num_cpus=actor_cpus)
        # Ray's writer names its files per write task; shard_rows rows each, as local, which it
        # gathers from the actors' small blocks.
        try:
            ds.write_parquet(str(shards), min_rows_per_file=spec.shard_rows,
                             max_rows_per_file=spec.shard_rows, concurrency=actors,
                             ray_remote_args={"num_cpus": IO_TASK_CPUS})
        except Exception as exc:
            cause = _numbering_error(exc)
            if cause is None:
                raise
            # Its first line: Ray appends its advice on retries to the message.
            raise CorpusError(f"{str(cause).splitlines()[0]} (the shards written so far are "
                              "numbered by that reading: pass --overwrite once the input is "
                              "fixed)") from None
    written, files, counted = _done_rows(shards)
    if len(written) != total or (len(written) and int(written[-1]) != total - 1):
        raise CorpusError(f"--out {args.out}: the shards hold {len(written)} distinct rows of "
                          f"{total}; run the command again to finish")
    names = [f"{RAY_SHARDS_DIR}/{f.name}" for f in files]
    if counted != total:
        raise CorpusError(f"--out {args.out}: the shards hold {counted} rows for {total} "
                          "inputs (a row written twice); pass --overwrite to start again")
    report(reporter, args.out, write_manifest(args.out, spec, names))
    return 0

