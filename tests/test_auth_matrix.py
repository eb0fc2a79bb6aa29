"""Auth: a matrix that really sends every case to a live server.

Keys: one from --api-key (every model), one from a keys file limited to the "tiny" model. Every
protected route is called with no key, a wrong key, each right key, and a right key for a model
it may not use; the open routes with no key at all. A wrong and a missing key must differ only in
the documented code and message. At the end the server's whole output (run at debug level) is
searched for every key: none may appear.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.server import Live, live_server
from tests.reliability_server import assert_openai_error, http

# Distinct, unguessable keys, so that finding one in the log cannot be a coincidence.
ADMIN_KEY = "sk-admin-" + secrets.token_hex(16)
LIMITED_KEY = "sk-limited-" + secrets.token_hex(16)
WRONG_KEY = "sk-wrong-" + secrets.token_hex(16)
ALL_KEYS = (ADMIN_KEY, LIMITED_KEY, WRONG_KEY)

EMBEDDING_ROUTES = ("/v1/embeddings", "/embeddings", "/api/embeddings", "/api/v2/embeddings")
PROTECTED_GETS = ("/v1/models", "/v1/models/tiny", "/info")
OPEN_GETS = ("/health", "/ready", "/metrics", "/docs", "/docs/swagger-ui-bundle.js")
# Headers that legitimately differ between any two answers.
VOLATILE = {"date", "content-length", "x-request-id", "request-id", "x-process-time"}


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tiny_cls_bundle: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    keys_file = tmp_path_factory.mktemp("auth") / "keys.txt"
    keys_file.write_text(f"# limited key\n{LIMITED_KEY} tiny\n", encoding="utf-8")
    keys_file.chmod(0o640)  # readable by the group: the start-up log warns about it
    with live_server([tiny_bundle, tiny_cls_bundle], [
        "--api-key", ADMIN_KEY, "--api-keys-file", str(keys_file), "--log-level", "debug",
        "--access-log"]) as live:
        yield live


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def embed(server: Live, route: str, key: str | None,
          model: str = "tiny") -> tuple[int, dict[str, str], object]:
    return http("POST", server.url + route, headers=bearer(key),
                body={"model": model, "input": ["a dog in the park", "a cat"]})


def assert_401(status: int, headers: dict[str, str], body: object) -> dict[str, object]:
    assert status == 401, (status, body)
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered.get("www-authenticate", "").lower().startswith("bearer"), headers
    return assert_openai_error(body, 401, type_="invalid_request_error")


@pytest.mark.parametrize("route", EMBEDDING_ROUTES)
def test_embeddings_matrix(server: Live, route: str) -> None:
    assert_401(*embed(server, route, None))
    assert_401(*embed(server, route, WRONG_KEY))
    for key in (ADMIN_KEY, LIMITED_KEY):
        status, _, body = embed(server, route, key)
        assert status == 200, (route, status, body)
        assert isinstance(body, dict) and len(body["data"]) == 2
    status, _, body = embed(server, route, ADMIN_KEY, model="tiny-cls")
    assert status == 200, body
    status, _, body = embed(server, route, LIMITED_KEY, model="tiny-cls")
    assert_hidden(status, body, "tiny-cls")
    # The refusal comes before the model: an unknown model with no key is 401, not 404.
    assert_401(*embed(server, route, None, model="no-such-model"))


def assert_hidden(status: int, body: object, model: str) -> None:
    """A 404 that names only what the limited key may use: nothing says `model` exists."""
    assert status == 404, (status, body)
    err = assert_openai_error(body, 404, type_="invalid_request_error")
    assert err["code"] == "model_not_found" and err["param"] == "model", err
    message = str(err["message"])
    served = message.split("Served:", 1)[1]
    assert [n.strip(" .") for n in served.split(",")] == ["tiny"], message
    assert "tiny-cls" not in served, message


def test_a_model_the_key_may_not_use_looks_absent(server: Live) -> None:
    """403 vs 404 would tell a limited key which models exist; both are the same 404."""
    hidden = embed(server, "/v1/embeddings", LIMITED_KEY, model="tiny-cls")
    absent = embed(server, "/v1/embeddings", LIMITED_KEY, model="no-such-model")
    assert_hidden(hidden[0], hidden[2], "tiny-cls")
    assert_hidden(absent[0], absent[2], "tiny-cls")
    h_err, a_err = (assert_openai_error(b[2], 404) for b in (hidden, absent))
    assert str(h_err["message"]).replace("tiny-cls", "X") == \
        str(a_err["message"]).replace("no-such-model", "X")
    status, _, body = http("GET", server.url + "/v1/models/tiny-cls", headers=bearer(LIMITED_KEY))
    assert_hidden(status, body, "tiny-cls")
    # the admin key sees everything, and a 404 lists every model to it
    status, _, body = embed(server, "/v1/embeddings", ADMIN_KEY, model="no-such-model")
    err = assert_openai_error(body, 404)
    assert status == 404 and "tiny-cls" in str(err["message"])


def test_info_lists_only_the_keys_models(server: Live) -> None:
    _, _, body = http("GET", server.url + "/info", headers=bearer(LIMITED_KEY))
    assert isinstance(body, dict)
    assert body["models"] == ["tiny"] and set(body["providers"]["models"]) == {"tiny"}, body
    _, _, body = http("GET", server.url + "/info", headers=bearer(ADMIN_KEY))
    assert isinstance(body, dict) and body["models"] == ["tiny", "tiny-cls"], body


def test_health_detail_needs_a_key_and_shows_its_models(server: Live) -> None:
    for key in (None, WRONG_KEY):
        status, _, body = http("GET", server.url + "/health", headers=bearer(key))
        assert status == 200 and body == {"status": "ok"}, body
    status, _, body = http("GET", server.url + "/health", headers=bearer(LIMITED_KEY))
    assert status == 200 and isinstance(body, dict), body
    assert body["status"] == "ok" and body["auth"] == "on" and set(body["models"]) == {"tiny"}
    _, _, body = http("GET", server.url + "/health", headers=bearer(ADMIN_KEY))
    assert isinstance(body, dict) and set(body["models"]) == {"tiny", "tiny-cls"}, body


def test_a_keys_file_the_group_may_read_is_warned_about_at_start(server: Live) -> None:
    lines = [line for line in server.log_text().splitlines() if " WARNING " in line]
    assert any("keys.txt" in line and "0o640" in line for line in lines), lines


@pytest.mark.parametrize("route", PROTECTED_GETS)
def test_protected_gets_matrix(server: Live, route: str) -> None:
    assert_401(*http("GET", server.url + route))
    assert_401(*http("GET", server.url + route, headers=bearer(WRONG_KEY)))
    for key in (ADMIN_KEY, LIMITED_KEY):
        status, _, body = http("GET", server.url + route, headers=bearer(key))
        assert status == 200, (route, key[:9], status, body)


@pytest.mark.parametrize("route", OPEN_GETS)
def test_open_routes_need_no_key(server: Live, route: str) -> None:
    for key in (None, WRONG_KEY):
        status, _, body = http("GET", server.url + route, headers=bearer(key))
        assert status == 200, (route, status, body)


def test_wrong_and_missing_key_differ_only_in_code_and_message(server: Live) -> None:
    missing = embed(server, "/v1/embeddings", None)
    wrong = embed(server, "/v1/embeddings", WRONG_KEY)
    m_err, w_err = assert_401(*missing), assert_401(*wrong)
    assert m_err["type"] == w_err["type"] and m_err["param"] == w_err["param"], (m_err, w_err)
    assert m_err["code"] and w_err["code"], "each 401 carries a documented code"
    assert set(m_err) == set(w_err), (m_err, w_err)
    m_head = {k.lower(): v for k, v in missing[1].items() if k.lower() not in VOLATILE}
    w_head = {k.lower(): v for k, v in wrong[1].items() if k.lower() not in VOLATILE}
    assert m_head == w_head, f"headers differ: {m_head} vs {w_head}"


@pytest.mark.parametrize("authorization", [
    f"Basic {ADMIN_KEY}",  # the right secret in the wrong scheme
    "Bearer",
    "Bearer ",
    f"Bearer {ADMIN_KEY}x",  # the right key plus one character
    f"Bearer {ADMIN_KEY[:-1]}",  # the right key less one character
    f"Bearer {ADMIN_KEY} {ADMIN_KEY}",
    f"{ADMIN_KEY}",  # no scheme at all
    "Bearer \u00e9t\u00e9",  # non-ASCII (sent as Latin-1 bytes)
], ids=["basic", "bearer-only", "bearer-space", "key-plus-one", "key-less-one", "key-twice",
        "no-scheme", "non-ascii"])
def test_malformed_authorization_is_401(server: Live, authorization: str) -> None:
    status, headers, body = http("POST", server.url + "/v1/embeddings",
                                 headers={"Authorization": authorization},
                                 body={"model": "tiny", "input": "x"})
    assert_401(status, headers, body)


def test_bearer_scheme_is_case_insensitive(server: Live) -> None:
    # RFC 9110 section 11.1: the authentication scheme is case-insensitive.
    status, _, body = http("POST", server.url + "/v1/embeddings",
                           headers={"Authorization": f"bearer {ADMIN_KEY}"},
                           body={"model": "tiny", "input": "x"})
    assert status == 200, body


def test_keys_never_reach_the_log(server: Live) -> None:
    # Runs last in this module (pytest keeps file order): every case above has been logged.
    embed(server, "/v1/embeddings", WRONG_KEY)
    embed(server, "/v1/embeddings", ADMIN_KEY)
    log = server.log_text()
    assert log.strip(), "the server logged nothing: this test would prove nothing"
    assert "/v1/embeddings" in log or "embeddings" in log, "requests are not logged at all"
    for key in ALL_KEYS:
        secret = key.split("-")[-1]
        assert key not in log and secret not in log, f"key {key[:10]}... appears in the log"
