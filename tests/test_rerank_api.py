"""The rerank routes over real HTTP (aiohttp's test client, real onnxruntime sessions): the three
body shapes, sorting and top_n, truncation never silent, the bodies refused by field, the task
of each model, the limits, auth allow-lists, and batching across requests on the one engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core.evalset import load_eval_set
from edge_embed.core.rerank import RerankModel
from edge_embed.service.app import ENGINES, create_app
from edge_embed.service.auth import Authenticator
from edge_embed.service.limits import MAX_RERANK_DOCUMENTS, QueueLimits, RequestLimits
from edge_embed.service.models import Registry
from edge_embed.service.settings import Settings
from tests.fixtures.cross_encoders import RERANK_ALIAS, RERANK_BUNDLE_ID
from tests.fixtures.server import AiohttpClient, Client, Gate, until
from tests.reliability_server import assert_openai_error, metric_sum

KEY = "sk-rerank-all-0123456789"
EMBED_ONLY = "sk-rerank-embedders-only-0123"
QUERY = "reset my router"
DOCS = ["What's the way to restart my wireless router?", "The printer says it's offline.",
        "How do I reset my router?", "The food was cold."]
LONG = " ".join(load_eval_set().texts[:40])

Make = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="module")
def registry(tiny_bundle: Path, rerank_bundle: Path) -> Registry:
    settings = Settings(models=(tiny_bundle, rerank_bundle))
    return Registry.load(settings.models, settings.runtime_options(1))


@pytest.fixture
async def make(registry: Registry, aiohttp_client: AiohttpClient) -> AsyncIterator[Make]:
    gates: list[Gate] = []

    async def build(auth: Authenticator | None = None, **overrides: Any) -> Client:
        settings = replace(Settings(models=tuple(s.model.folder for s in registry)), **overrides)
        return await aiohttp_client(create_app(settings, registry=registry, auth=auth))

    yield build
    for gate in gates:
        gate.open.set()


async def post(client: Client, path: str, body: Any,
               key: str | None = None) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await client.post(path, json=body, headers=headers)
    return resp.status, await resp.json(), resp.headers


def expected(rerank_bundle: Path, docs: list[str]) -> np.ndarray[Any, Any]:
    return RerankModel(rerank_bundle).rerank(QUERY, docs)


async def test_cohere_v1_and_jina_shape(make: Make, rerank_bundle: Path) -> None:
    client = await make()
    body = {"model": RERANK_BUNDLE_ID, "query": QUERY,
            "documents": [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]}
    for path in ("/v1/rerank", "/rerank"):
        status, data, headers = await post(client, path, body)
        assert status == 200, data
        assert data["model"] == RERANK_BUNDLE_ID and data["id"] and data["usage"]["total_tokens"]
        scores = expected(rerank_bundle, DOCS)
        results = data["results"]
        assert [r["index"] for r in results] == sorted(range(4), key=lambda i: -scores[i])
        for r in results:
            assert r["relevance_score"] == pytest.approx(float(scores[r["index"]]), abs=1e-6)
            assert r["document"] == {"text": DOCS[r["index"]]}  # returned by default here
        assert headers["X-Edge-Embed-Truncated"] == "0" and "warnings" not in data
    status, data, _ = await post(client, "/v1/rerank", {**body, "model": RERANK_ALIAS, "top_n": 2,
                                                        "return_documents": False})
    assert status == 200 and len(data["results"]) == 2
    assert all("document" not in r for r in data["results"])


async def test_cohere_v2_shape(make: Make, rerank_bundle: Path) -> None:
    client = await make()
    status, data, _ = await post(client, "/v2/rerank", {
        "model": RERANK_BUNDLE_ID, "query": QUERY, "documents": DOCS, "top_n": 3})
    assert status == 200, data
    assert set(data) == {"id", "results", "meta"}
    assert [set(r) for r in data["results"]] == [{"index", "relevance_score"}] * 3
    scores = [r["relevance_score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert data["meta"]["tokens"]["input_tokens"] > 0


async def test_tei_shape(make: Make, rerank_bundle: Path) -> None:
    client = await make()
    status, data, _ = await post(client, "/rerank", {"query": QUERY, "texts": DOCS,
                                                     "return_text": True})
    assert status == 200, data
    assert isinstance(data, list) and len(data) == 4
    assert [d["score"] for d in data] == sorted((d["score"] for d in data), reverse=True)
    assert all(d["text"] == DOCS[d["index"]] for d in data)
    status, raw, _ = await post(client, "/rerank", {"query": QUERY, "texts": DOCS,
                                                    "raw_scores": True})
    by_index = {d["index"]: d["score"] for d in data}
    for d in raw:  # raw scores are the logits: the sigmoid of each is the score
        assert 1 / (1 + np.exp(-d["score"])) == pytest.approx(by_index[d["index"]], abs=1e-6)
        assert "text" not in d


async def test_score_does_not_depend_on_the_other_documents(make: Make) -> None:
    client = await make()
    alone = []
    for doc in DOCS:
        _, data, _ = await post(client, "/v1/rerank", {"model": RERANK_BUNDLE_ID, "query": QUERY,
                                                       "documents": [doc]})
        alone.append(data["results"][0]["relevance_score"])
    _, data, _ = await post(client, "/v1/rerank", {"model": RERANK_BUNDLE_ID, "query": QUERY,
                                                   "documents": [*DOCS, LONG, "a"]})
    together = {r["index"]: r["relevance_score"] for r in data["results"]}
    assert [together[i] for i in range(len(DOCS))] == alone  # bit for bit, as JSON floats


async def test_truncation_is_reported_and_refused_on_request(make: Make) -> None:
    client = await make()
    body = {"model": RERANK_BUNDLE_ID, "query": QUERY, "documents": [DOCS[0], LONG]}
    status, data, headers = await post(client, "/v1/rerank", body)
    assert status == 200 and headers["X-Edge-Embed-Truncated"] == "1"
    (warning,) = data["warnings"]
    assert warning["index"] == 1 and warning["used_tokens"] == 48
    assert warning["original_tokens"] > 48
    status, data, _ = await post(client, "/v1/rerank", {**body, "truncate": False})
    error = assert_openai_error(data, status, code="context_length_exceeded")
    assert status == 400 and error["param"] == "documents"
    assert "documents[1]" in str(error["message"])
    # Cohere v2's max_tokens_per_doc: a document over it is cut (warned), or refused
    short_doc = "the printer says it is offline again and again and again"
    v2 = {"model": RERANK_BUNDLE_ID, "query": QUERY, "documents": [short_doc],
          "max_tokens_per_doc": 4}
    status, data, headers = await post(client, "/v2/rerank", v2)
    assert status == 200 and headers["X-Edge-Embed-Truncated"] == "1", data
    assert data["warnings"][0]["used_tokens"] < data["warnings"][0]["original_tokens"]
    assert data["meta"]["warnings"]
    status, data, _ = await post(client, "/v2/rerank", {**v2, "truncate": False})
    assert status == 400 and "documents[0]" in data["error"]["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"query": QUERY}, "documents"),
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": QUERY, "documents": ["x"] * 10_000}, "documents"),
    ({"query": "", "documents": DOCS}, "query"),
    ({"query": "   ", "documents": DOCS}, "query"),
    ({"documents": DOCS}, "query"),
    ({"query": QUERY, "documents": ["x", 3]}, "documents"),
    ({"query": QUERY, "documents": [{"title": "x"}]}, "documents"),
    ({"query": QUERY, "documents": [""]}, "documents"),
    ({"query": QUERY, "documents": "x"}, "documents"),
    ({"query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
    ({"query": QUERY, "documents": DOCS, "top_n": 5}, "top_n"),
    ({"query": QUERY, "documents": DOCS, "top_n": "2"}, "top_n"),
    ({"query": QUERY, "documents": DOCS, "return_documents": "yes"}, "return_documents"),
    ({"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
    ({"query": 7, "texts": DOCS}, "query"),
    ({"query": QUERY, "texts": [1.5]}, "texts"),
])
async def test_bad_bodies_name_the_field(make: Make, body: dict[str, Any], param: str) -> None:
    client = await make()
    for path in ("/v1/rerank", "/v2/rerank"):
        full = body if "texts" in body else {"model": RERANK_BUNDLE_ID, **body}
        status, data, _ = await post(client, "/rerank" if "texts" in body else path, full)
        error = assert_openai_error(data, status)
        assert status == 400 and error["param"] == param, (body, data)


async def test_named_limits(make: Make) -> None:
    client = await make(requests=RequestLimits(max_request_tokens=100))
    status, data, _ = await post(client, "/v1/rerank", {
        "model": RERANK_BUNDLE_ID, "query": QUERY, "documents": ["x"] * (MAX_RERANK_DOCUMENTS + 1)})
    assert status == 400 and str(MAX_RERANK_DOCUMENTS) in data["error"]["message"]
    status, data, _ = await post(client, "/v1/rerank", {
        "model": RERANK_BUNDLE_ID, "query": QUERY, "documents": DOCS * 3})
    assert status == 400 and "at most 100" in data["error"]["message"]


async def test_each_model_answers_its_own_task(make: Make) -> None:
    client = await make()
    status, data, _ = await post(client, "/v1/rerank", {"model": "tiny", "query": QUERY,
                                                        "documents": DOCS})
    error = assert_openai_error(data, status, code="wrong_model_task")
    assert status == 400 and error["param"] == "model" and "'embed'" in str(error["message"])
    status, data, _ = await post(client, "/v1/embeddings", {"model": RERANK_BUNDLE_ID,
                                                            "input": "hello"})
    error = assert_openai_error(data, status, code="wrong_model_task")
    assert status == 400 and "'rerank'" in str(error["message"])
    status, data, _ = await post(client, "/v1/embeddings", {"model": "tiny", "input": "hello"})
    assert status == 200
    resp = await client.get("/v1/models")
    tasks = {m["id"]: m["task"] for m in (await resp.json())["data"]}
    assert tasks == {"tiny": "embed", RERANK_BUNDLE_ID: "rerank"}


async def test_keys_allow_lists(make: Make) -> None:
    auth = Authenticator([(KEY, None), (EMBED_ONLY, frozenset({"tiny"}))])
    client = await make(auth=auth)
    body = {"model": RERANK_BUNDLE_ID, "query": QUERY, "documents": DOCS}
    assert (await post(client, "/v1/rerank", body))[0] == 401
    assert (await post(client, "/v1/rerank", body, KEY))[0] == 200
    status, data, _ = await post(client, "/v2/rerank", body, EMBED_ONLY)
    assert status == 404 and data["error"]["message"].endswith("Served: tiny.")
    # TEI's body names no model: the one reranker this key may use, and this one may use none
    status, data, _ = await post(client, "/rerank", {"query": QUERY, "texts": DOCS}, EMBED_ONLY)
    assert status == 400 and data["error"]["param"] == "model"
    assert (await post(client, "/rerank", {"query": QUERY, "texts": DOCS}, KEY))[0] == 200


async def test_pairs_of_several_requests_share_a_run(make: Make) -> None:
    client = await make(concurrent_runs=1)
    engine = client.app[ENGINES][RERANK_BUNDLE_ID]
    gate = Gate(engine)
    engine._run_sync = gate  # type: ignore[method-assign]
    try:
        first = asyncio.ensure_future(post(client, "/v1/rerank", {
            "model": RERANK_BUNDLE_ID, "query": QUERY, "documents": DOCS[:3]}))
        await until(lambda: len(gate.batches) == 1)  # running, held by the gate
        # pairs of one length, so that the engine's cut by cost keeps them in one run
        later = [asyncio.ensure_future(post(client, "/v2/rerank", {
            "model": RERANK_BUNDLE_ID, "query": QUERY, "documents": [DOCS[1]] * 2}))
            for _ in range(2)]
        await until(lambda: engine.queued_inputs == 4)
        gate.open.set()
        assert all(r[0] == 200 for r in await asyncio.gather(first, *later))
    finally:
        gate.open.set()
    assert gate.batches[:2] == [3, 4]  # the two later requests' pairs ran as one batch
    text = await (await client.get("/metrics")).text()
    assert metric_sum(text, "edge_embed_inputs_total", model=RERANK_BUNDLE_ID) >= 7


async def test_openapi_lists_the_rerank_routes(make: Make) -> None:
    client = await make()
    spec = await (await client.get("/openapi.json")).json()
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        op = spec["paths"][path]["post"]
        assert "400" in op["responses"] and "200" in op["responses"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["RerankRequest"]["required"]) == {"model", "query", "documents"}
    assert schemas["RerankResult"]["properties"]["index"]["type"] == "integer"


async def test_admission_refuses_when_the_queue_is_full(make: Make) -> None:
    client = await make(concurrent_runs=1, queue=QueueLimits(max_inputs=4))
    engine = client.app[ENGINES][RERANK_BUNDLE_ID]
    gate = Gate(engine)
    engine._run_sync = gate  # type: ignore[method-assign]
    body = {"model": RERANK_BUNDLE_ID, "query": QUERY, "documents": DOCS[:3]}
    try:
        running = asyncio.ensure_future(post(client, "/v1/rerank", body))
        await until(lambda: len(gate.batches) == 1)
        queued = asyncio.ensure_future(post(client, "/v2/rerank", body))
        await until(lambda: engine.queued_inputs == 3)
        status, data, headers = await post(client, "/v1/rerank", body)
        error = assert_openai_error(data, status, code="server_overloaded")
        assert status == 429 and "Retry-After" in headers, error
        gate.open.set()
        assert [r[0] for r in await asyncio.gather(running, queued)] == [200, 200]
    finally:
        gate.open.set()
