"""Slow clients: connections that trickle their request are cut off, and cost nobody else.

Live servers with short --header-timeout / --body-timeout / --keepalive-timeout, talked to over
raw loopback sockets:

- 100 connections send one byte a second: some stuck in the request line, some in the headers,
  half in a body after complete headers with a Content-Length. Meanwhile other clients' real
  embeddings requests get 200 at about the latency they had before the slow connections came
  (measured in the same test: the box is shared); the slow connections are closed by the server
  within their timeout (the body ones after a 408 in the OpenAI shape), and the in-flight gauge
  counts the body ones while they last and is back to 0 afterwards.
- An idle keep-alive connection is closed after the keep-alive bound (and not before, although
  the header timeout is shorter); one that never sends a byte is closed at the header timeout.
- Past --max-connections, a connection is answered 503 and closed at once; once the held ones
  close, new clients are served. A server started under an open-file limit too low for its
  connections raises it.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from edge_embed.service.limits import FILES_BESIDE_CONNECTIONS, LINGER_S, ConnectionLimits
from tests.fixtures.server import Live, live_server
from tests.reliability_server import assert_openai_error, http, metric_sum, scrape, words_text

HOST = "127.0.0.1"
# Short bounds so that the test runs in seconds; the header timeout is shorter than the
# keep-alive one, so that the keep-alive test shows the two apart.
HEADER_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 4.0
KEEPALIVE_TIMEOUT_S = 6.0
# A timer on a loaded 2-core box fires late by a few hundred ms at worst; more for the client
# to notice the close.
CLOSE_MARGIN_S = 2.5
# Closed no earlier than this share of the timeout: the bound is the timeout, not something
# shorter that happens to pass.
EARLY_SHARE = 0.8
# The slow flood: one byte a second on each connection.
SLOW_LINE = 25  # stuck in the request line
SLOW_HEADERS = 25  # stuck in a header
SLOW_BODY = 50  # complete headers, stuck in the body
DRIP_S = 1.0
BODY_BYTES = 1000  # the Content-Length a slow body announces (never reached)
# A slow connection gives up by itself after this long, so that the test ends even if the
# server never closes it (the code before the fix).
SLOW_BOUND_S = 20.0
# Normal clients: sequential requests of a few short inputs, each on a new connection.
NORMAL_REQUESTS = 20
NORMAL_INPUTS = 4
WARMUP_REQUESTS = 3
# Latency during the flood against the baseline: generous, the box is shared; what it rules
# out is requests waiting on the slow connections (seconds).
LATENCY_FACTOR = 5.0
LATENCY_SLACK_S = 0.1
# The connection-limit server.
MAX_CONNECTIONS = 8
OVER_LIMIT = 4
REFUSED_WITHIN_S = 2.0
# Bounded polls for the server's gauges to settle after the clients closed.
SETTLE_POLLS = 100
SETTLE_POLL_S = 0.1


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], [
            "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S),
            "--keepalive-timeout", str(KEEPALIVE_TIMEOUT_S), "--cache-entries", "0"]) as live:
        yield live


@dataclass
class Slow:
    kind: str
    lifetime: float | None = None  # None: still open when the client gave up
    answer: bytes = b""
    sent: int = 0
    errors: list[str] = field(default_factory=list)


async def trickle(port: int, kind: str, first: bytes, drip: bytes) -> Slow:
    """Send `first`, then `drip` once a second until the server closes (or SLOW_BOUND_S)."""
    loop = asyncio.get_running_loop()
    slow = Slow(kind)
    reader, writer = await asyncio.open_connection(HOST, port)
    opened = loop.time()

    async def read_to_close() -> None:
        try:
            while chunk := await reader.read(65536):
                slow.answer += chunk
        except ConnectionError as exc:
            slow.errors.append(type(exc).__name__)
        slow.lifetime = loop.time() - opened

    reading = asyncio.create_task(read_to_close())
    try:
        writer.write(first)
        while loop.time() - opened < SLOW_BOUND_S:
            done, _ = await asyncio.wait({reading}, timeout=DRIP_S)
            if done:
                break
            writer.write(drip)
            await writer.drain()
            slow.sent += len(drip)
        await asyncio.wait({reading}, timeout=max(0.0, SLOW_BOUND_S - (loop.time() - opened)))
    except ConnectionError as exc:  # writing to a connection the server has closed
        slow.errors.append(type(exc).__name__)
        await asyncio.wait({reading}, timeout=CLOSE_MARGIN_S)
    finally:
        reading.cancel()
        writer.close()
    return slow


def slow_flood(port: int) -> list[asyncio.Task[Slow]]:
    post = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body_head = (post + b"Content-Type: application/json\r\n"
                 + f"Content-Length: {BODY_BYTES}\r\n\r\n".encode() + b'{"model": "tiny"')
    kinds = ([("line", b"POST /v1/embeddings", b"x")] * SLOW_LINE
             + [("headers", post + b"X-Slow: ", b"a")] * SLOW_HEADERS
             + [("body", body_head, b" ")] * SLOW_BODY)
    return [asyncio.create_task(trickle(port, kind, first, drip)) for kind, first, drip in kinds]


async def normal_latencies(session: aiohttp.ClientSession, base: str, first: int,
                           count: int) -> list[float]:
    """`count` sequential embeddings requests (fresh texts); each must be a whole 200."""
    out: list[float] = []
    for i in range(first, first + count):
        body = {"model": "tiny", "input": [words_text(i * NORMAL_INPUTS + k, 8)
                                           for k in range(NORMAL_INPUTS)]}
        started = time.perf_counter()
        async with session.post(f"{base}/v1/embeddings", json=body) as r:
            answer = await r.json()
            assert r.status == 200, (r.status, answer)
        out.append(time.perf_counter() - started)
        assert len(answer["data"]) == NORMAL_INPUTS
    return out


async def gauges(base: str) -> tuple[float, float]:
    """(open connections, requests in flight) from /metrics; the scrape's own connection and
    request included."""
    text = await asyncio.to_thread(scrape, base)
    return (metric_sum(text, "edge_embed_open_connections"),
            metric_sum(text, "edge_embed_inflight_requests"))


async def wait_gauges(base: str, done: Callable[[float, float], bool]) -> tuple[float, float]:
    """The gauges once `done(open, inflight)` holds, or as they are after SETTLE_POLLS polls."""
    seen = await gauges(base)
    for _ in range(SETTLE_POLLS):
        if done(*seen):
            break
        await asyncio.sleep(SETTLE_POLL_S)
        seen = await gauges(base)
    return seen


async def settle(base: str) -> tuple[float, float]:
    """The gauges once only the scrape's own connection and request are left."""
    return await wait_gauges(base, lambda conns, inflight: conns <= 1 and inflight <= 1)


