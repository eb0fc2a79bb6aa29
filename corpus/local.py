"""The in-process run: the inputs in order, cut into shards of `shard_rows`, each embedded and
written whole before the next is read.

Shard k holds rows [k x shard_rows, (k+1) x shard_rows) of the inputs taken in the order given,
so a restart knows from the shard files alone which rows are done, skips them without
embedding, and every row lands in exactly one shard. Memory is one shard's texts, tokens and
vectors, whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path

from .embedder import Embedder
from .errors import CorpusError
from .readers import Fields, Source, records
from .shards import ShardRows, shard_name, shard_rows, write_shard

Progress = Callable[[int], None]


def _stream(sources: Sequence[Source], fields: Fields) -> Iterator[tuple[str, str | None]]:
    return chain.from_iterable(records(s, fields) for s in sources)


def run_local(sources: Sequence[Source], fields: Fields, out: Path, embedder: Embedder,
              shard_size: int, total: int, done: frozenset[str],
              progress: Progress) -> list[str]:
    """Writes every missing shard; returns all shard names in order."""
    names: list[str] = []
    stream = _stream(sources, fields)
    for index, first in enumerate(range(0, total, shard_size)):
        rows = min(shard_size, total - first)
        name = shard_name(index)
        names.append(name)
        if name in done:
            if shard_rows(out / name) != rows:
                raise CorpusError(f"--out {out}: {name} holds {shard_rows(out / name)} rows, "
                                  f"expected {rows}; pass --overwrite to start again")
            for _ in range(rows):
                next(stream)
            continue
        texts: list[str] = []
        given: list[str | None] = []
        for _ in range(rows):
            text, ident = next(stream)
            texts.append(text)
            given.append(ident)
        ids: list[int] | list[str] = (list(range(first, first + rows)) if fields.id is None
                                      else [str(i) for i in given])
        result = embedder.embed(texts)
        write_shard(out, index, ShardRows(ids, result.vectors, result.tokens,
                                          result.original_tokens), embedder.dimensions)
        progress(rows)
    return names
