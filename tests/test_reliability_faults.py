"""Engine faults, in process through aiohttp's test client.

- An onnxruntime run that raises fails only the requests in that batch, with a 500 carrying a
  request id that the log carries too; the other requests go on; /health reports the fault.
- A batching worker that dies is restarted; past --worker-restarts the engine is marked dead and
  the server stops accepting work it cannot do (/health and /ready 503, requests 503).

`BundleModel.run` (or the worker's batching step) is patched to raise; everything else is the
real app on the real tiny bundles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from edge_embed.core.batching import BatchPolicy
from edge_embed.core.encoder import BundleModel
from edge_embed.service.engine import ModelEngine
from edge_embed.service.limits import CacheLimits
from tests.fixtures.server import MakeClient
from tests.reliability_server import assert_openai_error

# A token-id input of 5 ids is 7 tokens with [CLS] and [SEP]: the poisoned run raises for any
# batch holding a row of exactly this length, and only for those.
POISON_IDS = [100, 101, 102, 103, 104]
POISON_LEN = len(POISON_IDS) + 2
GOOD_REQUESTS = 12


@pytest.fixture
def poisoned_run(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch BundleModel.run to raise on batches with a POISON_LEN row; returns the fault log."""
    real = BundleModel.run
    faults: list[int] = []

    def run(self: BundleModel, batch: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        if any(len(row) == POISON_LEN for row in batch):
            faults.append(len(batch))
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected fault")
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(BundleModel, "run", run)
    return faults


async def test_a_failing_run_fails_its_batch_only(make_client: MakeClient, poisoned_run: list[int],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # One input per batch, so that "its batch" is exactly the poisoned request.
    client = await make_client(batching=BatchPolicy(max_inputs=1), cache=CacheLimits(entries=0))
    good = [{"model": "tiny", "input": f"the cat sleeps on the warm windowsill {i}"}
            for i in range(GOOD_REQUESTS)]
    with caplog.at_level(logging.ERROR):
        responses = await asyncio.gather(
            *(client.post("/v1/embeddings", json=body) for body in good[:6]),
            client.post("/v1/embeddings", json={"model": "tiny", "input": POISON_IDS}),
            *(client.post("/v1/embeddings", json=body) for body in good[6:]))
        bodies = [await r.json() for r in responses]
    assert poisoned_run, "the poisoned run was never called"

    poisoned, poisoned_body = responses[6], bodies[6]
    assert poisoned.status == 500, poisoned_body
    error = assert_openai_error(poisoned_body, 500, type_="server_error")
    request_id = poisoned.headers.get("X-Request-Id")
    assert request_id, "a 500 without a request id header"
    assert request_id in str(error["message"]) or error.get("request_id") == request_id, error
    assert "injected fault" not in str(poisoned_body), "the fault's text reached the client"
    logged = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert request_id in logged, "the 500's request id is not in the log"

    for i, (response, body) in enumerate(zip(responses, bodies, strict=True)):
        if i != 6:
            assert response.status == 200, (i, body)
            assert len(body["data"][0]["embedding"]) == 32

    health = await client.get("/health")
    report = await health.json()
    assert health.status == 200, report  # a failed run is not a dead engine
    assert report["status"] != "ok", f"/health does not report the fault: {report}"
    tiny = report["models"]["tiny"]
    assert tiny["faults"] == 1, tiny
    assert request_id in str(tiny["last_fault"]), tiny

    metrics = await (await client.get("/metrics")).text()
    assert 'edge_embed_engine_faults_total{model="tiny"} 1.0' in metrics

    # And the engine goes on: the next requests, poisoned or not, are served as before.
    after = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["a", "b c"]})
    assert after.status == 200, await after.text()


async def test_a_dead_worker_is_restarted(make_client: MakeClient,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    client = await make_client(cache=CacheLimits(entries=0), worker_restarts=5)
    real = ModelEngine._form_batches
    calls = {"n": 0}

    def dies_once(self: ModelEngine, window: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("injected: the batching worker dies")
        return real(self, window)

    monkeypatch.setattr(ModelEngine, "_form_batches", dies_once)
    first = await client.post("/v1/embeddings", json={"model": "tiny", "input": "first"})
    body = await first.json()
    assert first.status == 500, body  # its job was held by the dying worker: failed, not hung
    assert_openai_error(body, 500)
    second = await client.post("/v1/embeddings", json={"model": "tiny", "input": "second"})
    assert second.status == 200, await second.text()
    report = await (await client.get("/health")).json()
    assert report["models"]["tiny"]["worker_deaths"] == 1, report
    assert report["models"]["tiny"]["alive"] is True, report


async def test_a_dead_engine_refuses_work_and_fails_its_probes(
        make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await make_client(cache=CacheLimits(entries=0), worker_restarts=0)

    real = ModelEngine._form_batches

    def always_dies(self: ModelEngine, window: Any) -> Any:
        if self.name == "tiny":  # only this model's worker; tiny-cls must stay healthy
            raise MemoryError("injected: the batching worker dies")
        return real(self, window)

    monkeypatch.setattr(ModelEngine, "_form_batches", always_dies)
    first = await client.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    assert first.status == 500, await first.text()
    await asyncio.sleep(0)  # the worker's done-callback runs on the next loop turn
    health = await client.get("/health")
    assert health.status == 503, await health.text()
    ready = await client.get("/ready")
    assert ready.status == 503, await ready.text()
    refused = await client.post("/v1/embeddings", json={"model": "tiny", "input": "y"})
    assert refused.status == 503, await refused.text()
    assert_openai_error(await refused.json(), 503)
    # The other model's engine is unaffected.
    other = await client.post("/v1/embeddings", json={"model": "tiny-cls", "input": "y"})
    assert other.status == 200, await other.text()
    assert np.isfinite((await other.json())["data"][0]["embedding"]).all()