def head_and_body(answer: bytes) -> tuple[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode("latin-1"), json.loads(body)


async def test_slow_connections_are_cut_and_others_are_served(
        server: Live, capsys: pytest.CaptureFixture[str]) -> None:
    base = server.url
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=timeout) as session:
        await normal_latencies(session, base, 0, WARMUP_REQUESTS)
        baseline = await normal_latencies(session, base, 100, NORMAL_REQUESTS)

        flood = slow_flood(server.port)
        flood_at = time.monotonic()
        # Every slow connection open (the scrape's own one is counted too) before measuring.
        held, _ = await wait_gauges(base, lambda conns, _: conns > len(flood))
        during = await normal_latencies(session, base, 200, NORMAL_REQUESTS)
        still_held, inflight_during = await gauges(base)
        measured_within = time.monotonic() - flood_at
        slows = await asyncio.gather(*flood)
        after = await settle(base)

    by_kind: dict[str, list[Slow]] = {}
    for slow in slows:
        by_kind.setdefault(slow.kind, []).append(slow)

    def spread(kind: str) -> str:
        lives = [s.lifetime for s in by_kind[kind] if s.lifetime is not None]
        if not lives:
            return f"{kind}: none closed"
        return (f"{kind}: {len(lives)}/{len(by_kind[kind])} closed after "
                f"{min(lives):.2f}-{max(lives):.2f} s")

    summary = (f"baseline median {statistics.median(baseline) * 1000:.1f} ms "
               f"(max {max(baseline) * 1000:.1f}), during the slow flood median "
               f"{statistics.median(during) * 1000:.1f} ms (max {max(during) * 1000:.1f}); "
               f"held {still_held:.0f} connections, {inflight_during:.0f} requests in flight; "
               + "; ".join(spread(k) for k in ("line", "headers", "body"))
               + f"; after: {after[0]:.0f} open, {after[1]:.0f} in flight")
    with capsys.disabled():
        print(f"\nslow clients: {summary}")

    # The flood was really there while the normal clients were measured.
    assert held > len(flood), f"the slow connections never all opened: {summary}"
    assert still_held > len(flood), \
        f"slow connections closed before the normal clients were done ({measured_within:.1f} s)"
    # The body ones are requests in flight (their handler waits on the body), plus the scrape.
    assert inflight_during >= SLOW_BODY + 1, summary

    # Others served normally meanwhile.
    assert statistics.median(during) <= (LATENCY_FACTOR * statistics.median(baseline)
                                         + LATENCY_SLACK_S), summary

    # Every slow connection closed by the server, within its timeout and not long before it.
    for kind, bound in (("line", HEADER_TIMEOUT_S), ("headers", HEADER_TIMEOUT_S),
                        ("body", BODY_TIMEOUT_S + LINGER_S)):
        for slow in by_kind[kind]:
            assert slow.lifetime is not None, f"a slow {kind} connection was never closed: " \
                + summary
            assert EARLY_SHARE * bound <= slow.lifetime <= bound + CLOSE_MARGIN_S, \
                f"a slow {kind} connection lived {slow.lifetime:.2f} s; bound {bound} s"
    for slow in by_kind["body"]:
        head, body = head_and_body(slow.answer)
        assert head.startswith("HTTP/1.1 408 "), head
        assert "connection: close" in head.lower(), head
        error = assert_openai_error(body, 408, code="request_timeout")
        assert error["param"] == "body", error
    for kind in ("line", "headers"):
        assert all(not s.answer for s in by_kind[kind]), f"a slow {kind} connection got an answer"

    # Nothing left behind: only the scrape's own connection and request.
    assert after == (1.0, 1.0), summary
    text = await asyncio.to_thread(scrape, base)
    assert metric_sum(text, "edge_embed_dropped_connections_total",
                      reason="header_timeout") >= SLOW_LINE + SLOW_HEADERS
    assert metric_sum(text, "edge_embed_requests_total", route="/v1/embeddings",
                      status="408") == SLOW_BODY


