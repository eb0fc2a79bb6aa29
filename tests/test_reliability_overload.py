"""Overload: past its bounded queue the server answers 429, never a 5xx.

A live server with a small queue is flooded with far more concurrent requests than the queue
holds. Every answer must be a 200 (complete) or a 429 in the OpenAI shape with `Retry-After`;
`/health` must answer throughout; the queue gauge must never exceed its bound; afterwards the
server must serve normally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.server import Live, live_server
from tests.reliability_server import assert_openai_error, metric_sum, scrape, words_text

# Queue bounds far below the flood: 64 inputs / 2048 tokens is four requests of 16 inputs.
QUEUE_INPUTS = 64
QUEUE_TOKENS = 2048
# The flood: 200 requests at once, 16 inputs each = 3200 inputs, 50x the queue's input bound.
FLOOD_REQUESTS = 200
INPUTS_PER_REQUEST = 16
# Words per input: ~25-40 tiny-tokenizer tokens, under the tiny bundle's 64-token limit.
WORDS_PER_INPUT = 24
# /health polled this often during the flood; each poll must answer within HEALTH_TIMEOUT_S
# (generous: the machine is shared; a server that starves its event loop takes far longer).
HEALTH_POLL_S = 0.02
HEALTH_TIMEOUT_S = 10.0
# Client-side bound on one flood request: a server that hangs fails the test instead of it.
REQUEST_TIMEOUT_S = 60.0

def text(i: int) -> str:
    return words_text(i, WORDS_PER_INPUT)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], [
        "--queue-inputs", str(QUEUE_INPUTS), "--queue-tokens", str(QUEUE_TOKENS),
        "--cache-entries", "0",  # every request reaches the queue
    ]) as live:
        yield live


async def _poll(session: aiohttp.ClientSession, base: str, stop: asyncio.Event,
                health: list[int], queue_peaks: list[float]) -> None:
    while not stop.is_set():
        try:
            async with session.get(f"{base}/health",
                                   timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as r:
                health.append(r.status)
            async with session.get(f"{base}/metrics",
                                   timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as r:
                queue_peaks.append(metric_sum(await r.text(), "edge_embed_queue_inputs"))
        except (TimeoutError, aiohttp.ClientError):
            health.append(0)  # no answer at all
        await asyncio.sleep(HEALTH_POLL_S)


async def _embed(session: aiohttp.ClientSession, base: str,
                 i: int) -> tuple[int, dict[str, str], object]:
    payload = {"model": "tiny", "encoding_format": "float",
               "input": [text(i * INPUTS_PER_REQUEST + k) for k in range(INPUTS_PER_REQUEST)]}
    async with session.post(f"{base}/v1/embeddings", json=payload,
                            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as r:
        body = await r.json(content_type=None)
        return r.status, dict(r.headers), body


async def test_flood_gets_200_or_429_and_health_answers(server: Live) -> None:
    base = server.url
    health: list[int] = []
    queue_peaks: list[float] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
            aiohttp.ClientSession() as probe:
        poller = asyncio.create_task(_poll(probe, base, stop, health, queue_peaks))
        results = await asyncio.gather(*(_embed(session, base, i)
                                         for i in range(FLOOD_REQUESTS)))
        stop.set()
        await poller

    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429}, f"statuses other than 200/429: {sorted(set(statuses))}"
    assert statuses.count(429) > 0, "the flood never filled the queue: nothing was tested"
    assert statuses.count(200) > 0, "the server refused everything"
    for status, headers, body in results:
        if status == 429:
            assert_openai_error(body, 429, type_="rate_limit_error")
            retry = headers.get("Retry-After")
            assert retry is not None and retry.isdigit() and int(retry) >= 1, \
                f"429 without a usable Retry-After: {retry!r}"
        else:
            assert isinstance(body, dict)
            data = body["data"]
            assert len(data) == INPUTS_PER_REQUEST
            assert [d["index"] for d in data] == list(range(INPUTS_PER_REQUEST))
            assert all(len(d["embedding"]) == 32 for d in data)

    assert health, "/health was never polled"
    assert set(health) == {200}, f"/health did not answer 200 throughout: {sorted(set(health))}"
    assert max(queue_peaks) <= QUEUE_INPUTS, \
        f"queue gauge {max(queue_peaks)} above its bound {QUEUE_INPUTS}"

    text_after = scrape(base)
    assert metric_sum(text_after, "edge_embed_rejected_total", reason="overloaded") \
        >= statuses.count(429), "429s not counted as rejected{reason=overloaded}"


async def test_serves_normally_after_the_flood(server: Live) -> None:
    # Runs after the flood (same module-scoped server): nothing left queued, normal answers.
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            payload = {"model": "tiny", "input": [f"after the flood {i}", "a dog in the park"]}
            async with session.post(f"{server.url}/v1/embeddings", json=payload) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
                assert len(body["data"]) == 2
        async with session.get(f"{server.url}/ready") as r:
            assert r.status == 200
    assert metric_sum(scrape(server.url), "edge_embed_queue_inputs") == 0


# The tokenizer is a stage too: a flood of long texts must be refused (429) at admission, not
# queue unbounded in front of the tokenizer thread and time out there (408) after holding
# every body in memory. 60 requests of 512 inputs of 300 words (~1 MB each, seconds of
# tokenizing in all) against a 64-input queue and a 5 s deadline.
TEXT_FLOOD_REQUESTS = 60
TEXT_FLOOD_INPUTS = 512
TEXT_FLOOD_WORDS = 300
TEXT_FLOOD_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def strict_server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], [
        "--queue-inputs", str(QUEUE_INPUTS), "--queue-tokens", str(QUEUE_TOKENS),
        "--cache-entries", "0", "--request-timeout", str(TEXT_FLOOD_TIMEOUT_S)]) as live:
        yield live


async def test_flood_of_long_texts_is_refused_with_429_not_408(strict_server: Live) -> None:
    base = strict_server.url

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        texts = [words_text(i * TEXT_FLOOD_INPUTS + k, TEXT_FLOOD_WORDS)
                 for k in range(TEXT_FLOOD_INPUTS)]
        async with session.post(f"{base}/v1/embeddings", json={"model": "tiny", "input": texts},
                                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        statuses = await asyncio.gather(*(one(session, i) for i in range(TEXT_FLOOD_REQUESTS)))
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    assert set(statuses) <= {200, 429}, (
        f"a flood past the queue got {counts}: overload must be refused with 429 at admission, "
        "not left to time out (408) in front of the tokenizer")
    assert 429 in statuses, f"nothing was refused: {counts}"
