"""/openapi.json against the app itself: every route the app serves is declared, nothing is
declared that it does not serve, and what depends on the caller (its models, the page) is built
per caller. What the server does with the requests the document allows is
tests/test_fuzz_schema.py's (schemathesis against a live server)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aiohttp import web

from edge_embed.service.settings import parse_settings
from tests.fixtures.server import Client, MakeClient

KEY_ALL = "sk-openapi-all-0123456789"
KEY_TINY = "sk-openapi-tiny-0123456789"


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route; HEAD is aiohttp's own for each GET, answered as
    the GET is, so the document declares the GET alone."""
    out = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD":
            out.add((route.method, info))
    return out


def declared_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item}


async def spec_of(client: Client, key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await client.get("/openapi.json", headers=headers)
    assert resp.status == 200
    spec: dict[str, Any] = await resp.json()
    return spec


@pytest.mark.parametrize("docs", [True, False], ids=["docs", "no-docs"])
async def test_every_route_is_declared_and_nothing_else(make_client: MakeClient,
                                                        docs: bool) -> None:
    client = await make_client(docs=docs)
    spec = await spec_of(client)
    served, declared = served_routes(client.app), declared_routes(spec)
    assert served == declared, (f"served, not declared: {sorted(served - declared)}; "
                                f"declared, not served: {sorted(declared - served)}")
    assert (("GET", "/docs") in served) is docs
    resp = await client.get("/docs")
    assert resp.status == (200 if docs else 404)


def test_no_docs_by_flag_or_environment() -> None:
    assert parse_settings(["--model", "m"], environ={}).docs
    assert not parse_settings(["--model", "m", "--no-docs"], environ={}).docs
    assert not parse_settings(["--model", "m"], environ={"EDGE_EMBED_DOCS": "false"}).docs


async def test_the_document_names_the_callers_models(make_client: MakeClient) -> None:
    client = await make_client(api_keys_file=None, api_keys=(KEY_ALL,))
    spec = await spec_of(client, KEY_ALL)
    schemas = spec["components"]["schemas"]
    request = schemas["EmbeddingRequest"]
    assert request["discriminator"]["mapping"].keys() == {"tiny", "tiny-cls"}
    tiny, cls = schemas["EmbeddingRequest.tiny"], schemas["EmbeddingRequest.tiny-cls"]
    assert tiny["properties"]["model"]["enum"] == ["tiny"]
    # token ids: integers below each model's vocabulary size
    ids = tiny["properties"]["input"]["oneOf"][2]["items"]
    assert ids == {"type": "integer", "minimum": 0, "maximum": 380}
    # dimensions: only tiny-cls has trained cuts
    assert tiny["properties"]["dimensions"]["enum"] == [None]
    assert cls["properties"]["dimensions"]["maximum"] == 32
    assert set(tiny["properties"]["input_type"]["enum"]) == {"query", "passage", None}
    # the other routes' bodies likewise, `model` required where the caller may use several
    vllm = schemas["TokenizeVLLM.tiny"]
    assert vllm["properties"]["model"]["enum"] == ["tiny"] and "model" in vllm["required"]
    decode = schemas["DecodeTEI.tiny-cls"]["properties"]["ids"]["oneOf"][0]
    assert decode["items"]["maximum"] == 380
    assert schemas["CohereEmbedRequest.tiny"]["properties"]["output_dimension"]["enum"] == [None]
    # the probes and the page are open; the rest needs the key
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert spec["paths"]["/docs"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/v1/embeddings"]["post"]


async def test_a_key_sees_its_own_models_only(make_client: MakeClient, tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_TINY} tiny\n")
    keys.chmod(0o600)
    client = await make_client(api_keys_file=keys)
    spec = await spec_of(client, KEY_TINY)
    schemas = spec["components"]["schemas"]
    assert "EmbeddingRequest.tiny-cls" not in schemas and "discriminator" not in schemas[
        "EmbeddingRequest"]
    assert schemas["EmbeddingRequest"]["properties"]["model"]["enum"] == ["tiny"]
    param = spec["paths"]["/v1/models/{model}"]["get"]["parameters"][0]
    assert param["schema"]["enum"] == ["tiny"]
    # one model to this key: /tokenize may leave it out
    vllm = schemas["TokenizeVLLM"]
    assert vllm["properties"]["model"]["enum"] == ["tiny", None] and "model" not in vllm[
        "required"]


async def test_the_page_needs_no_key_but_the_document_does(make_client: MakeClient) -> None:
    client = await make_client(api_keys=(KEY_ALL,))
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "edge-embed-docs.js"):
        assert f"docs/{name}" in html
        resp = await client.get(f"/docs/{name}")
        assert resp.status == 200, name
        assert len(await resp.read()) > 1000
    # another file is any unknown path: 401 without the key, 404 with it
    assert (await client.get("/docs/nope.js")).status == 401
    nope = await client.get("/docs/nope.js", headers={"Authorization": f"Bearer {KEY_ALL}"})
    assert nope.status == 404
    assert (await client.get("/openapi.json")).status == 401


async def embed(client: Client, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post("/v1/embeddings", json=body)
    return resp.status, await resp.json()


async def test_whole_numbers_written_as_floats_are_integers(make_client: MakeClient) -> None:
    # JSON Schema's integer, which the document declares, counts 7.0 as 7.
    client = await make_client()
    s1, ints = await embed(client, {"model": "tiny", "input": [7, 12, 40]})
    s2, floats = await embed(client, {"model": "tiny", "input": [7.0, 12, 40.0]})
    assert (s1, s2) == (200, 200), floats
    np.testing.assert_array_equal(ints["data"][0]["embedding"], floats["data"][0]["embedding"])
    status, body = await embed(client, {"model": "tiny", "input": [7, 7.5]})
    assert status == 400 and "integer" in body["error"]["message"]
    status, body = await embed(client, {"model": "tiny-cls", "input": "x", "dimensions": 16.0})
    assert status == 200 and len(body["data"][0]["embedding"]) == 16
    texts = []
    for ids in ([7, 12, 40], [7.0, 12, 40.0]):
        resp = await client.post("/detokenize", json={"model": "tiny", "tokens": ids})
        assert resp.status == 200
        texts.append((await resp.json())["prompt"])
    assert texts[0] == texts[1]
    resp = await client.post("/v2/embed", json={"model": "tiny-cls", "texts": ["x"],
                                                "output_dimension": 16.0})
    assert resp.status == 200 and len((await resp.json())["embeddings"]["float"][0]) == 16


async def test_a_field_hidden_by_extra_body_is_checked_too(make_client: MakeClient) -> None:
    client = await make_client()
    status, body = await embed(client, {"model": "tiny", "input": "x", "user": 5,
                                        "extra_body": {"user": "u"}})
    assert status == 400 and body["error"]["param"] == "user"
    status, body = await embed(client, {"model": "tiny", "input": 5,
                                        "extra_body": {"input": "x"}})
    assert status == 400 and body["error"]["param"] == "input"
    # input in extra_body alone, as the document allows
    status, body = await embed(client, {"model": "tiny", "extra_body": {"input": "x"}})
    assert status == 200, body
