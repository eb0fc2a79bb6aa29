"""Texts to vectors in-process with the service's own engine code, no HTTP server.

The bundle is loaded by core/encoder.py's BundleModel with the service's session options and
thread plan (core/cpus.py: intra-op threads per run, concurrent runs); texts are tokenized
and cut by its TextTokenizer; rows are sorted by length and cut into runs by the engine's own
cut (edge_embed/core/batching.py) under the service's BatchPolicy, each run padded to the width the
engine pads to. The vectors are therefore the service's vectors for the same text and bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_embed.core.batching import BatchPolicy, cut_sorted, padded_width
from edge_embed.core.cpus import plan_threads, usable_cpus
from edge_embed.core.encoder import BundleModel, Tokenized
from edge_embed.core.pooling import F32
from edge_embed.core.runtime import RuntimeOptions


@dataclass(frozen=True)
class Embedded:
    vectors: F32
    tokens: npt.NDArray[np.int32]  # what the model saw
    original_tokens: npt.NDArray[np.int32]  # before the cut


class Embedder:
    """A bundle on `cpus` CPUs laid out as the service lays them out."""

    def __init__(self, bundle: Path, cpus: int | None = None,
                 policy: BatchPolicy | None = None) -> None:
        self.threads, self.runs = plan_threads(cpus or usable_cpus(), None, None)
        self.model = BundleModel(bundle, RuntimeOptions(intra_op_threads=self.threads))
        self.policy = policy or BatchPolicy()
        self.dimensions = self.model.manifest.dimensions
        self.max_tokens = self.model.manifest.max_tokens
        self._pool = ThreadPoolExecutor(self.runs, thread_name_prefix="embed")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        return self.model.tokenizer.encode(texts)

    def embed(self, texts: Sequence[str]) -> Embedded:
        return self.embed_tokens(self.tokenize(texts))

    def embed_tokens(self, tokens: Sequence[Tokenized]) -> Embedded:
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i].ids))
        lengths = [len(tokens[i].ids) for i in order]
        pooled = np.empty((len(tokens), self.dimensions), dtype=np.float32)
        ranges = cut_sorted(lengths, self.policy, self.max_tokens)

        def run(span: tuple[int, int]) -> None:
            rows = order[span[0]:span[1]]
            width = padded_width(lengths[span[1] - 1], len(rows), self.policy, self.max_tokens)
            pooled[rows] = self.model.run([tokens[i].ids for i in rows], None, width)

        # The service runs `runs` batches at once, each on its intra-op threads.
        for future in [self._pool.submit(run, span) for span in ranges]:
            future.result()
        return Embedded(self.model.finish(pooled),
                        np.fromiter((len(t.ids) for t in tokens), np.int32, len(tokens)),
                        np.fromiter((t.original_tokens for t in tokens), np.int32, len(tokens)))
