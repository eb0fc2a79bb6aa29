"""Every client mistake -> the right 4xx in the OpenAI error shape, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from edge_embed.service.limits import RequestLimits
from tests.fixtures.server import MakeClient


def assert_error(status: int, body: Any, expect_status: int, param: str | None = None,
                 code: str | None = None, contains: str = "") -> None:
    assert status == expect_status, body
    assert set(body) == {"error"}
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    assert contains in err["message"], err


async def raw(client: Any, data: bytes, path: str = "/v1/embeddings",
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await client.post(path, data=data,
                             headers={"Content-Type": "application/json"} if headers is None
                             else headers)
    return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize(("body", "param", "contains"), [
    ({"input": "x"}, "model", "'model' is required"),
    ({"model": "tiny"}, "input", "'input' is required"),
    ({"model": "tiny", "input": ""}, "input", "empty string"),
    ({"model": "tiny", "input": []}, "input", "empty array"),
    ({"model": "tiny", "input": ["a", ""]}, "input", "input[1]"),
    ({"model": "tiny", "input": [[]]}, "input", "input[0]"),
    ({"model": "tiny", "input": ["a", [1, 2]]}, "input", "input[1]"),
    ({"model": "tiny", "input": [[1, 2], "a"]}, "input", "input[1]"),
    ({"model": "tiny", "input": [1, "a"]}, "input", "input[1]"),
    ({"model": "tiny", "input": [[1, 2.5]]}, "input", "input[0][1]"),
    ({"model": "tiny", "input": [[1, True]]}, "input", "input[0][1]"),
    ({"model": "tiny", "input": 5}, "input", "string or an array"),
    ({"model": "tiny", "input": {"a": 1}}, "input", "string or an array"),
    ({"model": "tiny", "input": [None]}, "input", "input[0]"),
    ({"model": "tiny", "input": [-1]}, "input", "tiktoken"),
    ({"model": "tiny", "input": [[5, 10_000_000]]}, "input", "outside this model's vocabulary"),
    ({"model": "tiny", "input": "x", "encoding_format": "int4"}, "encoding_format", "float"),
    ({"model": "tiny", "input": "x", "dimensions": 0}, "dimensions", "positive"),
    ({"model": "tiny", "input": "x", "dimensions": 1.5}, "dimensions", "positive integer"),
    ({"model": "tiny", "input": "x", "dimensions": "8"}, "dimensions", "positive integer"),
    ({"model": "tiny-cls", "input": "x", "dimensions": 10**30}, "dimensions", ""),
    ({"model": "tiny", "input": "x", "truncate": "yes"}, "truncate", ""),
    ({"model": "tiny", "input": "x", "user": 5}, "user", ""),
    ({"model": "tiny", "input": "x", "metadata": [1]}, "metadata", ""),
    ({"model": "tiny", "input": "x", "cache_control": {"ttl": -1}}, "cache_control", ""),
    ({"model": "tiny", "input": "x", "cache_control": {"no_cache": 1}}, "cache_control", ""),
    ({"model": "tiny", "input": "x", "extra_body": [1]}, "extra_body", ""),
    ({"model": 5, "input": "x"}, "model", ""),
])
async def test_invalid_requests(make_client: MakeClient, body: Any, param: str,
                                contains: str) -> None:
    client = await make_client()
    resp = await client.post("/v1/embeddings", json=body)
    assert_error(resp.status, await resp.json(), 400, param, "invalid_request", contains)


async def test_too_many_inputs(make_client: MakeClient) -> None:
    client = await make_client(requests=RequestLimits(max_inputs=4))
    resp = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["a"] * 5})
    assert_error(resp.status, await resp.json(), 400, "input", contains="at most 4")


async def test_input_over_the_character_bound(make_client: MakeClient) -> None:
    client = await make_client(requests=RequestLimits(max_input_chars=100))
    resp = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["a", "b" * 101]})
    assert_error(resp.status, await resp.json(), 400, "input", contains="input[1]")


async def test_request_token_bound(make_client: MakeClient) -> None:
    client = await make_client(requests=RequestLimits(max_request_tokens=10))
    resp = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["fox " * 20]})
    assert_error(resp.status, await resp.json(), 400, "input", contains="at most 10")


@pytest.mark.parametrize(("data", "contains"), [
    (b"{not json", "not valid JSON"),
    (b'{"model": "tiny", "input": "\xff\xfe"}', "not valid JSON"),
    (b"", "empty"),
    (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    (b'{"model": "tiny", "input": NaN}', "not valid JSON"),
    (b'{"model": "tiny", "input": "x", "dimensions": NaN}', "not valid JSON"),
    (b'"just a string"', "JSON object"),
])
async def test_malformed_bodies(make_client: MakeClient, data: bytes, contains: str) -> None:
    client = await make_client()
    status, body = await raw(client, data, headers={"Content-Type": "application/json"})
    assert_error(status, body, 400, "body", contains=contains)


async def test_body_too_large(make_client: MakeClient) -> None:
    client = await make_client(requests=RequestLimits(max_body_bytes=1000))
    big = b'{"model": "tiny", "input": "' + b"a" * 2000 + b'"}'
    status, body = await raw(client, big)
    assert_error(status, body, 413, "body", "request_too_large")

    async def chunks() -> Any:  # no Content-Length: refused while streaming
        for _ in range(10):
            yield b"a" * 500

    resp = await client.post("/v1/embeddings", data=chunks(),
                             headers={"Content-Type": "application/json"})
    assert_error(resp.status, await resp.json(), 413, "body")
    # The server is unaffected.
    resp = await client.post("/v1/embeddings", json={"model": "tiny", "input": "ok"})
    assert resp.status == 200


async def test_unknown_model(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/v1/embeddings", json={"model": "gpt-4", "input": "x"})
    assert_error(resp.status, await resp.json(), 404, "model", "model_not_found", "gpt-4")


async def test_unknown_path_and_wrong_method(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/v2/whatever")
    assert_error(resp.status, await resp.json(), 404, code="not_found")
    resp = await client.get("/v1/embeddings")
    assert_error(resp.status, await resp.json(), 405, code="method_not_allowed")
    assert resp.headers["Allow"] == "POST"
    resp = await client.delete("/v1/models")
    assert_error(resp.status, await resp.json(), 405)


async def test_every_error_has_a_request_id_header(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/v1/embeddings", data=b"{", headers={
        "X-Request-Id": "abc-123", "Content-Type": "application/json"})
    assert resp.status == 400 and resp.headers["X-Request-Id"] == "abc-123"


GOOD_BODY = b'{"model": "tiny", "input": "x"}'


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/octet-stream", "application/jsonx",
    "application/vnd.api+json", "json"])
@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings", "/api/embeddings",
                                  "/api/v2/embeddings"])
async def test_a_post_not_declared_json_is_415(make_client: MakeClient, path: str,
                                               content_type: str | None) -> None:
    client = await make_client()
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = await client.post(path, data=GOOD_BODY, headers=headers)
    body = await resp.json(content_type=None)
    assert_error(resp.status, body, 415, "Content-Type", "unsupported_media_type",
                 "application/json")
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON",
    "application/json;charset=UTF-8"])
async def test_json_with_parameters_is_accepted(make_client: MakeClient,
                                                content_type: str) -> None:
    client = await make_client()
    resp = await client.post("/v1/embeddings", data=GOOD_BODY,
                             headers={"Content-Type": content_type})
    assert resp.status == 200, await resp.text()


async def test_415_comes_after_the_key(make_client: MakeClient) -> None:
    key = "sk-test-0123456789abcdef"
    client = await make_client(api_keys=(key,))
    resp = await client.post("/v1/embeddings", data=GOOD_BODY,
                             headers={"Content-Type": "text/plain"})
    assert resp.status == 401
    resp = await client.post("/v1/embeddings", data=GOOD_BODY, headers={
        "Content-Type": "text/plain", "Authorization": f"Bearer {key}"})
    assert resp.status == 415


@pytest.mark.parametrize("body", [
    {"model": "tiny", "input": "x", "extra_body": {"model": "tiny-cls"}},
    {"model": "tiny", "input": "x", "extra_body": {"model": "no-such-model"}},
    {"model": "tiny", "input": "x", "extra_body": {"model": None}},
    {"input": "x", "extra_body": {"model": "tiny"}},
])
async def test_extra_body_may_not_change_the_model(make_client: MakeClient,
                                                   body: dict[str, Any]) -> None:
    client = await make_client()
    resp = await client.post("/v1/embeddings", json=body)
    assert_error(resp.status, await resp.json(), 400, "extra_body", "invalid_request",
                 "'extra_body.model' differs from 'model'")


async def test_extra_body_may_repeat_the_model(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/v1/embeddings", json={
        "model": "tiny-cls", "input": "x", "extra_body": {"model": "tiny-cls"}})
    assert resp.status == 200 and (await resp.json())["model"] == "tiny-cls"
