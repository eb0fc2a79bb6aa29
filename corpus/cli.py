"""`edge-embed embed INPUT… --model BUNDLE --out DIR`: a corpus to Parquet shards + manifest.

In-process by default (the service's engine code on every usable CPU); `--ray [ADDRESS]` runs
the same job on Ray Data. Resumable: run the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from edge_embed.core.bundle import load_manifest
from edge_embed.core.errors import BundleError
from edge_embed.core.tooling import Reporter, run_cli

from .embedder import Embedder
from .errors import CorpusError, need_corpus_extra
from .local import run_local
from .manifest import MANIFEST_NAME, Spec, bundle_identity, input_identity, report, write_manifest
from .ray_runner import run_ray
from .readers import FORMATS, Fields, Format, Source, detect
from .resume import begin, hold_output, inspect
from .shards import shard_name
from .validate import scan

# Rows per shard: a few MB of vectors at 384 dimensions (10 K x 384 x 4 B = 15 MB), so that an
# interrupted run loses little, memory stays one shard's worth, and a million-row corpus is
# about a hundred files. Every shard is sorted by length and cut as the engine cuts, so a
# larger shard only sorts a little better.
SHARD_ROWS = 10_000


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="JSON Lines, CSV, Parquet or plain text (a document per line); the "
                        "format is taken from the suffix unless --format is given")
    p.add_argument("--model", required=True, type=Path, metavar="BUNDLE",
                   help="the bundle folder to embed with")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="the output folder (shards, run.json, manifest.json)")
    p.add_argument("--format", choices=FORMATS, help="read every input as this format")
    p.add_argument("--text-field", default="text",
                   help="the field or column holding the text (default: text)")
    p.add_argument("--id-field", help="the field or column holding each document's id "
                   "(default: the 0-based row number across the inputs, in the order given)")
    p.add_argument("--no-truncate", action="store_true",
                   help="refuse texts over the model's token limit instead of cutting them "
                        "(checked for every row before anything is written)")
    p.add_argument("--shard-rows", type=int, default=SHARD_ROWS,
                   help=f"rows per output shard (default: {SHARD_ROWS})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace this job's files in --out from a different run")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a cluster's address, or none to start a local Ray")
    p.add_argument("--ray-actor-cpus", type=int, default=1, metavar="N",
                   help="CPUs (and onnxruntime threads) per Ray actor (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    return p


def main(argv: list[str] | None = None, prog: str = "edge-embed embed") -> int:
    args = parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    return run_cli(prog, lambda: embed_command(args, prog))


def embed_command(args: argparse.Namespace, prog: str) -> int:
    need_corpus_extra()
    reporter = Reporter(args.quiet, prog)
    if args.shard_rows < 1:
        raise CorpusError("--shard-rows must be at least 1")
    sources = [detect(path, cast(Format | None, args.format)) for path in args.inputs]
    for s in sources:
        if not s.path.is_file():
            raise CorpusError(f"{s.path}: no such file")
    try:
        manifest = load_manifest(args.model)
    except BundleError as exc:
        raise CorpusError(f"--model: {exc}") from None
    if manifest.task != "embed":
        raise CorpusError(f"--model: {args.model} is a bundle of task '{manifest.task}' (a "
                          "reranker scores pairs, it has no vectors); name an embedding bundle")
    fields = Fields(args.text_field, args.id_field)
    mode = "local" if args.ray is None else "ray"
    try:
        inputs = input_identity(sources)
    except OSError as exc:
        raise CorpusError(f"{exc.filename}: cannot be read ({exc.strerror})") from None
    spec = Spec(bundle_identity(args.model, manifest), inputs, fields,
                truncate=not args.no_truncate, shard_rows=args.shard_rows, mode=mode)
    with hold_output(args.out):
        return _embed(args, reporter, sources, fields, spec)


def _embed(args: argparse.Namespace, reporter: Reporter, sources: list[Source], fields: Fields,
           spec: Spec) -> int:
    """The run, with --out held (resume.hold_output)."""
    state = inspect(args.out, spec, args.overwrite)
    if state.finished:
        reporter.step(f"nothing to do: {args.out} already holds this run's complete output "
                      f"({args.out / MANIFEST_NAME})")
        return 0
    if spec.mode == "ray":
        return run_ray(args, reporter, sources, fields, spec)
    embedder = Embedder(args.model)
    try:
        counts = scan(sources, fields, None if spec.truncate else embedder.model.tokenizer)
        total = sum(counts)
        begin(args.out, spec, args.overwrite)
        done = frozenset() if args.overwrite else state.shards
        initial = sum(min(args.shard_rows, total - i * args.shard_rows)
                      for i in range(-(-total // args.shard_rows))
                      if shard_name(i) in done)
        if done:
            reporter.step(f"resuming: {len(done)} shard(s), {initial} rows already done")
        with reporter.bar(total, initial) as bar:
            names = run_local(sources, fields, args.out, embedder, args.shard_rows, total, done,
                              bar.update)
    finally:
        embedder.close()
    report(reporter, args.out, write_manifest(args.out, spec, names))
    return 0
