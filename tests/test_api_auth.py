"""The auth matrix, every case really sent: no keys configured, keys, keys file allow-lists."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_embed.service.auth import Authenticator, load_keys_file
from edge_embed.service.errors import KeysFileError
from tests.fixtures.server import ROOT, MakeClient

KEY_A = "sk-test-aaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbb"
BODY = {"model": "tiny", "input": "hello"}
# A refused key stops the server before it loads a bundle; the margin is for a loaded machine.
STARTUP_TIMEOUT_S = 60


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


async def test_health_without_a_key_is_the_status_alone(make_client: MakeClient) -> None:
    client = await make_client(api_keys=(KEY_A,))
    for auth in (None, "Bearer wrong", f"Basic {KEY_A}"):
        status, text, _ = await status_of(client, "GET", "/health", auth)
        assert status == 200 and json.loads(text) == {"status": "ok"}, (auth, text)
    status, text, _ = await status_of(client, "GET", "/health", f"Bearer {KEY_A}")
    detail = json.loads(text)
    assert status == 200 and detail["status"] == "ok" and detail["auth"] == "on"
    assert set(detail["models"]) == {"tiny", "tiny-cls"} and "warnings" not in detail


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("10.1.2.3", True),
                                              ("127.0.0.1", False), ("::1", False)])
async def test_health_says_auth_is_off_and_warns_beyond_loopback(
        make_client: MakeClient, host: str, warned: bool) -> None:
    client = await make_client(host=host)
    status, text, _ = await status_of(client, "GET", "/health", None)
    body = json.loads(text)
    assert status == 200 and body["auth"] == "off" and set(body["models"]) == {"tiny", "tiny-cls"}
    if warned:
        assert host in body["warnings"][0] and "--api-key" in body["warnings"][0], body
    else:
        assert "warnings" not in body, body
    # with keys, never: not even to a key
    client = await make_client(host=host, api_keys=(KEY_A,))
    _, text, _ = await status_of(client, "GET", "/health", f"Bearer {KEY_A}")
    assert "warnings" not in json.loads(text)


def test_start_up_warns_when_open_beyond_loopback(make_client: MakeClient,
                                                  tiny_registry: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from edge_embed.service.app import create_app
    from edge_embed.service.serve import _startup_log
    from edge_embed.service.settings import Settings

    folders = tuple(s.model.folder for s in tiny_registry)
    for host, keys, warned in (("0.0.0.0", (), True), ("127.0.0.1", (), False),
                               ("0.0.0.0", (KEY_A,), False)):
        caplog.clear()
        settings = Settings(models=folders, host=host, api_keys=keys)
        with caplog.at_level(logging.INFO, logger="edge_embed.serve"):
            _startup_log(create_app(settings, registry=tiny_registry), settings, 8000)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(host in w and "no API keys" in w for w in warnings) is warned, warnings


async def test_keys_file_allow_list(make_client: MakeClient, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\n{KEY_A} tiny-cls\n\n{KEY_B}   # all models\n", encoding="utf-8")
    client = await make_client(api_keys_file=keys)
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_A}", BODY))[0] == 404
    ok = {"model": "tiny-cls", "input": "x"}
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_A}", ok))[0] == 200
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_B}", BODY))[0] == 200
    status, text, _ = await status_of(client, "GET", "/v1/models/tiny", f"Bearer {KEY_A}")
    assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found"
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


async def test_a_hash_inside_a_key_is_part_of_the_key(make_client: MakeClient,
                                                     tmp_path: Path) -> None:
    hashed = "sk-abc#def1234567890"
    keys = tmp_path / "keys"
    keys.write_text(f"{hashed} tiny-cls   # the hash above is the key's own\n"
                    f"#{KEY_B}\n{KEY_A}\t# all models\n", encoding="utf-8")
    assert load_keys_file(keys) == [(hashed, frozenset({"tiny-cls"})), (KEY_A, None)]
    client = await make_client(api_keys_file=keys)
    ok = {"model": "tiny-cls", "input": "x"}
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {hashed}", ok))[0] == 200
    # its allow-list holds: the other model is not there for it
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {hashed}", BODY))[0] == 404
    for prefix in ("sk-abc", "sk-abc#"):  # what the line used to be cut to
        assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {prefix}", ok))[0] \
            == 401
    assert (await status_of(client, "POST", "/v1/embeddings", f"Bearer {KEY_B}", ok))[0] == 401


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True),
                                              (0o604, True), (0o644, True), (0o620, True)])
def test_a_keys_file_others_may_read_is_warned_about(tmp_path: Path, mode: int, warned: bool,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY_A}\n", encoding="utf-8")
    keys.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="edge_embed.auth"):
        assert load_keys_file(keys) == [(KEY_A, None)]
    found = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(found) is warned, found
    if warned:
        assert str(keys) in found[0] and oct(mode) in found[0], found
        assert KEY_A not in caplog.text


def test_keys_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "keys"
    bad.write_text("k1 a b\n", encoding="utf-8")
    with pytest.raises(KeysFileError, match=r"keys:1"):
        load_keys_file(bad)
    with pytest.raises(KeysFileError, match="cannot read"):
        load_keys_file(tmp_path / "missing")


# ---- keys refused at start-up, through the real CLI ------------------------------------------
SHORT = "sk-short-key-15"  # 15 characters: one under the minimum
SPACED = "sk-has a space in it 1234"


def serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_EMBED_")}
    return subprocess.run([sys.executable, "-m", "edge_embed.service", "--port", "0", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S,
                          env={**environ, **(env or {})})


def assert_refused(done: subprocess.CompletedProcess[str], *needles: str,
                   secret: str | None = None) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    if secret:
        assert secret not in done.stderr, "the refusal printed the key"


@pytest.mark.parametrize(("args", "env", "needles", "secret"), [
    (["--api-key", SHORT], {}, ["--api-key", "#1", "15 characters", "at least 16"], SHORT),
    (["--api-key", KEY_A, "--api-key", SPACED], {}, ["--api-key", "#2", "whitespace"], SPACED),
    (["--api-key", ""], {}, ["--api-key", "#1", "empty"], None),
    ([], {"EDGE_EMBED_API_KEY": ""}, ["EDGE_EMBED_API_KEY", "#1", "empty"], None),
    ([], {"EDGE_EMBED_API_KEY": f"{KEY_A},"}, ["EDGE_EMBED_API_KEY", "#2", "empty"], KEY_A),
    ([], {"EDGE_EMBED_API_KEY": SHORT}, ["EDGE_EMBED_API_KEY", "at least 16"], SHORT),
], ids=["short", "whitespace", "empty-flag", "empty-env", "empty-item-env", "short-env"])
def test_unusable_keys_are_refused_at_start(tiny_bundle: Path, args: list[str],
                                            env: dict[str, str], needles: list[str],
                                            secret: str | None) -> None:
    assert_refused(serve(["--model", str(tiny_bundle), *args], env), *needles, secret=secret)


def test_a_short_key_in_the_keys_file_is_refused_naming_its_line(tiny_bundle: Path,
                                                                 tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# keys\n{KEY_A} tiny\n{SHORT} tiny-cls\n", encoding="utf-8")
    keys.chmod(0o600)
    done = serve(["--model", str(tiny_bundle), "--api-keys-file", str(keys)])
    assert_refused(done, f"{keys}:3", "15 characters", secret=SHORT)
    assert KEY_A not in done.stderr
