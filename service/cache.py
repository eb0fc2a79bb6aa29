"""The embedding cache: a bounded LRU (entries and bytes) with a per-entry TTL.

Keyed by (model, input_type, dimensions, input): the same text asked for as a query and as a
passage, or at two Matryoshka cuts, are different vectors. Runs on the event loop only (no
locks): every operation is a dict move, far cheaper than a thread hop.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from .pooling import F32

# Per-entry bookkeeping besides the vector: the key's tuple, the dict slot, this object.
_ENTRY_OVERHEAD = 200


@dataclass(frozen=True)
class Cached:
    vector: F32
    used_tokens: int
    original_tokens: int
    expires: float
    size: int


class EmbeddingCache:
    def __init__(self, max_entries: int, max_bytes: int, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._items: OrderedDict[Hashable, Cached] = OrderedDict()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0 and self.ttl > 0

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
            ttl: float | None = None, key_size: int = 0) -> None:
        life = self.ttl if ttl is None else ttl
        if not self.enabled or life <= 0:
            return
        vec = np.array(vector, dtype=np.float32, copy=True)  # never alias a response buffer
        size = vec.nbytes + key_size + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self._items:
            self._remove(key)
        self._items[key] = Cached(vec, used_tokens, original_tokens, self._clock() + life, size)
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
