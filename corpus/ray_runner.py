"""The same job on Ray Data: Ray's reader, an actor pool that loads the bundle once per actor,
Ray's Parquet writer, the same manifest.

Exactly once, and resumable, without a coordinator: every row carries its global row number
(the reader's dataset zipped with `range(rows)`, which pairs rows by position), and every
shard Ray writes carries the row numbers it holds. A restart first drops any file that is not
a whole Parquet file (Ray's writer does not rename into place; a killed writer leaves a file
without its footer, which no reader opens), reads the `row` column of the rest, and filters
those rows out before they reach an actor. The run ends by checking that the shards hold every
row exactly once.

Each actor takes ACTOR_CPUS CPUs and runs onnxruntime on that many threads (the service's
thread plan for that many CPUs); the pool has as many actors as the cluster's CPUs allow, so it
grows with the cluster.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RAY_HINT, CorpusError
from .manifest import Spec
from .readers import CSV_FIELD_LIMIT, Fields, Source
from .resume import begin
from .shards import RAY_SHARDS_DIR, shard_rows
from .validate import scan

# CPUs per actor: the service's measurement on 2 cores (two runs of one thread beat one run of
# two threads by 1.1-1.5x) says one CPU each; --ray-actor-cpus changes it for wider machines.
ACTOR_CPUS = 1
# Rows per map_batches call: the window each actor sorts by length and cuts as the engine does;
# 1024 short rows are ~32 model runs, enough for the sort to pay, small in memory.
RAY_BATCH_ROWS = 1024
# pyarrow's JSON reader parses in blocks that must each hold whole lines: the CSV reader's field
# limit, so that any document the local mode reads, Ray reads too.
JSON_BLOCK_BYTES = CSV_FIELD_LIMIT


class EmbedActor:
    """Loads the bundle once; embeds Arrow batches into the shard columns."""

    def __init__(self, bundle: str, cpus: int, id_field: str | None) -> None:
        from .embedder import Embedder

        self.embedder = Embedder(Path(bundle), cpus=cpus)
        self.id_field = id_field

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from .shards import ShardRows, table

        texts = batch.column("__text").to_pylist()
        rows = batch.column("__row").to_numpy()
        ids: list[int] | list[str] = ([str(v) for v in batch.column("__id").to_pylist()]
                                      if self.id_field else [int(r) for r in rows])
        result = self.embedder.embed(texts)
        shard = ShardRows(ids, result.vectors, result.tokens, result.original_tokens)
        shard.check(self.embedder.dimensions)
        out = table(shard, self.embedder.dimensions)
        return out.append_column("row", pa.array(rows, type=pa.int64()))


def _read(ray: Any, sources: Sequence[Source], fields: Fields) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    # Absolute: Ray's workers need not share the driver's working directory.
    paths = [str(s.path.resolve()) for s in sources]
    fmt = sources[0].format
    if any(s.format != fmt for s in sources):
        raise CorpusError("--ray reads every input with one Ray reader: give inputs of one "
                          "format")
    columns = [c for c in (fields.text, fields.id) if c]
    # Every input is read whatever its suffix (the readers' default filters would skip .ndjson).
    common: dict[str, Any] = {"file_extensions": None}
    if fmt == "jsonl":
        # pyarrow's reader, which reads JSON Lines and keeps strings as strings (with
        # lines=True Ray reads through pandas, which turns "007" into 7); a block must hold
        # the longest line.
        ds = ray.data.read_json(paths, read_options=pajson.ReadOptions(
            block_size=JSON_BLOCK_BYTES), **common)
    elif fmt == "csv":
        ds = ray.data.read_csv(paths, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, include_columns=columns),
            **common)
    elif fmt == "parquet":
        ds = ray.data.read_parquet(paths, columns=columns, **common)
    else:
        ds = ray.data.read_text(paths, **common)
        columns = ["text"]

    def rename(batch: Any) -> Any:
        import pyarrow as pa

        text = batch.column(columns[0]).cast(pa.string())
        cols = {"__text": text}
        if fields.id:
            cols["__id"] = batch.column(fields.id)
        return pa.table(cols)

    return ds.map_batches(rename, batch_format="pyarrow")


def _done_rows(folder: Path) -> tuple[np.ndarray, list[Path]]:
    """Row numbers in the whole shards of a previous attempt; broken files are removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[np.ndarray] = []
    files: list[Path] = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            rows.append(pq.read_table(path, columns=["row"])["row"].to_numpy())
            files.append(path)
        except (pa.ArrowInvalid, OSError):
            path.unlink()
    done = np.unique(np.concatenate(rows)) if rows else np.empty(0, dtype=np.int64)
    return done, files


def run_ray(args: argparse.Namespace, prog: str, sources: Sequence[Source], fields: Fields,
            spec: Spec) -> int:
    try:
        import ray
    except ImportError:
        raise CorpusError(RAY_HINT) from None
    from edge_embed.service.bundle import load_manifest
    from edge_embed.service.encoder import TextTokenizer

    from .cli import report, say, write_manifest

    manifest = load_manifest(args.model)
    tokenizer = (None if spec.truncate else
                 TextTokenizer(args.model / manifest.tokenizer_file, manifest.max_tokens))
    total = sum(scan(sources, fields, tokenizer))
    begin(args.out, spec, args.overwrite)
    shards = args.out / RAY_SHARDS_DIR
    done, _ = _done_rows(shards)
    if len(done):
        say(args.quiet, prog, f"resuming: {len(done)} of {total} rows already written")
    if not ray.is_initialized():
        ray.init(address=args.ray or None, log_to_driver=False, logging_level=logging.ERROR,
                 include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # zip pairs rows by position
    ctx.enable_progress_bars = not args.quiet
    if args.quiet:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    actor_cpus = max(1, min(args.ray_actor_cpus, cpus))
    if len(done) < total:
        ds = _read(ray, sources, fields).zip(
            ray.data.range(total).map_batches(
                lambda b: {"__row": b["id"]}, batch_format="numpy"))
        if len(done):
            done_ref = ray.put(done)

            def keep(batch: Any, done_ref: Any = done_ref) -> Any:
                import pyarrow as pa
                import pyarrow.compute as pc

                seen = pa.array(ray.get(done_ref))
                return batch.filter(pc.invert(pc.is_in(batch["__row"], value_set=seen)))

            ds = ds.map_batches(keep, batch_format="pyarrow")
        ds = ds.map_batches(EmbedActor, batch_size=RAY_BATCH_ROWS, batch_format="pyarrow",
                            fn_constructor_args=(str(args.model.resolve()), actor_cpus, fields.id),
                            compute=ray.data.ActorPoolStrategy(
                                min_size=1, max_size=max(1, cpus // actor_cpus)),
                            num_cpus=actor_cpus)
        # Ray's writer names its files per write task; at most shard_rows rows each, as local.
        ds.write_parquet(str(shards), max_rows_per_file=spec.shard_rows)
    written, files = _done_rows(shards)
    if len(written) != total or (len(written) and int(written[-1]) != total - 1):
        raise CorpusError(f"--out {args.out}: the shards hold {len(written)} distinct rows of "
                          f"{total}; run the command again to finish")
    names = [f"{RAY_SHARDS_DIR}/{f.name}" for f in files]
    counted = sum(shard_rows(f) for f in files)
    if counted != total:
        raise CorpusError(f"--out {args.out}: the shards hold {counted} rows for {total} "
                          "inputs (a row written twice); pass --overwrite to start again")
    report(args.quiet, prog, args.out, write_manifest(args.out, spec, names))
    return 0

