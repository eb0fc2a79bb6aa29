"""A cache may change how fast an answer comes, never what it is.

Hypothesis drives random sequences of requests (valid and invalid, repeated inputs, every option
of the API) through two apps over the same loaded bundles, one with the embedding cache and one
without, and requires the same status and the same body (apart from its `id`) every time.

Vectors are compared to float32 rounding (`VECTOR_ATOL`), everything else exactly: a cached
vector was computed in another batch than the one the cache-less app runs it in, and the tiny
fp32 bundle's kernels may round the last bit differently for another padded width.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    multiple,
    rule,
    run_state_machine_as_test,
)

from edge_embed.service.app import create_app
from edge_embed.service.limits import CacheLimits
from edge_embed.service.models import Registry
from edge_embed.service.settings import Settings
from tests.fixtures.tiny import TINY_CLS_BUNDLE_ID

VECTOR_ATOL = 1e-5
# Sequences are short, drawn from small pools, so that inputs repeat within a sequence and the
# cache is hit; across examples the cache keeps its entries too, as a server's would.
# 150 sequences of up to 10 requests take ~20 s on 2 cores.
MAX_REQUESTS = 12
EXAMPLES = 200

# Over-long inputs (past the tiny bundles' 64-token limit) are a third of each pool: they are
# where the cache and the checks meet.
TEXTS = ("cats and dogs", "a red car", "naïve café, 東京", "x",
         "The quick brown fox jumps over the lazy dog.",
         "fox " * 100, "dog " * 70 + "at the end")
TOKEN_IDS: tuple[list[int], ...] = ([5, 6, 7], [8], [5] * 100, [9, 10] * 40,
             [999_999],  # outside the vocabulary
             [])
MODELS = ("tiny", TINY_CLS_BUNDLE_ID, "no-such-model")


@dataclass
class Twin:
    loop: asyncio.AbstractEventLoop
    cached: TestClient[Any, Any]
    uncached: TestClient[Any, Any]


@pytest.fixture(scope="module")
def twin(tiny_registry: Registry) -> Iterator[Twin]:
    """Both apps on one event loop of the test's own (Hypothesis calls the test synchronously)."""
    models = tuple(s.model.folder for s in tiny_registry)
    loop = asyncio.new_event_loop()

    async def start(cache: CacheLimits) -> TestClient[Any, Any]:
        app = create_app(Settings(models=models, cache=cache), registry=tiny_registry)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        return client

    clients = [loop.run_until_complete(start(cache))
               for cache in (CacheLimits(), CacheLimits(entries=0))]
    try:
        yield Twin(loop, *clients)
    finally:
        for client in clients:
            loop.run_until_complete(client.close())
        loop.close()


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(None), strategy)


def _input() -> st.SearchStrategy[Any]:
    text = st.sampled_from(TEXTS)
    ids = st.sampled_from(TOKEN_IDS)
    return st.one_of(text, ids.filter(bool), st.lists(text, min_size=1, max_size=4),
                     st.lists(ids, min_size=1, max_size=3),
                     st.sampled_from(["", [], ["a red car", [5, 6]], 42]))


# Each option's values, invalid ones included but drawn less often than valid ones, so that
# most requests get as far as the cache. None: the option is not sent.
OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "encoding_format": st.sampled_from([None, None, "float", "base64", "int8"]),
    "dimensions": st.sampled_from([None, None, None, 16, 32, 48, 0]),
    "truncate": st.sampled_from([None, None, True, False, False, "no"]),
    "input_type": st.sampled_from([None, None, "query", "passage", "title"]),
    "cache_control": st.sampled_from([None, None, None, {"ttl": 600}, {"no_cache": True},
                                      {"ttl": 0}, {"ttl": -1}]),
    "user": _maybe(st.just("someone")),
}


@st.composite
def _request(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(st.sampled_from(MODELS)), "input": draw(_input())}
    for name, strategy in OPTIONS.items():
        value = draw(strategy)
        if value is not None:
            body[name] = value
    return body


def _change() -> st.SearchStrategy[tuple[str, Any]]:
    """One option of a request, changed (None: dropped)."""
    return st.sampled_from(sorted(OPTIONS)).flatmap(
        lambda name: st.tuples(st.just(name), OPTIONS[name]))


def _changed(body: dict[str, Any], change: tuple[str, Any]) -> dict[str, Any]:
    out = dict(body)
    name, value = change
    if value is None:
        out.pop(name, None)
    else:
        out[name] = value
    return out


async def _send(client: TestClient[Any, Any], body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post("/v1/embeddings", json=body)
    data = await resp.json()
    data.pop("id", None)
    return resp.status, data


def _vectors(body: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    out = []
    for item in body["data"]:
        emb = item.pop("embedding")
        out.append(np.frombuffer(base64.b64decode(emb), dtype="<f4") if isinstance(emb, str)
                   else np.asarray(emb, dtype=np.float32))
    return out


def _assert_same(request: dict[str, Any], cached: tuple[int, Any],
                 uncached: tuple[int, Any]) -> None:
    assert cached[0] == uncached[0], (request, cached, uncached)
    a, b = cached[1], uncached[1]
    if cached[0] == 200:
        va, vb = _vectors(a), _vectors(b)
        assert [v.shape for v in va] == [v.shape for v in vb], request
        for x, y in zip(va, vb, strict=True):
            assert np.abs(x - y).max() <= VECTOR_ATOL, (request, np.abs(x - y).max())
    assert a == b, (request, a, b)


def test_cache_never_changes_an_answer(twin: Twin) -> None:
    def both(body: dict[str, Any]) -> int:
        async def run() -> int:
            # The cached app first, so that it is the one whose entries might answer wrongly.
            cached = await _send(twin.cached, body)
            _assert_same(body, cached, await _send(twin.uncached, body))
            return cached[0]
        return twin.loop.run_until_complete(run())

    class Requests(RuleBasedStateMachine):
        """Fresh requests, and answered ones asked again with one option changed: the second
        kind is what finds a cache answering a request that its own checks would refuse."""

        answered = Bundle("answered")

        @rule(target=answered, body=_request())
        def fresh(self, body: dict[str, Any]) -> Any:
            return multiple(body) if both(body) == 200 else multiple()

        @rule(target=answered, base=answered, change=_change())
        def again(self, base: dict[str, Any], change: tuple[str, Any]) -> Any:
            body = _changed(base, change)
            return multiple(body) if both(body) == 200 else multiple()

        @rule(target=answered, base=answered, first=_change(), second=_change())
        def again_twice(self, base: dict[str, Any], first: tuple[str, Any],
                        second: tuple[str, Any]) -> Any:
            body = _changed(_changed(base, first), second)
            return multiple(body) if both(body) == 200 else multiple()

    run_state_machine_as_test(Requests, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=MAX_REQUESTS, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))


def test_truncate_false_on_a_cached_over_long_input_is_refused(twin: Twin) -> None:
    """The fault an outside client found: an over-long input embedded (and cut) once was later
    served from the cache with a warning under `truncate: false`, instead of a 400."""
    text = "fox " * 120 + "cached once"

    async def run() -> tuple[tuple[int, Any], tuple[int, Any]]:
        first = await _send(twin.cached, {"model": "tiny", "input": text})
        second = await _send(twin.cached, {"model": "tiny", "input": text, "truncate": False})
        return first, second

    first, second = twin.loop.run_until_complete(run())
    assert first[0] == 200 and first[1]["warnings"][0]["code"] == "input_truncated"
    assert second[0] == 400, second
    assert second[1]["error"]["code"] == "context_length_exceeded"
    assert second[1]["error"]["param"] == "input"
