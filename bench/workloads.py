"""Fixed, seeded workloads: the same request stream for the service, raw onnxruntime and torch.

Text is generated from a fixed word list, sized in tokens with the bundle's own tokenizer (word
token counts are additive under BERT's whitespace/punctuation pre-tokenizer), so "a 250-token
text" means 250 tokens to the model being measured. The orchestrator writes the workloads to a
file once; every worker process reads that file, so every system sees identical inputs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .wordlist import WORDS

SEED = 20261121
NAMES = ("single_c1", "single_c16", "short32", "long8", "mixed", "cached_short32")
# One short sentence: 6-14 words, 10-20 MiniLM tokens, the typical query or chat message.
SHORT_WORDS = (6, 14)
# "Long" texts: ~250 tokens, just under MiniLM's 256-token limit, so none is truncated.
LONG_TOKENS = 250
# Mixed stream: lengths drawn log-normally around a 24-token median with a tail past the model's
# limit (chunked documents and chat messages); sigma 0.9 puts ~5 % of inputs above 100 tokens.
MIXED_MEDIAN_TOKENS = 24
MIXED_SIGMA = 0.9
MIXED_TOKENS = (4, 320)
# Inputs per request in the mixed stream: mostly single queries, some ingestion batches.
MIXED_BATCH_WEIGHTS: dict[int, float] = {1: 0.5, 2: 0.1, 4: 0.15, 8: 0.15, 16: 0.1}
# Pool sizes: large enough that a measurement window rarely repeats a request (the service has
# an embedding cache; requests also ask it to bypass the cache).
POOL_REQUESTS = {"single": 4096, "short32": 128, "long8": 64, "mixed": 512}
QUICK_POOL_REQUESTS = {"single": 256, "short32": 16, "long8": 8, "mixed": 64}
# The cache-hit workload: a fixed corpus of this many 32-sentence requests, cycled with the
# embedding cache on (what a load generator replaying a small corpus measures). As many as the
# untimed warm-up requests before each window, so every timed request is a hit.
CACHE_CORPUS_REQUESTS = 8


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    concurrency: int  # HTTP clients in flight at once
    # The in-process baselines have no cross-request batching: they run this many consecutive
    # requests as one batch (16 for the c=16 single-sentence workload: the engine's ideal).
    inproc_group: int
    requests: tuple[tuple[str, ...], ...]
    # Served from the embedding cache: the client lets the service cache (every other workload
    # asks it not to), and the in-process baselines, which have no cache, do not run it.
    cached: bool = False

    def batches(self) -> list[list[str]]:
        """The in-process baselines' batches, in stream order."""
        out: list[list[str]] = []
        for start in range(0, len(self.requests), self.inproc_group):
            out.append([t for r in self.requests[start:start + self.inproc_group] for t in r])
        return out

    @property
    def inputs(self) -> int:
        return sum(len(r) for r in self.requests)


class TextMaker:
    """Deterministic text of a given token length for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cost = {w: len(tokenizer.encode(w, add_special_tokens=False).ids) for w in WORDS}
        self.dot = len(tokenizer.encode(".", add_special_tokens=False).ids)
        framed = tokenizer.encode("the", add_special_tokens=True).ids
        self.special = len(framed) - self.cost["the"]

    def sentence(self) -> str:
        n = self.rng.randint(*SHORT_WORDS)
        return " ".join(self.rng.choice(WORDS) for _ in range(n)) + "."

    def text(self, tokens: int) -> str:
        """Sentences of 6-14 words, at most `tokens` tokens with the special tokens included."""
        budget = max(tokens - self.special, 2)
        words: list[str] = []
        used = 0
        left = self.rng.randint(*SHORT_WORDS)
        while True:
            word = self.rng.choice(WORDS)
            if used + self.cost[word] + self.dot > budget:
                break
            words.append(word)
            used += self.cost[word]
            left -= 1
            if left == 0:
                words[-1] += "."
                used += self.dot
                left = self.rng.randint(*SHORT_WORDS)
        if not words:
            words = [min(WORDS, key=lambda w: self.cost[w])]
        if not words[-1].endswith("."):
            words[-1] += "."
        return " ".join(words)


def build(tokenizer: Tokenizer, max_tokens: int, *, quick: bool = False,
          seed: int = SEED) -> list[Workload]:
    pools = QUICK_POOL_REQUESTS if quick else POOL_REQUESTS
    make = TextMaker(tokenizer, seed)
    singles = tuple((make.sentence(),) for _ in range(pools["single"]))
    short32 = tuple(tuple(make.sentence() for _ in range(32)) for _ in range(pools["short32"]))
    long_len = min(LONG_TOKENS, max_tokens)
    long8 = tuple(tuple(make.text(long_len) for _ in range(8)) for _ in range(pools["long8"]))
    sizes, weights = zip(*MIXED_BATCH_WEIGHTS.items(), strict=True)
    corpus = tuple(tuple(make.sentence() for _ in range(32)) for _ in range(CACHE_CORPUS_REQUESTS))
    mixed: list[tuple[str, ...]] = []
    for _ in range(pools["mixed"]):
        n = make.rng.choices(sizes, weights)[0]
        lengths = [int(min(max(make.rng.lognormvariate(0, MIXED_SIGMA) * MIXED_MEDIAN_TOKENS,
                                MIXED_TOKENS[0]), MIXED_TOKENS[1])) for _ in range(n)]
        mixed.append(tuple(make.text(t) for t in lengths))
    return [
        Workload("single_c1", "1 short sentence, c=1", 1, 1, singles),
        Workload("single_c16", "1 short sentence, c=16", 16, 16, singles),
        Workload("short32", "32 short sentences/request", 4, 1, short32),
        Workload("long8", f"8 long (~{long_len} tok)/request", 4, 1, long8),
        Workload("mixed", "mixed lengths stream, c=8", 8, 1, tuple(mixed)),
        Workload("cached_short32", f"CACHE HITS: {CACHE_CORPUS_REQUESTS} x 32 short cycled, "
                 "cache on", 4, 1, corpus, cached=True),
    ]


def describe(workloads: Sequence[Workload], tokenizer: Tokenizer) -> dict[str, dict[str, Any]]:
    """Token statistics of each workload, for the report."""
    out: dict[str, dict[str, Any]] = {}
    for w in workloads:
        texts = [t for r in w.requests for t in r]
        lengths = sorted(len(e.ids) for e in tokenizer.encode_batch(texts))
        out[w.name] = {
            "title": w.title,
            "concurrency": w.concurrency,
            "requests": len(w.requests),
            "inputs_per_request": round(len(texts) / len(w.requests), 2),
            "tokens_mean": round(sum(lengths) / len(lengths), 1),
            "tokens_p50": lengths[len(lengths) // 2],
            "tokens_max": lengths[-1],
            "cache": "on (hits)" if w.cached else "off",
        }
    return out


def save(workloads: Sequence[Workload], path: Path) -> None:
    path.write_text(json.dumps([asdict(w) for w in workloads]), encoding="utf-8")


def load(path: Path) -> dict[str, Workload]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Workload] = {}
    for item in data:
        item["requests"] = tuple(tuple(r) for r in item["requests"])
        out[item["name"]] = Workload(**item)
    return out
