"""A loaded bundle: tokenizer + onnxruntime session + pooling, synchronous and thread-safe.

The one place that turns text into vectors. The service's engine batches around it; the
quantize tool's evaluation and the benchmark's in-process baseline call it directly, so all
three measure the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from edge_embed.core.errors import BundleError, UnsupportedGraphInput

from .bundle import Manifest, load_manifest
from .feeds import I64, Feed, PaddingSide, build_feeds, check_inputs
from .pooling import F32, finish, pool_output
from .runtime import ProviderChoice, RuntimeOptions, Sessions, create_sessions

# An over-long text's tokens are counted exactly up to this many times the model's limit, and
# past that only as "at least": counting a 64 K-character text whole cost ~50x what the model
# needs of it (the first 256 tokens of ~1 K characters), in the one tokenizer thread.
COUNT_TOKENS_FACTOR = 4
# ... and up to at least this many, whatever the limit: a small model's (32 tokens) would stop
# counting within a paragraph.
COUNT_TOKENS_MIN = 1024
# The first prefix tokenized is this many characters per token to count: English averages 4-5
# per WordPiece/BPE token, so one pass covers most texts; a text with fewer tokens in it (long
# runs of spaces, one huge word) gets a prefix twice as long, and so on to its end.
PREFIX_CHARS_PER_TOKEN = 6
# Which end of an over-long input is cut: "end" (the default: the start is kept) or "start" (the
# end is kept; the input type's prompt stays, cut from the text after it).
CutSide = Literal["end", "start"]
CUT_SIDES: tuple[CutSide, ...] = ("end", "start")
# Batch size for the convenience `embed` (tools and tests); the service forms its own batches.
EMBED_BATCH = 32


@dataclass(frozen=True)
class Tokenized:
    ids: I64  # with the model's special tokens, already cut to the model's limit
    original_tokens: int  # before the cut, special tokens included
    exact: bool = True  # False: `original_tokens` is a lower bound (TextTokenizer.encode)
    # the tokens' strings, offsets and special flags (`encode(..., detail=True)`, /tokenize)
    encoding: Encoding | None = None

    @property
    def truncated(self) -> bool:
        return self.original_tokens > len(self.ids)


def _first_word_tokens(enc: Encoding) -> int:
    """How many tokens the first word of an encoding (no special tokens) has."""
    words = enc.word_ids
    if not words:
        return 0
    count = 1
    while count < len(words) and words[count] == words[0]:
        count += 1
    return count


def _complete_words(enc: Encoding) -> int:
    """Tokens before the last word of a prefix (the cut may have split that word), specials
    included."""
    words = enc.word_ids
    last = next((j for j in range(len(words) - 1, -1, -1) if words[j] is not None), None)
    if last is None:
        return 0
    start = last
    while start > 0 and words[start - 1] == words[last]:
        start -= 1
    return start


class TextTokenizer:
    """The bundle's `tokenizer.json`, counting what it cuts so that no cut is silent."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._full = Tokenizer.from_file(str(path))
        padding = self._full.padding  # read before it is turned off below
        self._full.no_truncation()
        self._full.no_padding()
        self._cut = Tokenizer.from_file(str(path))
        self._cut.enable_truncation(max_tokens)
        self._cut.no_padding()
        self.vocab_size = self._full.get_vocab_size(with_added_tokens=True)
        self.pad_id = int(padding["pad_id"]) if padding else 0
        # The side the model's own tokenizer pads on (decoders: left); right when it names none.
        self.padding_side: PaddingSide = (
            "left" if padding and str(padding.get("direction", "")).lower() == "left"
            else "right")
        self.prefix, self.suffix = self._special_frame()

    def _special_frame(self) -> tuple[list[int], list[int]]:
        """The special tokens the model wraps around content (BERT: [CLS] … [SEP])."""
        plain = self._full.encode("hello", add_special_tokens=False).ids
        framed = self._full.encode("hello", add_special_tokens=True).ids
        for start in range(len(framed) - len(plain) + 1):
            if framed[start:start + len(plain)] == plain:
                return framed[:start], framed[start + len(plain):]
        return [], []

    def encode(self, texts: Sequence[str], *, detail: bool = False, cut: CutSide = "end",
               keep: int = 0) -> list[Tokenized]:
        """Each text's ids cut to the limit, and its token count, from a bounded prefix.

        A text is tokenized from its start, a prefix at a time (doubling), until the prefix is
        the whole text or holds more than `count_cap` tokens in complete words; so the work is
        bounded by the token limit, not by the text's length, and the count is exact up to that
        bound (a lower bound, `exact=False`, past it). `detail`: keep each text's `Encoding`
        (token strings, offsets). `cut="start"`: an over-long text keeps its first `keep`
        characters (the prompt) and its end (`_keep_end`).
        """
        cap = self.count_cap
        out: list[Tokenized | None] = [None] * len(texts)
        over: dict[int, tuple[str, Encoding]] = {}  # over the limit: the prefix and its encoding
        pending = list(range(len(texts)))
        budget = cap * PREFIX_CHARS_PER_TOKEN
        while pending:
            prefixes = [texts[i][:budget] for i in pending]
            encodings: list[Encoding] = self._full.encode_batch(prefixes)
            later: list[int] = []
            for i, prefix, enc in zip(pending, prefixes, encodings, strict=True):
                whole = len(prefix) == len(texts[i])
                counted = len(enc.ids) if whole else _complete_words(enc) + len(self.suffix)
                if not whole and counted <= cap:
                    later.append(i)  # too few tokens in this prefix to be sure: a longer one
                    continue
                out[i] = Tokenized(np.asarray(enc.ids, dtype=np.int64), counted, exact=whole,
                                   encoding=enc if detail else None)
                if counted > self.max_tokens:
                    over[i] = (prefix, enc)
            pending, budget = later, budget * 2
        if over and cut == "start":
            for i in over:
                done = out[i]
                assert done is not None
                out[i] = Tokenized(self._keep_end(texts[i], keep), done.original_tokens,
                                   exact=done.exact)
        elif over:
            # Re-encoded with the tokenizer's own truncation, which keeps the closing special
            # token where a plain slice would not; only up to the words the cut keeps.
            order = list(over)
            kept = self._cut.encode_batch([self._kept_words(*over[i]) for i in order])
            for i, enc in zip(order, kept, strict=True):
                done = out[i]
                assert done is not None
                out[i] = Tokenized(np.asarray(enc.ids, dtype=np.int64), done.original_tokens,
                                   exact=done.exact, encoding=enc if detail else None)
        return [t for t in out if t is not None]

    def _keep_end(self, text: str, keep: int) -> I64:
        """An over-long text cut at its start: the special tokens, the tokens of its first `keep`
        characters (the prompt) and as many of its last tokens as fit; the same tokens as the
        tokenizer's left truncation of the text after the prompt, from a bounded suffix."""
        head = self._full.encode(text[:keep], add_special_tokens=False).ids if keep else []
        room = max(0, self.max_tokens - len(self.prefix) - len(self.suffix) - len(head))
        body = text[keep:]
        budget = max(room, 1) * PREFIX_CHARS_PER_TOKEN
        tail: list[int] = []
        while room:
            part = body[-budget:]
            enc = self._full.encode(part, add_special_tokens=False)
            # The suffix may start inside a word, whose tokens differ from the whole text's:
            # only the tokens after its first word count, so the suffix must hold `room` of them.
            first = _first_word_tokens(enc) if len(part) < len(body) else 0
            if len(enc.ids) - first >= room or len(part) == len(body):
                tail = enc.ids[-room:]
                break
            budget *= 2
        return np.asarray([*self.prefix, *head, *tail, *self.suffix], dtype=np.int64)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        text: str = self._full.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text

    @property
    def count_cap(self) -> int:
        """Tokens counted exactly: COUNT_TOKENS_FACTOR x the limit, COUNT_TOKENS_MIN at least."""
        return max(self.max_tokens * COUNT_TOKENS_FACTOR, COUNT_TOKENS_MIN)

    def scan_bound(self, chars: int) -> int:
        """At most how many characters `encode` reads of a text of `chars` characters, in the
        common case of a text whose first prefix holds enough tokens (both passes)."""
        first = self.count_cap * PREFIX_CHARS_PER_TOKEN
        return min(chars, first) + min(chars, self.max_tokens * PREFIX_CHARS_PER_TOKEN)

    def _kept_words(self, text: str, enc: Encoding) -> str:
        """The start of `text` up to the end of the word the limit's last token belongs to."""
        last = self.max_tokens - len(self.suffix) - 1  # the last content token kept
        words = enc.word_ids
        if last >= len(words) or words[last] is None:
            return text
        for j in range(last + 1, len(words)):
            if words[j] is not None and words[j] != words[last]:
                return text[:enc.offsets[j][0]]
        return text

    def wrap_ids(self, ids: Sequence[int] | I64, cut: CutSide = "end") -> Tokenized:
        """Token-id input (the model's own vocabulary): add the special tokens, cut to the limit
        (`cut`: at its end, or at its start keeping the end)."""
        original = len(self.prefix) + len(ids) + len(self.suffix)
        room = self.max_tokens - len(self.prefix) - len(self.suffix)
        if original <= self.max_tokens:
            kept = ids
        else:
            kept = ids[len(ids) - room:] if cut == "start" else ids[:room]
        body = np.asarray(kept, dtype=np.int64)
        return Tokenized(np.concatenate([np.asarray(self.prefix, dtype=np.int64), body,
                                         np.asarray(self.suffix, dtype=np.int64)]), original)