async def idle_lifetime(port: int, request: bytes | None) -> tuple[float | None, bytes]:
    """How long after its last answer (or its opening) the server keeps a silent connection."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        if request is not None:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answer = head + await reader.readexactly(length)
        else:
            answer = b""
        idle_from = loop.time()
        try:
            rest = await asyncio.wait_for(reader.read(), KEEPALIVE_TIMEOUT_S + SLOW_BOUND_S)
        except TimeoutError:
            return None, answer
        assert rest == b"", rest
        return loop.time() - idle_from, answer
    finally:
        writer.close()


def test_info_shows_the_connection_limits(server: Live) -> None:
    status, _, info = http("GET", f"{server.url}/info")
    assert status == 200 and isinstance(info, dict)
    assert info["limits"]["connections"] == {
        "header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S,
        "keepalive_timeout_s": KEEPALIVE_TIMEOUT_S,
        "max_connections": ConnectionLimits().max_connections}


async def test_idle_connections_are_closed_at_their_bound(server: Live) -> None:
    health = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    (kept, answer), (silent, _) = await asyncio.gather(
        idle_lifetime(server.port, health), idle_lifetime(server.port, None))
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert kept is not None, "an idle keep-alive connection was never closed"
    # Not before the keep-alive bound: the shorter header timeout does not cut it.
    assert EARLY_SHARE * KEEPALIVE_TIMEOUT_S <= kept <= KEEPALIVE_TIMEOUT_S + CLOSE_MARGIN_S, kept
    assert silent is not None, "a connection that never sent a byte was never closed"
    assert EARLY_SHARE * HEADER_TIMEOUT_S <= silent <= HEADER_TIMEOUT_S + CLOSE_MARGIN_S, silent


async def get_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   path: str) -> tuple[int, bytes]:
    """One keep-alive GET on a held connection: (status, body)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_MARGIN_S * 4)
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines
                  if line.lower().startswith(b"content-length:"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def test_connections_past_the_limit_are_refused(tiny_bundle: Path) -> None:
    # A long header timeout: the held connections sit idle through the whole test.
    with live_server([tiny_bundle], ["--max-connections", str(MAX_CONNECTIONS),
                                     "--header-timeout", "60"]) as live:
        port = live.port
        held = [await asyncio.open_connection(HOST, port) for _ in range(MAX_CONNECTIONS)]
        try:
            status, text = await get_over(*held[0], "/metrics")
            assert status == 200
            opened = metric_sum(text.decode(), "edge_embed_open_connections")
            assert opened == MAX_CONNECTIONS, f"{opened} open, {MAX_CONNECTIONS} held"

            async def refused() -> tuple[float, bytes]:
                reader, writer = await asyncio.open_connection(HOST, port)
                started = time.monotonic()
                try:
                    answer = await asyncio.wait_for(reader.read(), REFUSED_WITHIN_S)
                    return time.monotonic() - started, answer
                except TimeoutError:
                    return REFUSED_WITHIN_S, b"(still open)"
                finally:
                    writer.close()

            extra = await asyncio.gather(*(refused() for _ in range(OVER_LIMIT)))
            for took, answer in extra:
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert took < REFUSED_WITHIN_S, took
                head, body = head_and_body(answer)
                assert "retry-after: 1" in head.lower(), head
                assert_openai_error(body, 503, code="service_unavailable")
            status, text = await get_over(*held[0], "/metrics")
            assert metric_sum(text.decode(), "edge_embed_dropped_connections_total",
                              reason="limit") == OVER_LIMIT
            assert metric_sum(text.decode(), "edge_embed_open_connections") == MAX_CONNECTIONS
        finally:
            for _, writer in held:
                writer.close()

        # The held ones closed: new clients are served again.
        body = {"model": "tiny", "input": ["served again"]}
        for _ in range(SETTLE_POLLS):
            served, _, reply = await asyncio.to_thread(
                http, "POST", f"{live.url}/v1/embeddings", body=body)
            if served == 200:
                break
            await asyncio.sleep(SETTLE_POLL_S)
        assert served == 200, (served, reply)
        open_now, _ = await settle(live.url)
        assert open_now == 1, f"{open_now} connections still counted open"


async def test_a_client_leaving_mid_body_is_a_499_not_a_fault(server: Live) -> None:
    before = await asyncio.to_thread(scrape, server.url)
    _, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"")
    await writer.drain()
    # the request is in its handler, waiting on the body (the scrape is the other one)
    _, inflight = await wait_gauges(server.url, lambda _, inflight: inflight >= 2)
    assert inflight >= 2, "the half-sent request never reached its handler"
    writer.close()
    await settle(server.url)
    after = await asyncio.to_thread(scrape, server.url)

    def count(text: str, status: str) -> float:
        return metric_sum(text, "edge_embed_requests_total", route="/v1/embeddings",
                          status=status)

    assert count(after, "499") - count(before, "499") == 1
    assert count(after, "500") == count(before, "500") == 0
    assert "Traceback" not in server.log_text()


