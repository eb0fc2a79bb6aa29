"""The up-front pass: every row of every input checked before the first shard is written.

Validation is up-front rather than per shard, so that a bad row anywhere (a missing field, a bad
JSON line, an empty document, an undecodable line, and under --no-truncate an over-long text)
stops the run before it writes anything, instead of after it has written the shards before the
bad row. The pass reads each input once more than embedding does; parsing costs microseconds a
row against the model's milliseconds. It also counts the rows, which the progress bar's ETA and
the resume check need.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_embed.core.encoder import TextTokenizer

from .errors import CorpusError, at
from .readers import Fields, Source, records, row_unit

# Texts tokenized at a time when --no-truncate checks lengths up front.
CHECK_CHUNK = 4096


def scan(sources: Sequence[Source], fields: Fields,
         tokenizer: TextTokenizer | None = None, ray_lines: bool = False) -> list[int]:
    """Rows per source; raises CorpusError at the first bad row (file and row named).

    `ray_lines`: plain text is read by Ray's text reader, which splits lines with Python's
    `str.splitlines` (at U+2028, form feeds, lone carriage returns and the like too), where a
    line here ends at a newline only; a line that Ray would split is refused here, before
    anything is written, since its rows would no longer be the ones counted."""
    counts: list[int] = []
    for source in sources:
        n = 0
        chunk: list[str] = []
        for text, _ in records(source, fields):
            n += 1
            if ray_lines and source.format == "text" and len(text.splitlines()) != 1:
                breaks = sorted({f"U+{ord(c):04X}" for c in text if len(f"a{c}b".splitlines()) > 1})
                raise at(source.path, n, f"holds {', '.join(breaks)}, where Ray's text reader "
                         "starts a new line; run without --ray, or give the text as JSON Lines",
                         row_unit(source.format))
            if tokenizer is not None:
                chunk.append(text)
                if len(chunk) == CHECK_CHUNK:
                    _check_lengths(source, chunk, n - len(chunk), tokenizer)
                    chunk = []
        if tokenizer is not None and chunk:
            _check_lengths(source, chunk, n - len(chunk), tokenizer)
        counts.append(n)
    if not sum(counts):
        raise CorpusError(f"{', '.join(str(s.path) for s in sources)}: no documents to embed")
    return counts


def _check_lengths(source: Source, texts: list[str], first: int,
                   tokenizer: TextTokenizer) -> None:
    limit = tokenizer.max_tokens
    for i, tok in enumerate(tokenizer.encode(texts)):
        if tok.truncated:
            raise at(source.path, first + i + 1,
                     f"has {tok.original_tokens} tokens, over the model's limit of {limit}; "
                     "shorten it, or drop --no-truncate to have it cut", row_unit(source.format))