class BundleModel:
    """A bundle ready to embed; `run` is safe to call from several threads at once."""

    def __init__(self, folder: Path | str, options: RuntimeOptions | None = None) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = load_manifest(self.folder)
        self.options = options or RuntimeOptions()
        self.tokenizer = TextTokenizer(self.folder / self.manifest.tokenizer_file,
                                       self.manifest.max_tokens)
        self.sessions: Sessions
        self.providers: ProviderChoice
        self.sessions, self.providers = create_sessions(self.folder, self.manifest, self.options)
        self.session: ort.InferenceSession = self.sessions.side
        self._input_names = [i.name for i in self.session.get_inputs()]
        try:
            check_inputs(self._input_names)
        except UnsupportedGraphInput as exc:
            raise BundleError(self.folder / self.manifest.model_file, str(exc)) from None

    def feed(self, batch: Sequence[I64], width: int | None = None) -> Feed:
        """The graph's input arrays for token-id rows (`width`: pad at least to this many)."""
        return build_feeds(batch, self._input_names, pad_id=self.tokenizer.pad_id,
                           side=self.tokenizer.padding_side, width=width)

    def run(self, batch: Sequence[I64], run_options: ort.RunOptions | None = None,
            width: int | None = None, *, lone: bool = False) -> F32:
        """Pooled, not yet normalized vectors [len(batch), dimensions] for token-id rows.

        `lone`: no other run is in flight, so this one may take the session with every thread.
        """
        feed = self.feed(batch, width)
        session = self.sessions.lone if lone else self.sessions.side
        (out,) = session.run([self.manifest.output], feed.arrays, run_options)
        return pool_output(out, feed.mask, self.manifest.output_kind, self.manifest.pooling)

    def finish(self, pooled: F32, dimensions: int | None = None) -> F32:
        return finish(pooled, dimensions=dimensions, normalized=self.manifest.normalize)

    def embed(self, texts: Sequence[str], *, batch_size: int = EMBED_BATCH,
              prompt: str = "") -> F32:
        """Vectors for `texts`, batched by length; for tools, tests and the in-process baseline."""
        tokens = self.tokenizer.encode([prompt + t for t in texts])
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i].ids))
        out = np.empty((len(texts), self.manifest.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self.run([tokens[i].ids for i in rows])
        return self.finish(out)
