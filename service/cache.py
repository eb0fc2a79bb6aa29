"""The embedding cache: a bounded LRU (entries and bytes) with a per-entry TTL.

A cache may change how fast an answer comes, never what it is. So the key (`CacheKey`) holds
everything that changes a vector: the model, the input (text or token ids), the prompt its input
type adds, the token limit it is cut at, and the Matryoshka cut. An entry keeps the input's token
counts beside its vector, so that the request path checks a cached input exactly as a computed
one (an over-long input under `truncate: false` is refused either way). Runs on the event loop
only (no locks): every operation is a dict move, far cheaper than a thread hop.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_embed.core.pooling import F32

from .limits import CacheLimits

# Per-entry bookkeeping besides the key and the vector: the `Cached` object and the ordered
# dict's slot and link (measured with tracemalloc, tests/test_service_cache.py).
_ENTRY_OVERHEAD = 256


class CacheKey(NamedTuple):
    model: str
    item: str | bytes  # the text as sent, or the token ids as sent (int64 bytes)
    prompt: str  # what the input type puts before a text ("" for none)
    max_tokens: int  # where an over-long input is cut
    dimensions: int | None  # the Matryoshka cut asked for; None: the model's full vector
    cut: str = "end"  # which end of an over-long input is cut (core/encoder.py CutSide)

    def size(self) -> int:
        """Bytes the key holds: its tuple, the item and the prompt as Python stores them (a text
        with one emoji takes 4 bytes a character)."""
        return (sys.getsizeof(self) + sys.getsizeof(self.item)
                + (sys.getsizeof(self.prompt) if self.prompt else 0))


@dataclass(frozen=True, slots=True)
class Cached:
    vector: F32
    used_tokens: int
    original_tokens: int
    expires: float
    size: int
    exact: bool = True  # False: original_tokens is a lower bound


class EmbeddingCache:
    def __init__(self, limits: CacheLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.max_entries = limits.entries
        self.max_bytes = limits.bytes
        self.ttl = limits.ttl_s
        self._clock = clock
        self._items: OrderedDict[Hashable, Cached] = OrderedDict()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.limits.enabled

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Cached | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._remove(key)
            return None
        self._items.move_to_end(key)
        return entry

    def put(self, key: Hashable, vector: F32, used_tokens: int, original_tokens: int,
            ttl: float | None = None, key_size: int = 0, exact: bool = True) -> None:
        # A request's ttl is cut to the server's maximum (the default ttl too).
        life = min(self.ttl if ttl is None else ttl, self.limits.max_ttl_s)
        if not self.enabled or life <= 0:
            return
        vec = np.array(vector, dtype=np.float32, copy=True)  # never alias a response buffer
        size = sys.getsizeof(vec) + key_size + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self._items:
            self._remove(key)
        self._items[key] = Cached(vec, used_tokens, original_tokens, self._clock() + life, size,
                                 exact)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._remove(oldest)

    def _remove(self, key: Hashable) -> None:
        entry = self._items.pop(key)
        self.bytes -= entry.size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
