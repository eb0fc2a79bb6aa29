"""A rerank bundle: a cross-encoder that scores (query, document) pairs, synchronous and
thread-safe, served by the same engine as the embedders.

A pair is tokenized as sentence-transformers' CrossEncoder tokenizes it (the tokenizer's pair
template, `longest_first` truncation at the bundle's limit: the longer of query and document
gives up a token at a time, so a short query keeps every token and a long document is cut at
its end). Its token type ids (0 on the query's side, 1 on the document's for BERT-style models)
travel inside the row itself, packed above the token ids (`pack`), so that a pair is one int64
row like any text's and the engine batches, pads, admits and meters it unchanged; the model's
`feed` unpacks them for the graph.

numpy and tokenizers only: the serving path imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from edge_embed.core.errors import BundleError

from .bundle import Activation, Manifest, load_manifest
from .encoder import EMBED_BATCH, PREFIX_CHARS_PER_TOKEN, BundleModel, Tokenized
from .feeds import I64, Feed, build_feeds
from .pooling import F32
from .runtime import RuntimeOptions

# Token ids sit below 2**32 in every vocabulary (the largest are ~256 K); a row's token type id
# (0 or 1) is packed above them, so that a pair is a single int64 row.
SEGMENT_SHIFT = 32
_ID_MASK = (1 << SEGMENT_SHIFT) - 1


def pack(ids: Sequence[int], segments: Sequence[int]) -> I64:
    """One row: each token id with its token type id above it."""
    return (np.asarray(ids, dtype=np.int64)
            | (np.asarray(segments, dtype=np.int64) << SEGMENT_SHIFT))


def unpack(row: I64) -> tuple[I64, I64]:
    """(token ids, token type ids) of a packed row (a plain row unpacks to type 0 throughout)."""
    return row & _ID_MASK, row >> SEGMENT_SHIFT


def activate(logits: F32, activation: Activation) -> F32:
    """Relevance scores from the classifier's logits [pairs, 1], as CrossEncoder.predict makes
    them for this model."""
    flat = np.asarray(logits, dtype=np.float32).reshape(-1)
    if activation == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-flat)), dtype=np.float32)
    return flat


class PairTokenizer:
    """The bundle's tokenizer.json on (query, document) pairs, counting what a cut removes.

    Each side is read from a bounded prefix (as TextTokenizer.encode reads a text): the work is
    bounded by the token limit, not by a document's length, and a count is exact when both
    sides were read whole (a lower bound, `exact=False`, otherwise).
    """

    def __init__(self, path: Path, max_tokens: int, count_cap: int) -> None:
        self.max_tokens = max_tokens
        self.count_cap = count_cap
        self._full = Tokenizer.from_file(str(path))
        self._full.no_truncation()
        self._full.no_padding()
        self._cut = Tokenizer.from_file(str(path))
        self._cut.enable_truncation(max_tokens, strategy="longest_first")
        self._cut.no_padding()

    def encode(self, query: str, documents: Sequence[str],
               max_doc_tokens: int | None = None) -> list[Tokenized]:
        """Each pair's ids, cut to the limit, and its token count before any cut.

        `max_doc_tokens` (Cohere's max_tokens_per_doc): a document longer than that many tokens
        is first cut at its end to that many, then the pair as always.
        """
        budget = self.count_cap * PREFIX_CHARS_PER_TOKEN
        q = query[:budget]
        docs = [d[:budget] for d in documents]
        full: list[Encoding] = self._full.encode_batch([(q, d) for d in docs])
        kept = list(docs)
        if max_doc_tokens is not None:
            alone = self._full.encode_batch(docs, add_special_tokens=False)
            for i, enc in enumerate(alone):
                if len(enc.ids) > max_doc_tokens:
                    kept[i] = docs[i][:enc.offsets[max_doc_tokens - 1][1]]
        over = [i for i, enc in enumerate(full)
                if len(enc.ids) > self.max_tokens or kept[i] is not docs[i]]
        cut: dict[int, Encoding] = {}
        if over:
            cut = dict(zip(over, self._cut.encode_batch([(q, kept[i]) for i in over]),
                           strict=True))
        out: list[Tokenized] = []
        for i, enc in enumerate(full):
            used = cut.get(i, enc)
            exact = len(q) == len(query) and len(docs[i]) == len(documents[i])
            out.append(Tokenized(pack(used.ids, used.type_ids), len(enc.ids), exact=exact))
        return out


def check_rerank(manifest: Manifest, folder: Path) -> None:
    if manifest.task != "rerank" or manifest.rerank is None:
        raise BundleError(folder / "bundle.json", f"is a bundle for task '{manifest.task}', "
                          "not a reranker", "task")


class RerankModel(BundleModel):
    """A rerank bundle ready to score pairs; `run` gives the logits [rows, 1] of packed rows."""

    def __init__(self, folder: Path | str, options: RuntimeOptions | None = None) -> None:
        super().__init__(folder, options)
        check_rerank(self.manifest, self.folder)
        assert self.manifest.rerank is not None
        self.activation: Activation = self.manifest.rerank.activation
        self.pairs = PairTokenizer(self.folder / self.manifest.tokenizer_file,
                                   self.manifest.max_tokens, self.tokenizer.count_cap)

    def feed(self, batch: Sequence[I64], width: int | None = None) -> Feed:
        rows = [unpack(row) for row in batch]
        return build_feeds([ids for ids, _ in rows], self._input_names,
                           pad_id=self.tokenizer.pad_id, side=self.tokenizer.padding_side,
                           width=width, segments=[seg for _, seg in rows])

    def scores(self, logits: F32) -> F32:
        return activate(logits, self.activation)

    def rerank(self, query: str, documents: Sequence[str], *,
               batch_size: int = EMBED_BATCH) -> F32:
        """Each document's score for `query`, in document order; for tools, tests, the bench."""
        tokens = self.pairs.encode(query, documents)
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i].ids))
        logits = np.empty((len(tokens), 1), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            logits[rows] = self.run([tokens[i].ids for i in rows])
        return self.scores(logits)


def open_bundle(folder: Path | str, options: RuntimeOptions | None = None) -> BundleModel:
    """The bundle as its task serves it: a RerankModel for a reranker, else a BundleModel."""
    manifest = load_manifest(folder)
    return (RerankModel(folder, options) if manifest.task == "rerank"
            else BundleModel(folder, options))
