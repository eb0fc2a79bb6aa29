"""The HTTP contract (README, The API) over aiohttp's test client, against the tiny bundles."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core.encoder import BundleModel
from edge_embed.service.limits import RequestLimits
from tests.fixtures.server import MakeClient

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps.",
         "Machine learning models turn sentences into vectors of numbers."]


def vectors(body: dict[str, Any]) -> np.ndarray[Any, Any]:
    rows = []
    for i, item in enumerate(body["data"]):
        assert item["object"] == "embedding" and item["index"] == i
        emb = item["embedding"]
        if isinstance(emb, str):
            rows.append(np.frombuffer(base64.b64decode(emb), dtype="<f4"))
        else:
            rows.append(np.asarray(emb, dtype=np.float32))
    return np.stack(rows)


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> BundleModel:
    return BundleModel(tiny_bundle)


async def post(client: Any, body: Any, path: str = "/v1/embeddings",
               **kw: Any) -> tuple[int, Any, Any]:
    resp = await client.post(path, json=body, **kw)
    data = await resp.json(content_type=None)
    return resp.status, data, resp.headers


async def test_string_input_matches_the_encoder(make_client: MakeClient,
                                                reference: BundleModel) -> None:
    client = await make_client()
    status, body, headers = await post(client, {"model": "tiny", "input": TEXTS[0]})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == "tiny"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 2
    assert headers["X-Edge-Embed-Truncated"] == "0" and "warnings" not in body
    assert body["id"] == headers["X-Request-Id"]
    got = vectors(body)
    assert got.shape == (1, 32)
    np.testing.assert_allclose(got, reference.embed([TEXTS[0]]), atol=1e-5)
    assert abs(float(np.linalg.norm(got[0])) - 1) < 1e-5


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings", "/api/embeddings",
                                  "/api/v2/embeddings"])
async def test_every_path_answers(make_client: MakeClient, path: str) -> None:
    client = await make_client()
    status, body, _ = await post(client, {"model": "tiny", "input": TEXTS}, path)
    assert status == 200, body
    assert len(body["data"]) == 3


async def test_list_of_strings_in_order(make_client: MakeClient, reference: BundleModel) -> None:
    client = await make_client()
    status, body, _ = await post(client, {"model": "tiny", "input": TEXTS})
    assert status == 200
    np.testing.assert_allclose(vectors(body), reference.embed(TEXTS), atol=1e-5)


async def test_token_ids_equal_the_text(make_client: MakeClient, reference: BundleModel) -> None:
    client = await make_client()
    ids = [reference.tokenizer.encode([t])[0].ids[1:-1].tolist() for t in TEXTS]
    s1, one, _ = await post(client, {"model": "tiny", "input": ids[0]})
    s2, many, _ = await post(client, {"model": "tiny", "input": ids})
    s3, text, _ = await post(client, {"model": "tiny", "input": TEXTS})
    assert (s1, s2, s3) == (200, 200, 200)
    np.testing.assert_allclose(vectors(one)[0], vectors(text)[0], atol=1e-5)
    np.testing.assert_allclose(vectors(many), vectors(text), atol=1e-5)
    assert many["usage"] == text["usage"]


@pytest.mark.parametrize("fmt", ["float", None, "base64"])
async def test_encoding_formats_agree(make_client: MakeClient, fmt: str | None) -> None:
    client = await make_client()
    _, plain, _ = await post(client, {"model": "tiny", "input": TEXTS})
    status, body, _ = await post(client, {"model": "tiny", "input": TEXTS,
                                          "encoding_format": fmt})
    assert status == 200
    kinds = {type(d["embedding"]) for d in body["data"]}
    assert kinds == ({str} if fmt == "base64" else {list})
    np.testing.assert_array_equal(vectors(body), vectors(plain))


async def test_alias_and_unknown_fields(make_client: MakeClient) -> None:
    client = await make_client()
    _, a, _ = await post(client, {"model": "tiny", "input": TEXTS[1]})
    status, b, _ = await post(client, {"model": "tiny", "input": TEXTS[1], "user": "u-1",
                                       "metadata": {"k": "v"}, "whatever": [1, {"x": None}]})
    assert status == 200
    np.testing.assert_array_equal(vectors(a), vectors(b))


async def test_extra_body_is_merged(make_client: MakeClient) -> None:
    client = await make_client()
    status, body, _ = await post(client, {"model": "tiny", "input": TEXTS[1],
                                          "extra_body": {"encoding_format": "base64"}})
    assert status == 200
    assert isinstance(body["data"][0]["embedding"], str)
    # ... except the model, which only the top-level field names (tests/test_api_errors.py)
    status, body, _ = await post(client, {"input": TEXTS[1], "extra_body": {"model": "tiny"}})
    assert status == 400 and body["error"]["param"] == "extra_body"


async def test_dimensions_on_a_matryoshka_bundle(make_client: MakeClient) -> None:
    client = await make_client()
    _, full, _ = await post(client, {"model": "tiny-cls", "input": TEXTS})
    status, cut, _ = await post(client, {"model": "tiny-cls", "input": TEXTS, "dimensions": 16,
                                         "encoding_format": "base64"})
    assert status == 200, cut
    got = vectors(cut)
    assert got.shape == (3, 16)
    expect = vectors(full)[:, :16]
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expect, atol=1e-6)
    status, body, _ = await post(client, {"model": "tiny-cls", "input": "x", "dimensions": 33})
    assert status == 400 and body["error"]["param"] == "dimensions"


async def test_dimensions_refused_without_matryoshka(make_client: MakeClient) -> None:
    client = await make_client()
    status, body, _ = await post(client, {"model": "tiny", "input": "x", "dimensions": 16})
    assert status == 400
    assert body["error"]["message"] == "This model does not support specifying dimensions."


async def test_input_type_uses_the_bundle_prompts(make_client: MakeClient,
                                                  reference: BundleModel) -> None:
    assert reference.manifest.prompts.get("query") == "query: "
    client = await make_client()
    status, q, _ = await post(client, {"model": "tiny", "input": TEXTS[0],
                                       "input_type": "query"})
    assert status == 200
    np.testing.assert_allclose(vectors(q), reference.embed(["query: " + TEXTS[0]]), atol=1e-5)
    _, plain, _ = await post(client, {"model": "tiny", "input": TEXTS[0]})
    assert float(vectors(q)[0] @ vectors(plain)[0]) < 0.99999
    status, body, _ = await post(client, {"model": "tiny", "input": "x", "input_type": "code"})
    assert status == 400 and body["error"]["param"] == "input_type"


async def test_truncation_warns_and_counts(make_client: MakeClient,
                                           reference: BundleModel) -> None:
    client = await make_client()
    limit = reference.manifest.max_tokens
    long = " ".join(["fox"] * (limit * 2))
    status, body, headers = await post(client, {"model": "tiny", "input": [TEXTS[0], long]})
    assert status == 200
    assert headers["X-Edge-Embed-Truncated"] == "1"
    (warning,) = body["warnings"]
    assert warning["index"] == 1 and warning["code"] == "input_truncated"
    assert warning["used_tokens"] == limit and warning["original_tokens"] == limit * 2 + 2
    assert body["usage"]["prompt_tokens"] == limit + len(reference.tokenizer.encode(
        [TEXTS[0]])[0].ids)
    metrics = await (await client.get("/metrics")).text()
    assert 'edge_embed_truncated_inputs_total{model="tiny"} 1.0' in metrics


async def test_truncate_false_names_the_input(make_client: MakeClient) -> None:
    client = await make_client()
    long = " ".join(["fox"] * 200)
    status, body, _ = await post(client, {"model": "tiny", "input": ["ok", long],
                                          "truncate": False})
    assert status == 400
    assert "input[1]" in body["error"]["message"] and body["error"]["param"] == "input"
    assert body["error"]["code"] == "context_length_exceeded"


async def test_server_default_no_truncate(make_client: MakeClient) -> None:
    client = await make_client(requests=RequestLimits(truncate=False))
    long = " ".join(["fox"] * 200)
    assert (await post(client, {"model": "tiny", "input": long}))[0] == 400
    assert (await post(client, {"model": "tiny", "input": long, "truncate": True}))[0] == 200


async def test_models_list_and_one(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/v1/models")
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list"
    ids = {m["id"] for m in body["data"]}
    assert ids == {"tiny", "tiny-cls"}
    resp = await client.get("/v1/models/tiny-cls")
    one = await resp.json()
    assert one["object"] == "model" and one["dimensions"] == 32
    assert one["matryoshka_dimensions"] == [32, 16]
    assert one["provider"] == ["CPUExecutionProvider"] and one["provider_fell_back"] is False
    assert one["precision"] == "fp32" and one["max_tokens"] > 0
    resp = await client.get("/v1/models/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"


async def test_probes_info_metrics(make_client: MakeClient) -> None:
    client = await make_client()
    assert (await client.get("/health")).status == 200
    ready = await client.get("/ready")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    info = await (await client.get("/info")).json()
    assert info["limits"]["requests"]["max_inputs"] == 2048
    assert info["threads"]["intra_op_threads"] * info["threads"]["concurrent_runs"] \
        <= info["threads"]["usable_cpus"]
    assert info["providers"]["models"]["tiny"] == ["CPUExecutionProvider"]
    await post(client, {"model": "tiny", "input": TEXTS})
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'edge_embed_inputs_total{model="tiny"} 3.0' in text
    assert "edge_embed_batches_total" in text and "edge_embed_request_seconds_bucket" in text
    assert 'edge_embed_requests_total{route="/v1/embeddings",status="200"} 1.0' in text


async def test_openapi_is_a_valid_document(make_client: MakeClient) -> None:
    from jsonschema_rs import validator_for  # noqa: F401  (schemathesis' validator is present)

    client = await make_client()
    resp = await client.get("/openapi.json")
    spec = await resp.json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/embeddings", "/embeddings", "/api/embeddings", "/api/v2/embeddings",
                 "/v1/models", "/v1/models/{model}", "/health", "/ready", "/info", "/metrics"):
        assert path in spec["paths"], path
    errors = spec["paths"]["/v1/embeddings"]["post"]["responses"]
    assert {"400", "401", "404", "408", "413", "415", "429", "500", "503"} <= set(errors)
    assert "403" not in errors  # a model the key may not use is a 404
    import schemathesis

    schema = schemathesis.openapi.from_dict(spec)
    ops = [op for op in schema.get_all_operations()]
    assert len(ops) == len([m for p in spec["paths"].values() for m in p])