# SIGTERM with slow connections held: the drain ends when their bodies time out, long before
# the drain timeout, and the process exits 0.
DRAIN_TIMEOUT_S = 30.0
DRAIN_BODY_TIMEOUT_S = 3.0
DRAIN_SLOW = 10  # of each kind: body, headers


async def test_sigterm_with_slow_connections_drains_at_the_body_timeout(
        tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = Live([tiny_bundle], ["--body-timeout", str(DRAIN_BODY_TIMEOUT_S),
                                "--drain-timeout", str(DRAIN_TIMEOUT_S)]).start()
    try:
        post = b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        body_head = (post + b"Content-Type: application/json\r\n"
                     + f"Content-Length: {BODY_BYTES}\r\n\r\n".encode())
        slow = [asyncio.create_task(trickle(live.port, kind, first, drip))
                for kind, first, drip in [("body", body_head, b" ")] * DRAIN_SLOW
                + [("headers", post + b"X-Slow: ", b"a")] * DRAIN_SLOW]
        _, inflight = await wait_gauges(live.url, lambda _, inflight: inflight > DRAIN_SLOW)
        assert inflight > DRAIN_SLOW, "the slow bodies never reached their handler"
        live.sigterm()
        signalled = time.monotonic()
        code = await asyncio.to_thread(live.wait, DRAIN_TIMEOUT_S + CLOSE_MARGIN_S)
        exited_after = time.monotonic() - signalled
        slows = await asyncio.gather(*slow)
    finally:
        live.stop()
    with capsys.disabled():
        print(f"\nSIGTERM with {2 * DRAIN_SLOW} slow connections: exit {code} after "
              f"{exited_after:.2f} s (body timeout {DRAIN_BODY_TIMEOUT_S} s, drain timeout "
              f"{DRAIN_TIMEOUT_S} s)")
    assert code == 0, f"exit code {code} (None: still running after {exited_after:.1f} s)"
    assert exited_after <= DRAIN_BODY_TIMEOUT_S + LINGER_S + CLOSE_MARGIN_S, exited_after
    for s in slows:
        assert s.lifetime is not None, f"a slow {s.kind} connection outlived the server"
        if s.kind == "body":
            assert s.answer.startswith(b"HTTP/1.1 408 "), s.answer[:100]


# The open-file limit: a server started under a soft limit too low for its connections raises
# it (as far as the hard limit allows), so that past the limit a client gets the 503, not an
# accept() that fails unanswered.
FITTED_CONNECTIONS = 600


def test_the_start_raises_the_open_file_limit_to_fit_the_connections(
        tiny_bundle: Path) -> None:
    want = FITTED_CONNECTIONS + FILES_BESIDE_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= want, f"this box's hard limit is {hard}"
    low = len(os.listdir("/proc/self/fd")) + 64  # what this process needs, with room
    assert low < want
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:  # the server process inherits the low limit
        live = Live([tiny_bundle], ["--max-connections", str(FITTED_CONNECTIONS)])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with live:
        live.start()
        limits = Path(f"/proc/{live.proc.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert int(line.split()[3]) == want, line
