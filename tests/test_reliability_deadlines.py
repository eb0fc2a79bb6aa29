"""Deadlines: 408 past --request-timeout; dropped work never reaches the model.

Admission by time keeps a request out when the work ahead would not end inside its deadline, so
a 408 is what is left for a request admitted with nothing ahead of it (no wait could make it
faster) whose own work outlasts the timeout. Two live servers: one made slow on purpose (one
input per model run) with a short timeout, where such a request must get 408 in the OpenAI
shape with its queued inputs dropped and counted, while the requests behind it are refused at
once (429); and one with a long timeout where clients hang up while their work is queued
(dropped and counted with a reason that is not the timeout).
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

# The slow server runs one input per model run, so a request's model time is its inputs times
# the fixed cost of a run (~0.2-0.5 ms for the tiny bundle): BIG_INPUTS of them take 6-16 s,
# far past SHORT_TIMEOUT_S, while parsing and tokenizing them takes ~0.2 s on a quiet box. The
# deadline must outlast that on a loaded one (2 s did not at a load average of 9 on 2 cores).
SHORT_TIMEOUT_S = 4.0
BIG_INPUTS = 32_768
BIG_WORDS = 6
# Requests sent while the big one runs: the work ahead of them ends long after their deadline.
BEHIND = 8
# The default tests' workload (the patient server): requests of 256 inputs of ~60 tokens.
INPUTS_PER_REQUEST = 256
WORDS_PER_INPUT = 40
# Queue bounds far above the workloads, so that only time decides admission.
QUEUE_INPUTS = 1_000_000
QUEUE_TOKENS = 100_000_000
# Clients of the disconnect test give up after this long: their work is queued behind the
# blocking requests by then.
CLIENT_GIVES_UP_S = 0.15
GONE_CLIENTS = 20
BLOCKERS = 12
CLIENT_TIMEOUT_S = 120.0

def payload(request: int, inputs: int = INPUTS_PER_REQUEST,
            words: int = WORDS_PER_INPUT) -> dict[str, object]:
    # Unique texts: no cache hit can shortcut the model (the cache is off as well).
    return {"model": "tiny", "encoding_format": "base64",
            "input": [words_text(request * inputs + k, words) for k in range(inputs)]}


def _args(timeout: float) -> list[str]:
    return ["--request-timeout", str(timeout), "--queue-inputs", str(QUEUE_INPUTS),
            "--queue-tokens", str(QUEUE_TOKENS), "--cache-entries", "0"]


@pytest.fixture(scope="module")
def short_server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], [*_args(SHORT_TIMEOUT_S), "--batch-inputs", "1",
                                     "--max-inputs", str(BIG_INPUTS),
                                     "--max-request-tokens", str(QUEUE_TOKENS)]) as live:
        yield live


@pytest.fixture(scope="module")
def patient_server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], _args(CLIENT_TIMEOUT_S)) as live:
        yield live


async def _post(session: aiohttp.ClientSession, base: str, i: int,
                body: dict[str, object] | None = None) -> tuple[int, object]:
    async with session.post(f"{base}/v1/embeddings", json=body or payload(i),
                            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)) as r:
        return r.status, await r.json(content_type=None)


async def test_request_timeout_gives_408_and_drops_queued_work(short_server: Live) -> None:
    base = short_server.url
    before = scrape(base)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        big = asyncio.create_task(_post(session, base, 0, payload(0, BIG_INPUTS, BIG_WORDS)))
        while metric_sum(await asyncio.to_thread(scrape, base), "edge_embed_queue_inputs") == 0:
            assert not big.done(), f"the big request ended before it was queued: {big.result()}"
            await asyncio.sleep(0.01)
        behind = await asyncio.gather(*(_post(session, base, 1 + i) for i in range(BEHIND)))
        status, body = await big
    after = scrape(base)

    assert status == 408, f"the request that outlasts its deadline got {status}: {body}"
    assert_openai_error(body, 408, type_="timeout_error")
    # Behind it: refused at once rather than queued to time out. (One that arrives after the
    # 408 finds the queue empty again and may be answered.)
    statuses = [s for s, _ in behind]
    assert set(statuses) <= {200, 429} and 429 in statuses, f"requests behind it: {statuses}"

    def delta(name: str) -> float:
        return metric_sum(after, name) - metric_sum(before, name)

    dropped = delta("edge_embed_dropped_inputs_total")
    assert dropped > 0, "timed-out requests' queued inputs were not dropped (or not counted)"
    reasons = metric_labels(after, "edge_embed_dropped_inputs_total", "reason")
    assert any("time" in r for r in reasons), f"no timeout reason among {reasons}"
    # Every input either ran through the model or was dropped before it, never both: the
    # model saw (batch_size sum) + dropped <= what was queued, and less than all of it.
    ran = delta("edge_embed_batch_size_sum")
    assert ran + dropped <= BIG_INPUTS, \
        f"ran {ran} + dropped {dropped} > queued {BIG_INPUTS}: double count"
    assert ran < BIG_INPUTS, "every input reached the model although the request timed out"


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
