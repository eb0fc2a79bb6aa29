"""Deadlines: 408 past --request-timeout; dropped work never reaches the model.

Two live servers: one with a short request timeout under a large workload (some requests must
time out, with 408 in the OpenAI shape, their queued inputs dropped and counted), and one with a
long timeout where clients hang up while their work is queued (dropped and counted with a reason
that is not the timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.server import Live, live_server
from tests.reliability_server import (
    assert_openai_error,
    metric_labels,
    metric_sum,
    scrape,
    words_text,
)

# Short enough that a queue of the workload below cannot be served in time on any machine,
# long enough that the first requests (a few ms of model time each) are answered.
SHORT_TIMEOUT_S = 0.3
# The workload: 40 requests of 256 inputs of ~60 tokens at once (~600 K tokens): seconds of
# model time for the tiny bundle on 2 cores, far past SHORT_TIMEOUT_S.
REQUESTS = 40
INPUTS_PER_REQUEST = 256
WORDS_PER_INPUT = 40
# Queue bounds above the whole workload, so nothing is refused with 429 and every request is
# either answered or times out.
QUEUE_INPUTS = REQUESTS * INPUTS_PER_REQUEST * 2
QUEUE_TOKENS = 10_000_000
# Clients of the disconnect test give up after this long: their work is queued behind the
# blocking requests by then.
CLIENT_GIVES_UP_S = 0.15
GONE_CLIENTS = 20
BLOCKERS = 12
CLIENT_TIMEOUT_S = 120.0

def text(i: int) -> str:
    return words_text(i, WORDS_PER_INPUT)


def payload(request: int, inputs: int = INPUTS_PER_REQUEST) -> dict[str, object]:
    # Unique texts: no cache hit can shortcut the model (the cache is off as well).
    return {"model": "tiny", "encoding_format": "base64",
            "input": [text(request * inputs + k) for k in range(inputs)]}


def _args(timeout: float) -> list[str]:
    return ["--request-timeout", str(timeout), "--queue-inputs", str(QUEUE_INPUTS),
            "--queue-tokens", str(QUEUE_TOKENS), "--cache-entries", "0"]


@pytest.fixture(scope="module")
def short_server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], _args(SHORT_TIMEOUT_S)) as live:
        yield live


@pytest.fixture(scope="module")
def patient_server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], _args(CLIENT_TIMEOUT_S)) as live:
        yield live


async def _post(session: aiohttp.ClientSession, base: str, i: int) -> tuple[int, object]:
    async with session.post(f"{base}/v1/embeddings", json=payload(i),
                            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)) as r:
        return r.status, await r.json(content_type=None)


async def test_request_timeout_gives_408_and_drops_queued_work(short_server: Live) -> None:
    base = short_server.url
    before = scrape(base)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(_post(session, base, i) for i in range(REQUESTS)))
    after = scrape(base)

    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 408}, f"unexpected statuses {sorted(set(statuses))}"
    assert 408 in statuses, "no request timed out: the workload did not outlast the deadline"
    for status, body in results:
        if status == 408:
            assert_openai_error(body, 408, type_="timeout_error")

    def delta(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    dropped = delta("edge_embed_dropped_inputs_total")
    assert dropped > 0, "timed-out requests' queued inputs were not dropped (or not counted)"
    reasons = metric_labels(after, "edge_embed_dropped_inputs_total", "reason")
    assert any("time" in r for r in reasons), f"no timeout reason among {reasons}"
    # Every input either ran through the model or was dropped before it, never both: the
    # model saw (batch_size sum) + dropped <= what was sent; answered requests' inputs ran.
    ran = delta("edge_embed_batch_size_sum")
    sent = REQUESTS * INPUTS_PER_REQUEST
    answered = statuses.count(200) * INPUTS_PER_REQUEST
    assert ran + dropped <= sent, f"ran {ran} + dropped {dropped} > sent {sent}: double count"
    assert ran >= answered, f"ran {ran} < inputs of answered requests {answered}"
    assert ran < sent, "every input reached the model although requests timed out"


async def _give_up(session: aiohttp.ClientSession, base: str, i: int) -> str:
    try:
        async with session.post(f"{base}/v1/embeddings", json=payload(i, 32),
                                timeout=aiohttp.ClientTimeout(total=CLIENT_GIVES_UP_S)) as r:
            return f"answered {r.status}"
    except TimeoutError:
        return "gave up"


async def test_client_that_goes_away_has_its_work_dropped(patient_server: Live) -> None:
    base = patient_server.url
    before = scrape(base)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0,
                                                                 force_close=True)) as leavers:
        blockers = [asyncio.create_task(_post(session, base, 10_000 + i)) for i in range(BLOCKERS)]
        await asyncio.sleep(0.05)  # the blockers are queued first
        outcomes = await asyncio.gather(*(_give_up(leavers, base, 20_000 + i)
                                          for i in range(GONE_CLIENTS)))
        blocked = await asyncio.gather(*blockers)
    assert all(s == 200 for s, _ in blocked), "the blocking requests themselves failed"
    assert outcomes.count("gave up") > 0, f"no client gave up: {outcomes}"
    # Let the worker reach the abandoned requests' place in the queue (they were behind the
    # blockers, which have all answered by now) and poll until the drop is counted.
    dropped_gone = 0.0
    for _ in range(100):
        after = scrape(base)
        reasons = metric_labels(after, "edge_embed_dropped_inputs_total", "reason")
        before_reasons = metric_labels(before, "edge_embed_dropped_inputs_total", "reason")
        dropped_gone = sum(v - before_reasons.get(r, 0.0) for r, v in reasons.items()
                           if "time" not in r)
        if dropped_gone > 0 and metric_sum(after, "edge_embed_queue_inputs") == 0:
            break
        await asyncio.sleep(0.1)
    reasons = metric_labels(after, "edge_embed_dropped_inputs_total", "reason")
    assert dropped_gone > 0, (
        f"{outcomes.count('gave up')} clients hung up while queued, yet no input was dropped "
        f"with a client-gone reason: {reasons}")
