"""What the live-server tests (reliability, hostile input, auth, fuzzing) send and read back.

The server itself is tests.fixtures.server.Live (service/process.py underneath): a real
listening socket, a real process to signal, its log captured whole. These helpers talk to it
with the standard library: raw requests whose errors are results, /metrics parsed, OpenAI error
bodies checked.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any


def scrape(base: str, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(f"{base}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        text: str = response.read().decode("utf-8")
        return text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0.0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric_labels(text: str, name: str, label: str) -> dict[str, float]:
    """`name`'s samples summed by the value of one label."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and label in sample.labels:
                key = sample.labels[label]
                out[key] = out.get(key, 0.0) + sample.value
    return out


def assert_openai_error(body: object, status: int, *, type_: str | None = None,
                        code: str | None = None) -> dict[str, object]:
    """`{"error": {"message", "type", "param", "code"}}`, a non-empty message; returns `error`."""
    assert isinstance(body, dict) and set(body) >= {"error"}, f"{status}: not an error body: {body}"
    error = body["error"]
    assert isinstance(error, dict), f"{status}: error is not an object: {body}"
    assert {"message", "type", "param", "code"} <= set(error), f"{status}: fields missing: {error}"
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    assert "Traceback" not in error["message"], error
    if type_ is not None:
        assert error["type"] == type_, f"{status}: type {error['type']!r}, wanted {type_!r}"
    if code is not None:
        assert error["code"] == code, f"{status}: code {error['code']!r}, wanted {code!r}"
    return error


def words_text(i: int, words: int) -> str:
    """A unique text (its number first) of `words` words from the tiny tokenizer's own corpus,
    so that every word is known to it (a few tokens per word at most)."""
    from tests.fixtures.tiny import CORPUS

    vocab = " ".join(CORPUS).split()
    return f"{i} " + " ".join(vocab[(i * 7 + k) % len(vocab)] for k in range(words))


def http(method: str, url: str, *, headers: dict[str, str] | None = None,
         body: object = None, timeout: float = 30.0) -> tuple[int, dict[str, str], object]:
    """(status, headers, parsed JSON body or the raw text) of one request; errors included."""
    import json

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, dict(err.headers), err.read()
    try:
        parsed: object = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return status, head, parsed


def get(url: str, timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON body) of a GET, errors included."""
    status, _, body = http("GET", url, timeout=timeout)
    return status, body


def get_json(url: str, timeout: float = 30.0) -> Any:
    """The parsed JSON body of a GET that must answer 200."""
    status, body = get(url, timeout)
    assert status == 200, f"GET {url}: {status} {body}"
    return body


def openapi_document(base: str, key: str | None = None) -> dict[str, Any]:
    """The server's /openapi.json, as the caller with `key` gets it."""
    status, _, body = http("GET", f"{base}/openapi.json",
                           headers={"Authorization": f"Bearer {key}"} if key else {})
    assert status == 200 and isinstance(body, dict), f"/openapi.json: {status} {body}"
    return body


def token_ids_body(seed: int, model: str, size: int, low: int = 0, span: int = 100) -> bytes:
    """A body of about `size` bytes (at most) of token-id inputs for `model`, each of the server's
    largest input (MAX_INPUT_CHARS ids), ids in [low, low + span): a flood of large bodies."""
    import orjson

    from edge_embed.service.limits import MAX_INPUT_CHARS

    ids = [low + (seed + k) % span for k in range(MAX_INPUT_CHARS)]
    inputs = max(1, (size - 128) // (len(orjson.dumps(ids)) + 1))
    return orjson.dumps({"model": model, "input": [ids] * inputs,
                         "cache_control": {"no_cache": True}})


def post_bodies(url: str, bodies: list[bytes],
                timeout: float = 120.0) -> list[tuple[int, str]]:
    """POST every body at once; (status, Retry-After) of each, (0, the error's name) where no
    answer came."""
    import asyncio

    import aiohttp

    async def post(session: aiohttp.ClientSession, body: bytes) -> tuple[int, str]:
        try:
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After", "")
        except aiohttp.ClientError as exc:
            return 0, type(exc).__name__

    async def send() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            return list(await asyncio.gather(*(post(session, b) for b in bodies)))

    return asyncio.run(send())
