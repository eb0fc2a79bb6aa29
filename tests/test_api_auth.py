"""The auth matrix, every case really sent: no keys configured, keys, keys file allow-lists."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from edge_embed.service.auth import Authenticator, load_keys_file
from edge_embed.service.errors import KeysFileError
from tests.fixtures.server import MakeClient

KEY_A = "sk-test-aaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbb"
BODY = {"model": "tiny", "input": "hello"}


async def status_of(client: Any, method: str, path: str, auth: str | None,
                    body: Any = None) -> tuple[int, Any, Any]:
    headers = {"Authorization": auth} if auth is not None else {}
    resp = await client.request(method, path, json=body, headers=headers)
    text = await resp.read()
    return resp.status, text, resp.headers


async def test_no_keys_configured_everything_open(make_client: MakeClient) -> None:
    client = await make_client()
    for auth in (None, f"Bearer {KEY_A}", "Bearer whatever"):
        status, _, _ = await status_of(client, "POST", "/v1/embeddings", auth, BODY)
        assert status == 200


@pytest.mark.parametrize(("auth", "status", "code"), [
    (None, 401, "missing_api_key"),
    ("", 401, "missing_api_key"),
    ("Bearer", 401, "invalid_api_key"),
    ("Bearer ", 401, "invalid_api_key"),
    ("Bearer sk-wrong", 401, "invalid_api_key"),
    (f"Bearer {KEY_A}x", 401, "invalid_api_key"),
    (f"Bearer {KEY_A[:-1]}", 401, "invalid_api_key"),
    (f"Basic {KEY_A}", 401, "invalid_api_key"),
    (KEY_A, 401, "invalid_api_key"),
    (f"Bearer {KEY_A}", 200, None),
    (f"bearer {KEY_A}", 200, None),
    (f"Bearer {KEY_B}", 200, None),
])
async def test_key_matrix(make_client: MakeClient, auth: str | None, status: int,
                          code: str | None) -> None:
    client = await make_client(api_keys=(KEY_A, KEY_B))
    for method, path, body in (("POST", "/v1/embeddings", BODY), ("GET", "/v1/models", None),
                               ("GET", "/v1/models/tiny", None), ("GET", "/info", None),
                               ("GET", "/openapi.json", None)):
        got, text, headers = await status_of(client, method, path, auth, body)
        assert got == status, (path, text)
        if status == 401:
            assert headers["WWW-Authenticate"] == "Bearer"
            err = json.loads(text)["error"]
            assert err["code"] == code and err["type"] == "invalid_request_error"
            assert KEY_A not in text.decode() and KEY_B not in text.decode()


async def test_missing_and_wrong_key_differ_only_in_code_and_message(
        make_client: MakeClient) -> None:
    client = await make_client(api_keys=(KEY_A,))
    s1, t1, h1 = await status_of(client, "POST", "/v1/embeddings", None, BODY)
    s2, t2, h2 = await status_of(client, "POST", "/v1/embeddings", "Bearer nope", BODY)
    assert s1 == s2 == 401
    e1, e2 = (json.loads(t)["error"] for t in (t1, t2))
    assert {k: v for k, v in e1.items() if k not in ("code", "message")} == \
        {k: v for k, v in e2.items() if k not in ("code", "message")}
    strip = {"x-request-id", "date", "content-length"}
    assert {k: v for k, v in h1.items() if k.lower() not in strip} == \
        {k: v for k, v in h2.items() if k.lower() not in strip}


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
async def test_probes_stay_open(make_client: MakeClient, path: str) -> None:
    client = await make_client(api_keys=(KEY_A,))
    for auth in (None, "Bearer wrong"):
        status, _, _ = await status_of(client, "GET", path, auth)
        assert status == 200


async def test_keys_file_allow_list(make_client: MakeClient, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\n{KEY_A} tiny-cls\n\n{KEY_B}   # all models\n", encoding="utf-8")
    client = await make_client(api_keys_file=keys)
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_A}", BODY))[0] == 403
    ok = {"model": "tiny-cls", "input": "x"}
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_A}", ok))[0] == 200
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_B}", BODY))[0] == 200
    status, text, _ = await status_of(client, "GET", "/v1/models/tiny", f"Bearer {KEY_A}")
    assert status == 403 and b"model_not_allowed" in text
    _, text, _ = await status_of(client, "GET", "/v1/models", f"Bearer {KEY_A}")
    assert [m["id"] for m in json.loads(text)["data"]] == ["tiny-cls"]
    assert (await status_of(client, "POST", "/v1/embeddings", "Bearer nope", BODY))[0] == 401


async def test_keys_never_logged(make_client: MakeClient, caplog: pytest.LogCaptureFixture
                                 ) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client(api_keys=(KEY_A,))
    await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_A}", BODY)
    await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_B}", BODY)
    assert any(r.name == "edge_embed.access" for r in caplog.records)
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


def test_constant_time_compares_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    import hmac

    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("edge_embed.service.auth.hmac.compare_digest", counting)
    auth = Authenticator([(f"k{i}", None) for i in range(5)])
    auth.check("Bearer k0")  # the first key matches: every key is still compared
    assert len(calls) == 5
    calls.clear()
    with pytest.raises(Exception, match="Incorrect API key"):
        auth.check("Bearer nope")
    assert len(calls) == 5


def test_keys_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "keys"
    bad.write_text("k1 a b\n", encoding="utf-8")
    with pytest.raises(KeysFileError, match=r"keys:1"):
        load_keys_file(bad)
    with pytest.raises(KeysFileError, match="cannot read"):
        load_keys_file(tmp_path / "missing")
