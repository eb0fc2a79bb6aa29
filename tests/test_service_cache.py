"""The embedding cache: bounded by entries and bytes, TTL, keys, no_cache, hit/miss metrics."""

from __future__ import annotations

import re
import tracemalloc
from typing import Any

import numpy as np
import pytest

from edge_embed.service.cache import CacheKey, EmbeddingCache
from edge_embed.service.limits import CacheLimits
from tests.fixtures.server import MakeClient


def test_lru_by_entries_and_bytes() -> None:
    now = [0.0]
    cache = EmbeddingCache(CacheLimits(entries=2, bytes=10_000, ttl_s=10), clock=lambda: now[0])
    v = np.ones(4, dtype=np.float32)
    cache.put("a", v, 3, 3)
    cache.put("b", v, 3, 3)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", v, 3, 3)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    one = EmbeddingCache(CacheLimits(entries=100, bytes=10_000, ttl_s=10))
    one.put("a", v, 3, 3)
    small = EmbeddingCache(CacheLimits(entries=100, bytes=2 * one.bytes + 10, ttl_s=10))
    for key in "abc":
        small.put(key, v, 3, 3)
    assert len(small) == 2 and small.bytes <= small.max_bytes and small.get("a") is None


def test_ttl_and_override() -> None:
    now = [0.0]
    cache = EmbeddingCache(CacheLimits(entries=10, bytes=10_000, ttl_s=10), clock=lambda: now[0])
    v = np.zeros(2, dtype=np.float32)
    cache.put("a", v, 1, 1)
    cache.put("b", v, 1, 1, ttl=100)
    cache.put("c", v, 1, 1, ttl=0)  # ttl 0: not stored
    now[0] = 11
    assert cache.get("a") is None and cache.get("b") is not None and cache.get("c") is None
    assert len(cache) == 1


def test_a_requests_ttl_is_cut_to_the_servers_maximum() -> None:
    now = [0.0]
    cache = EmbeddingCache(CacheLimits(entries=10, bytes=10_000, ttl_s=10, max_ttl_s=50),
                           clock=lambda: now[0])
    v = np.zeros(2, dtype=np.float32)
    cache.put("long", v, 1, 1, ttl=1e300)
    cache.put("short", v, 1, 1, ttl=20)
    now[0] = 49
    assert cache.get("long") is not None
    now[0] = 51
    assert cache.get("long") is None and cache.get("short") is None


@pytest.mark.parametrize("kind", ["token ids", "text with an emoji", "ascii text"])
def test_bytes_counted_are_the_bytes_held(kind: str) -> None:
    """What the byte bound counts per entry against what tracemalloc sees it take: never less
    (a token-id input was counted at a quarter of its size, a text with one emoji too)."""
    cache = EmbeddingCache(CacheLimits(entries=1_000, bytes=10**10, ttl_s=10))
    vector = np.ones(384, dtype=np.float32)
    entries = 50
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(entries):
            item: str | bytes
            if kind == "token ids":  # as the request path keys them: int64 bytes
                item = np.arange(i, i + 65_536, dtype=np.int64).tobytes()
            elif kind == "text with an emoji":
                item = f"{i} " + "a" * 65_000 + "\N{GRINNING FACE}"
            else:
                item = f"{i} " + "a" * 1_000
            key = CacheKey("m", item, "", 256, None)
            cache.put(key, vector, 1, 2, key_size=key.size())
            del item, key
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_entry, counted = held / entries, cache.bytes / entries
    assert per_entry <= counted <= per_entry * 1.1 + 256, (kind, per_entry, counted)
    assert len(cache) == entries


def test_stored_vector_is_a_copy() -> None:
    cache = EmbeddingCache(CacheLimits(10, 10_000, 10))
    v = np.ones(3, dtype=np.float32)
    cache.put("a", v, 1, 1)
    v[:] = 5
    entry = cache.get("a")
    assert entry is not None and float(entry.vector[0]) == 1.0


def counter(text: str, result: str) -> float:
    m = re.search(rf'edge_embed_cache_total{{result="{result}"}} ([0-9.]+)', text)
    return float(m.group(1)) if m else 0.0


async def metrics(client: Any) -> str:
    return str(await (await client.get("/metrics")).text())


async def test_cache_over_http(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"model": "tiny", "input": ["cats and dogs", "a red car"]}
    first = await (await client.post("/v1/embeddings", json=body)).json()
    text = await metrics(client)
    assert counter(text, "miss") == 2 and counter(text, "hit") == 0
    second = await (await client.post("/v1/embeddings", json=body)).json()
    text = await metrics(client)
    assert counter(text, "hit") == 2
    assert second["data"] == first["data"] and second["usage"] == first["usage"]
    # keyed by dimensions and input type: these are misses, not wrong hits
    await client.post("/v1/embeddings", json={**body, "input_type": "query"})
    text = await metrics(client)
    assert counter(text, "hit") == 2 and counter(text, "miss") == 4
    # no_cache bypasses it entirely (no lookup counted)
    await client.post("/v1/embeddings", json={**body, "cache_control": {"no_cache": True}})
    text = await metrics(client)
    assert counter(text, "hit") == 2 and counter(text, "miss") == 4
    assert "edge_embed_cache_entries 4.0" in text


async def test_cache_keeps_truncation_warnings(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"model": "tiny", "input": ["fox " * 200]}
    a = await client.post("/v1/embeddings", json=body)
    b = await client.post("/v1/embeddings", json=body)
    ja, jb = await a.json(), await b.json()
    assert counter(await metrics(client), "hit") == 1
    assert ja["warnings"] == jb["warnings"] and b.headers["X-Edge-Embed-Truncated"] == "1"


async def test_cache_ttl_zero_request_and_disabled(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"model": "tiny", "input": "x y z", "cache_control": {"ttl": 0}}
    await client.post("/v1/embeddings", json=body)
    await client.post("/v1/embeddings", json=body)
    assert counter(await metrics(client), "hit") == 0
    off = await make_client(cache=CacheLimits(entries=0))
    await off.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    await off.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    text = await metrics(off)
    assert counter(text, "hit") == 0 and counter(text, "miss") == 0
