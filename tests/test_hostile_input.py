"""Hostile input: every one of these gets a 4xx and leaves the server unaffected.

Sent over raw sockets where a client library would refuse to send them (a Content-Length that
lies, a chunked body without end, a flood of headers). The live server runs with a small body
limit and character bound so that going past them costs little.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.server import Live, live_server
from tests.reliability_server import assert_openai_error

# Body limit for this server: 256 KiB holds the 100 000-level nesting below (100 KB) and the
# over-long string (one character past the bound), and is cheap to exceed.
MAX_BODY = 256 * 1024
# Character bound: a few thousand characters is already far past the tiny model's 64 tokens.
MAX_CHARS = 5000
# A socket read that waits this long for an answer means the server waits for bytes that will
# never come (it reads the whole body before refusing it).
ANSWER_WITHIN_S = 10.0
NESTING = 100_000
# A gzip bomb: 200 MB of one byte compresses to ~200 KB, under MAX_BODY on the wire.
BOMB_BYTES = 200 * 1024 * 1024
# What a server may grow while refusing it: a fraction of the inflated size (a server that
# inflates the whole body first grows by ~200 MB).
BOMB_RSS_GROWTH_MIB = 64
TINY_VOCAB_LIMIT = 10**6  # far above any tiny vocabulary: certainly out of range


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tiny_cls_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle, tiny_cls_bundle], [
        "--max-body-bytes", str(MAX_BODY), "--max-input-chars", str(MAX_CHARS)]) as live:
        yield live


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> object:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:200]!r})"


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.x response from `sock` (Content-Length framed, or up to EOF)."""
    sock.settimeout(ANSWER_WITHIN_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed without an answer (got {data[:200]!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        body += chunk
    return Answer(status, headers, body[:length] if length >= 0 else body)


def send_raw(server: Live, data: bytes, *, tolerate_reset: bool = False) -> Answer:
    with socket.create_connection((server.host, server.port), timeout=ANSWER_WITHIN_S) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer and close before it has read all we send: that is the
            # point of refusing early. Its answer is still in our receive buffer.
            if not tolerate_reset:
                raise
        return read_answer(sock)


def post(server: Live, body: bytes, *, content_type: str = "application/json",
         extra_headers: str = "") -> Answer:
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra_headers}"
            "Connection: close\r\n\r\n").encode()
    return send_raw(server, head + body, tolerate_reset=True)


def post_json(server: Live, payload: object) -> Answer:
    return post(server, json.dumps(payload).encode())


def assert_unaffected(server: Live) -> None:
    assert server.proc.poll() is None, "the server died"
    answer = post_json(server, {"model": "tiny", "input": "still serving"})
    assert answer.status == 200, answer
    assert server.status("/health") == 200


# --- the body size limit ----------------------------------------------------------------------


def test_lying_content_length_is_refused_before_the_body_arrives(server: Live) -> None:
    # Claims 100 MB, sends 10 bytes, then waits: only a server that checks the header answers.
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n").encode()
    with socket.create_connection((server.host, server.port), timeout=ANSWER_WITHIN_S) as sock:
        sock.sendall(head + b'{"model":')
        try:
            answer = read_answer(sock)
        except TimeoutError:
            pytest.fail(f"no answer within {ANSWER_WITHIN_S} s: the server waits for the 100 MB "
                        "body it will refuse instead of refusing it from Content-Length")
    assert answer.status == 413, answer
    assert_openai_error(answer.json(), 413)
    assert_unaffected(server)


def test_chunked_body_over_the_limit_is_refused_while_streaming(server: Live) -> None:
    # No Content-Length: the server must count as it reads and stop at the limit; the final
    # zero-length chunk is never sent, so a server that reads to the end never answers.
    chunk = b"[" + b" " * 8190 + b"]"
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    frames = MAX_BODY // len(chunk) + 4
    with socket.create_connection((server.host, server.port), timeout=ANSWER_WITHIN_S) as sock:
        # The server may refuse and close before all is sent; its answer is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            sock.sendall(head + frame * frames)
        try:
            answer = read_answer(sock)
        except TimeoutError:
            pytest.fail("no answer to an endless chunked body past the limit")
    assert answer.status == 413, answer
    assert_openai_error(answer.json(), 413)
    assert_unaffected(server)


def test_complete_body_one_byte_over_the_limit_is_413(server: Live) -> None:
    prefix = b'{"model":"tiny","input":"'
    body = prefix + b"a" * (MAX_BODY + 1 - len(prefix) - 2) + b'"}'
    assert len(body) == MAX_BODY + 1
    answer = post(server, body)
    assert answer.status == 413, answer
    assert_openai_error(answer.json(), 413)


def test_gzip_bomb_is_413_without_inflating_it_in_memory(server: Live) -> None:
    # ~200 KB of gzip (under the limit on the wire) that inflates to 200 MB: the limit must
    # apply to the inflated body, counted while inflating, not after.
    prefix = b'{"model":"tiny","input":"'
    bomb = gzip.compress(prefix + b"a" * BOMB_BYTES + b'"}', 9)
    assert len(bomb) <= MAX_BODY
    rss_before = server.rss()
    answer = post(server, bomb, extra_headers="Content-Encoding: gzip\r\n")
    assert answer.status == 413, answer
    assert_openai_error(answer.json(), 413)
    grown_mib = (server.rss() - rss_before) / 2**20
    assert grown_mib < BOMB_RSS_GROWTH_MIB, f"RSS grew {grown_mib:.0f} MiB on a refused body"
    assert_unaffected(server)


# --- malformed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b'{"model":"tiny","input":"\xff\xfe\xfd"}',  # not UTF-8 at all
    b'{"model":"tiny","input":"caf\xe9"}',  # Latin-1, not UTF-8
    b'{"model":"tiny","input":"\xed\xa0\x80"}',  # an encoded lone surrogate
    b"\xff\xfe{\x00}\x00",  # UTF-16 with a BOM
    b"\x00\x01\x02\x03",
], ids=["garbage", "latin1", "surrogate", "utf16", "binary"])
def test_non_utf8_body_is_400(server: Live, body: bytes) -> None:
    answer = post(server, body)
    assert answer.status == 400, answer
    assert_openai_error(answer.json(), 400, type_="invalid_request_error")


