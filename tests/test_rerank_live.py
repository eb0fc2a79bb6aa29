"""One live server with an embedder and a reranker, driven by the clients users already have: the
official `cohere` SDK (v2 and v1 clients), LangChain's Cohere reranker, raw HTTP in
text-embeddings-inference's shape, and the official `openai` SDK for embeddings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import cohere
import numpy as np
import openai
import pytest
from langchain_cohere import CohereRerank
from pydantic import SecretStr

from edge_embed.core.rerank import RerankModel
from tests.fixtures.cross_encoders import RERANK_ALIAS, RERANK_BUNDLE_ID
from tests.fixtures.otlp import EXPORT_DELAY_MS, Receiver, attributes
from tests.fixtures.server import AiohttpClient, Live, live_server
from tests.reliability_server import http

KEY = "sk-live-rerank-0123456789"
QUERY = "reset my router"
DOCS = ["What's the way to restart my wireless router?", "The printer says it's offline.",
        "How do I reset my router?", "The food was cold.", "Café-quality espresso at home."]


@pytest.fixture(scope="module")
def live(tiny_bundle: Path, rerank_bundle: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"{KEY}\n", encoding="utf-8")
    with live_server([tiny_bundle, rerank_bundle], ["--api-keys-file", str(keys)]) as server:
        yield server


@pytest.fixture(scope="module")
def scores(rerank_bundle: Path) -> np.ndarray:
    return RerankModel(rerank_bundle).rerank(QUERY, DOCS)


def ranked(scores: np.ndarray, top_n: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:top_n]


def test_cohere_client_v2_rerank(live: Live, scores: np.ndarray) -> None:
    co = cohere.ClientV2(api_key=KEY, base_url=live.url)
    response = co.rerank(model=RERANK_BUNDLE_ID, query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in response.results] == ranked(scores, 3)
    for r in response.results:
        assert r.relevance_score == pytest.approx(float(scores[r.index]), abs=1e-6)
    with pytest.raises(cohere.errors.BadRequestError):
        co.rerank(model=RERANK_BUNDLE_ID, query=QUERY, documents=DOCS, top_n=0)
    with pytest.raises(cohere.errors.BadRequestError):
        co.rerank(model="tiny", query=QUERY, documents=DOCS)  # an embedder


def test_cohere_client_v1_rerank(live: Live, scores: np.ndarray) -> None:
    co = cohere.Client(api_key=KEY, base_url=live.url)
    response = co.rerank(model=RERANK_ALIAS, query=QUERY, documents=DOCS, top_n=2,
                         return_documents=True)
    assert [r.index for r in response.results] == ranked(scores, 2)
    assert [r.document.text for r in response.results if r.document] == [
        DOCS[i] for i in ranked(scores, 2)]


def test_langchain_cohere_rerank(live: Live, scores: np.ndarray) -> None:
    reranker = CohereRerank(base_url=live.url, cohere_api_key=SecretStr(KEY),
                            model=RERANK_BUNDLE_ID, top_n=2)
    results = reranker.rerank(DOCS, QUERY)
    assert [r["index"] for r in results] == ranked(scores, 2)


def test_tei_body_raw_http(live: Live, scores: np.ndarray) -> None:
    status, headers, body = http("POST", f"{live.url}/rerank",
                                 headers={"Authorization": f"Bearer {KEY}"},
                                 body={"query": QUERY, "texts": DOCS, "return_text": True})
    assert status == 200 and isinstance(body, list), body
    assert [d["index"] for d in body] == ranked(scores, len(DOCS))
    assert all(d["text"] == DOCS[d["index"]] for d in body)
    assert headers["X-Edge-Embed-Truncated"] == "0"


def test_embeddings_beside_the_reranker(live: Live, tiny_bundle: Path) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    response = client.embeddings.create(model="tiny", input=["hello", "world"])
    assert len(response.data) == 2 and len(response.data[0].embedding) > 1
    with pytest.raises(openai.BadRequestError, match="rerank"):
        client.embeddings.create(model=RERANK_BUNDLE_ID, input="hello")
    listed = {m.id: m.model_extra["task"] for m in client.models.list().data
              if m.model_extra is not None}
    assert listed == {"tiny": "embed", RERANK_BUNDLE_ID: "rerank"}


async def test_rerank_request_spans(rerank_bundle: Path, aiohttp_client: AiohttpClient) -> None:
    """A rerank request's trace: the server span and its tokenize, queue and inference spans."""
    receiver = Receiver()
    client = await aiohttp_client(receiver.app)
    live = await asyncio.to_thread(
        lambda: Live([rerank_bundle], ["--otlp-endpoint", str(client.make_url(""))],
                     env={"OTEL_BSP_SCHEDULE_DELAY": EXPORT_DELAY_MS}).start())
    names = {"POST /v2/rerank", "tokenize", "queue", "inference"}
    try:
        status, _, _ = await asyncio.to_thread(
            http, "POST", f"{live.url}/v2/rerank",
            body={"model": RERANK_BUNDLE_ID, "query": QUERY, "documents": DOCS})
        assert status == 200
        await receiver.arrived(names)
    finally:
        await asyncio.to_thread(live.stop)
    by_name = {s.name: s for s in receiver.spans}
    assert names <= set(by_name), sorted(by_name)
    server = attributes(by_name["POST /v2/rerank"])
    assert server["edge_embed.model"] == RERANK_BUNDLE_ID
    assert server["edge_embed.inputs"] == len(DOCS)
    # every pair ran in one of the request's runs (the engine may cut them into several)
    runs = [attributes(s)["edge_embed.batch_size"] for s in receiver.spans
            if s.name == "inference"]
    assert sum(runs) == len(DOCS)
