"""The engine's mechanisms, made deterministic by holding the model run on a gate (no timing).

Cross-request batching, the bounded queue (429 + Retry-After), deadlines (408, dropped work
never reaches the model), clients that go away, engine faults (500 with the request id, /health
reports it) and a dead batching worker (restarted; past the limit, the engine is marked dead).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from edge_embed.core.batching import RUN_COST_TOKENS, BatchPolicy
from edge_embed.service.app import ENGINES, STATE
from edge_embed.service.engine import Job
from edge_embed.service.limits import CacheLimits, QueueLimits, RequestLimits
from tests.fixtures.server import Gate, MakeClient, until

SENTENCES = [f"sentence number {i} about a cat and a dog" + " fox" * (i % 5) for i in range(16)]


@pytest.fixture
async def gated(make_client: MakeClient) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    gates: list[Gate] = []

    async def make(**settings: Any) -> tuple[Any, Gate]:
        # One batching worker unless a test asks for more: "what queues behind the run in
        # flight" is then exactly what the next run takes.
        settings.setdefault("concurrent_runs", 1)
        client = await make_client(cache=CacheLimits(entries=0), **settings)
        engine = client.app[ENGINES]["tiny"]
        gate = Gate(engine)
        engine._run_sync = gate  # type: ignore[method-assign]
        gates.append(gate)
        return client, gate

    yield make
    for gate in gates:
        gate.open.set()  # never leave an executor thread blocked


async def embed(client: Any, text: Any, **extra: Any) -> tuple[int, Any, Any]:
    resp = await client.post("/v1/embeddings", json={"model": "tiny", "input": text, **extra})
    return resp.status, await resp.json(), resp.headers


def metric(text: str, name: str, **labels: str) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{re.escape(sel)}}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_concurrent_requests_share_a_batch(gated: Any) -> None:
    client, gate = await gated()
    engine = gate.engine
    singles = []
    gate.open.set()
    for s in SENTENCES:
        status, body, _ = await embed(client, s)
        assert status == 200
        singles.append(np.asarray(body["data"][0]["embedding"], dtype=np.float32))
    gate.open.clear()
    gate.batches.clear()
    first = asyncio.ensure_future(embed(client, SENTENCES[0]))
    await until(lambda: engine.running == 1)
    rest = [asyncio.ensure_future(embed(client, s)) for s in SENTENCES[1:]]
    await until(lambda: engine.queued_inputs == 15)
    gate.open.set()
    results = await asyncio.gather(first, *rest)
    # 15 callers' inputs in a few runs: their lengths span 5 tokens, and the cut by cost
    # (RUN_COST_TOKENS) may split them by length, never into one run per caller.
    assert gate.batches[0] == 1 and sum(gate.batches[1:]) == 15
    assert len(gate.batches) - 1 <= 3, gate.batches
    for single, (status, body, _) in zip(singles, results, strict=True):
        assert status == 200
        got = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
        assert float(got @ single) >= 0.9999


async def test_concurrent_runs_run_side_by_side(gated: Any) -> None:
    client, gate = await gated(concurrent_runs=2, threads=1)
    engine = gate.engine
    first = asyncio.ensure_future(embed(client, SENTENCES[0]))
    await until(lambda: engine.running == 1)
    second = asyncio.ensure_future(embed(client, SENTENCES[1]))
    await until(lambda: engine.running == 2)  # the second worker did not wait for the first
    gate.open.set()
    assert (await first)[0] == 200 and (await second)[0] == 200
    assert gate.batches == [1, 1]


async def test_queue_bound_gives_429_with_retry_after(gated: Any) -> None:
    client, gate = await gated(queue=QueueLimits(max_inputs=4))
    engine = gate.engine
    running = asyncio.ensure_future(embed(client, "first"))
    await until(lambda: engine.running == 1)
    queued = asyncio.ensure_future(embed(client, ["a", "b", "c", "d"]))
    await until(lambda: engine.queued_inputs == 4)
    status, body, headers = await embed(client, "one too many")
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "server_overloaded"
    assert int(headers["Retry-After"]) >= 1
    assert (await client.get("/health")).status == 200  # probes answer while overloaded
    gate.open.set()
    assert (await running)[0] == 200 and (await queued)[0] == 200
    assert (await embed(client, "after"))[0] == 200  # serves normally afterwards
    text = await (await client.get("/metrics")).text()
    assert metric(text, "edge_embed_rejected_total", reason="overloaded") == 1


async def test_timed_out_work_never_reaches_the_model(gated: Any) -> None:
    client, gate = await gated(requests=RequestLimits(timeout_s=0.3))
    engine = gate.engine
    running = asyncio.ensure_future(embed(client, "first"))
    await until(lambda: engine.running == 1)
    status, body, _ = await embed(client, ["queued one", "queued two"])
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert engine.queued_inputs == 0
    gate.open.set()
    await running
    await until(lambda: engine.running == 0)
    assert gate.batches == [1]  # the timed-out request's two inputs were never run
    text = await (await client.get("/metrics")).text()
    assert metric(text, "edge_embed_dropped_inputs_total", model="tiny", reason="timeout") == 2


async def test_work_of_a_client_that_went_away_is_dropped(gated: Any) -> None:
    client, gate = await gated()
    engine = gate.engine
    running = asyncio.ensure_future(embed(client, "first"))
    await until(lambda: engine.running == 1)
    gone = asyncio.ensure_future(embed(client, ["x1", "x2", "x3"]))
    await until(lambda: engine.queued_inputs == 3)
    gone.cancel()  # the client closes its connection
    await asyncio.sleep(0.05)
    gate.open.set()
    assert (await running)[0] == 200
    assert (await embed(client, "next"))[0] == 200
    assert gate.batches == [1, 1]  # the three inputs of the departed client never ran
    text = await (await client.get("/metrics")).text()
    dropped = sum(metric(text, "edge_embed_dropped_inputs_total", model="tiny", reason=r)
                  for r in ("client_gone", "cancelled"))
    assert dropped == 3


async def test_engine_fault_fails_only_its_batch(gated: Any) -> None:
    client, gate = await gated()
    gate.fail_next = 1
    gate.open.set()
    status, body, headers = await embed(client, "boom")
    assert status == 500
    rid = headers["X-Request-Id"]
    assert rid in body["error"]["message"] and body["error"]["request_id"] == rid
    assert "Traceback" not in body["error"]["message"]
    assert (await embed(client, "fine"))[0] == 200
    health = await client.get("/health")
    report = await health.json()
    assert health.status == 200 and report["status"] == "degraded"
    assert report["models"]["tiny"]["faults"] == 1
    assert rid in report["models"]["tiny"]["last_fault"]["request_ids"]


async def test_dead_worker_is_restarted(gated: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, gate = await gated()
    gate.open.set()
    engine = gate.engine
    real = engine._form_batches
    calls = [0]

    def broken(window: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("injected worker bug")
        return real(window)

    monkeypatch.setattr(engine, "_form_batches", broken)
    status, body, _ = await embed(client, "first")
    assert status == 500 and body["error"]["code"] == "internal_error"
    await until(lambda: len(engine._workers) == 1)
    assert (await embed(client, "second"))[0] == 200
    report = await (await client.get("/health")).json()
    assert report["models"]["tiny"]["worker_deaths"] == 1 and report["models"]["tiny"]["alive"]


async def test_worker_dying_past_the_limit_marks_the_engine_dead(
        gated: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client, gate = await gated(worker_restarts=0)
    gate.open.set()
    engine = gate.engine

    def broken(window: Any) -> Any:
        raise RuntimeError("injected worker bug")

    monkeypatch.setattr(engine, "_form_batches", broken)
    assert (await embed(client, "first"))[0] == 500
    await until(lambda: engine.dead)
    assert (await client.get("/health")).status == 503
    assert (await client.get("/ready")).status == 503
    status, _body, headers = await embed(client, "refused")
    assert status == 503 and "Retry-After" in headers


async def test_draining_refuses_new_work(make_client: MakeClient) -> None:
    client = await make_client()
    client.app[STATE].draining = True
    assert (await client.get("/ready")).status == 503
    assert (await client.get("/health")).status == 200
    status, body, headers = await embed(client, "late")
    assert status == 503 and body["error"]["code"] == "service_unavailable"
    assert headers["Retry-After"] == "1"


async def test_batches_respect_the_token_budget(gated: Any) -> None:
    client, gate = await gated(batching=BatchPolicy(max_tokens=64, max_inputs=32))
    gate.open.set()
    texts = ["fox " * 20] * 6  # 22 tokens each: two fit under 64 padded tokens
    status, _, _ = await embed(client, texts)
    assert status == 200
    assert gate.batches and max(gate.batches) <= 2 and sum(gate.batches) == 6


def _window(engine: Any, lengths: list[int]) -> list[tuple[Any, int]]:
    """A window of queued rows of the given token lengths, one job holding them all."""
    rows = [np.ones(n, dtype=np.int64) for n in lengths]
    job = Job(rows=rows, dimensions=4, future=asyncio.get_running_loop().create_future())
    return [(job, i) for i in range(len(rows))]


def _shapes(batches: list[list[tuple[Any, int]]]) -> list[list[int]]:
    return [[len(job.rows[row]) for job, row in batch] for batch in batches]


async def test_batches_are_cut_where_padding_costs_more_than_a_run(gated: Any) -> None:
    _, gate = await gated(batching=BatchPolicy(max_tokens=8192, max_inputs=32))
    engine = gate.engine
    # Near lengths share a run: padding them (1+2+3 tokens) is cheaper than three more runs.
    assert _shapes(engine._form_batches(_window(engine, [13, 12, 11, 10]))) == [[10, 11, 12, 13]]
    # A long input among short ones runs apart: padding 8 short rows to 200 would compute
    # 8 x 190 tokens for nothing.
    shapes = _shapes(engine._form_batches(_window(engine, [10] * 8 + [200])))
    assert shapes == [[10] * 8, [200]]
    # The cut is the cheapest: its cost (runs x RUN_COST_TOKENS + padded tokens) is no more
    # than that of one batch or of one run per input.
    lengths = [4, 5, 7, 9, 14, 15, 24, 30, 31, 60, 64, 120, 250, 256]
    shapes = _shapes(engine._form_batches(_window(engine, lengths)))
    assert sorted(n for s in shapes for n in s) == lengths

    def cost(batches: list[list[int]]) -> int:
        return sum(RUN_COST_TOKENS + max(b) * len(b) for b in batches)

    assert cost(shapes) <= min(cost([lengths]), cost([[n] for n in lengths]))
    padding = sum(max(b) * len(b) - sum(b) for b in shapes)
    assert padding / sum(max(b) * len(b) for b in shapes) <= 0.10


async def test_cut_respects_the_input_and_token_budgets(gated: Any) -> None:
    _, gate = await gated(batching=BatchPolicy(max_tokens=100, max_inputs=4))
    engine = gate.engine
    shapes = _shapes(engine._form_batches(_window(engine, [10] * 10 + [60, 60, 300])))
    assert all(len(s) <= 4 for s in shapes)
    assert all(len(s) == 1 or max(s) * len(s) <= 100 for s in shapes)
    assert [300] in shapes  # over the budget alone: it still runs, by itself
    assert sum(len(s) for s in shapes) == 13