@pytest.mark.parametrize("body", [
    b"[" * NESTING,
    b'{"model":"tiny","input":' + b"[" * NESTING + b"]" * NESTING + b"}",
    b'{"model":"tiny","input":"x","metadata":' + b'{"a":' * (NESTING // 5) + b"1"
    + b"}" * (NESTING // 5) + b"}",
], ids=["open-brackets", "nested-input", "nested-metadata"])
def test_deeply_nested_json_is_400(server: Live, body: bytes) -> None:
    assert len(body) <= MAX_BODY
    answer = post(server, body)
    assert answer.status == 400, answer
    assert_openai_error(answer.json(), 400)
    assert_unaffected(server)


# --- strings, token ids and dimensions out of bounds ------------------------------------------


def test_string_at_the_character_bound_is_served(server: Live) -> None:
    text = ("word " * MAX_CHARS)[:MAX_CHARS]
    answer = post_json(server, {"model": "tiny", "input": text})
    assert answer.status == 200, answer


@pytest.mark.parametrize("size", [MAX_CHARS + 1, MAX_BODY - 100])
def test_string_past_the_character_bound_is_400_naming_it(server: Live, size: int) -> None:
    text = ("word " * size)[:size]
    answer = post_json(server, {"model": "tiny", "input": ["fine", text]})
    assert answer.status == 400, answer
    error = assert_openai_error(answer.json(), 400, type_="invalid_request_error")
    assert error["param"] is not None and "input" in str(error["param"]), error
    assert "1" in str(error["param"]) + str(error["message"]), "the offending item is not named"
    assert "character" in str(error["message"]).lower(), error


@pytest.mark.parametrize("ids", [
    [[-1, 5, 6]], [[5, -(2**63)]], [[TINY_VOCAB_LIMIT]], [[2**63]], [[2**64 + 1]],
    [[1.5, 2]], [[True, 3]], [[None]], [["5"]],
], ids=["negative", "min-int64", "past-vocab", "2^63", "past-uint64", "float", "bool", "null",
        "string-id"])
def test_bad_token_ids_are_400(server: Live, ids: list[list[object]]) -> None:
    answer = post(server, json.dumps({"model": "tiny", "input": ids}).encode())
    assert answer.status == 400, answer
    assert_openai_error(answer.json(), 400, type_="invalid_request_error")


@pytest.mark.parametrize("dims", [
    "NaN", "Infinity", "-Infinity", "1e400", "1e308", "-1", "0", "16.5", "-16", "true", '"16"',
    "99999999999999999999999999", "[16]", "{}",
])
def test_bad_dimensions_are_400(server: Live, dims: str) -> None:
    body = f'{{"model":"tiny-cls","input":"a dog","dimensions":{dims}}}'.encode()
    answer = post(server, body)
    assert answer.status == 400, answer
    error = assert_openai_error(answer.json(), 400, type_="invalid_request_error")
    # NaN and the infinities are not JSON, and 1e400 overflows a double: the body itself is
    # refused (param "body"); every other value is refused as a bad `dimensions`.
    if dims not in ("NaN", "Infinity", "-Infinity", "1e400"):
        assert error["param"] == "dimensions", error


def test_dimensions_on_a_model_without_matryoshka_is_400(server: Live) -> None:
    answer = post_json(server, {"model": "tiny", "input": "a dog", "dimensions": 16})
    assert answer.status == 400, answer
    error = assert_openai_error(answer.json(), 400)
    assert error["param"] == "dimensions", error


# --- header floods ------------------------------------------------------------------------------


def test_flood_of_headers_is_4xx_and_harmless(server: Live) -> None:
    many = "".join(f"X-Flood-{i}: {i}\r\n" for i in range(10_000))
    answer = post(server, b'{"model":"tiny","input":"x"}', extra_headers=many)
    assert 400 <= answer.status < 500, answer
    assert_unaffected(server)


def test_huge_header_is_4xx_and_harmless(server: Live) -> None:
    huge = f"X-Huge: {'a' * 200_000}\r\n"
    answer = post(server, b'{"model":"tiny","input":"x"}', extra_headers=huge)
    assert 400 <= answer.status < 500, answer
    assert_unaffected(server)


def test_huge_authorization_header_is_4xx_and_harmless(server: Live) -> None:
    answer = post(server, b'{"model":"tiny","input":"x"}',
                  extra_headers=f"Authorization: Bearer {'k' * 100_000}\r\n")
    assert 400 <= answer.status < 500, answer
    assert_unaffected(server)


def test_request_line_too_long_is_4xx_and_harmless(server: Live) -> None:
    answer = send_raw(server, f"GET /{'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                      tolerate_reset=True)
    assert 400 <= answer.status < 500, answer
    assert_unaffected(server)
