"""Graceful shutdown: SIGTERM under load loses no accepted request.

A live server gets SIGTERM while requests are queued. At once /ready turns 503 and new requests
get 503; the requests in flight finish with complete 200 answers; the process exits 0 within
the drain timeout. Every 200 the server logged reached its client whole, and every request sent
got an answer (200 or a clean 503), never a dropped connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import aiohttp

from tests.fixtures.server import Live
from tests.reliability_server import assert_openai_error, metric_sum, scrape, words_text

DRAIN_TIMEOUT_S = 15.0
# Per-request deadline shorter than the drain (as the service's defaults are), so no request
# in flight can outlive the drain.
REQUEST_TIMEOUT_S = 10.0
# Exit is interpreter teardown after the drain: seconds at most, even on a busy machine.
EXIT_MARGIN_S = 10.0
# Load in flight at SIGTERM: 16 requests of 256 ~64-token inputs, about a second of model time
# for the tiny bundle on 2 cores: the drain has real work to finish.
IN_FLIGHT = 16
INPUTS_PER_REQUEST = 256
WORDS_PER_INPUT = 40
DIMENSIONS = 32  # the tiny bundle's
CLIENT_TIMEOUT_S = 60.0
# Probes of /ready and new requests during the drain.
PROBES = 5
# From SIGTERM to /ready 503: one turn of the event loop; 1 s is for a machine under load.
SIGNAL_GRACE_S = 1.0

def payload(i: int, inputs: int = INPUTS_PER_REQUEST) -> dict[str, object]:
    texts = [words_text(i * inputs + k, WORDS_PER_INPUT) for k in range(inputs)]
    return {"model": "tiny", "input": texts, "encoding_format": "base64"}


def complete(body: bytes, inputs: int) -> bool:
    """A whole, parseable answer with one vector of the right size per input."""
    try:
        data = json.loads(body)["data"]
        return len(data) == inputs and all(
            len(base64.b64decode(d["embedding"])) == 4 * DIMENSIONS for d in data)
    except (ValueError, KeyError, TypeError):
        return False


async def _send(session: aiohttp.ClientSession, base: str, i: int) -> tuple[int | str, bool]:
    try:
        async with session.post(f"{base}/v1/embeddings", json=payload(i),
                                timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)) as r:
            body = await r.read()
            return r.status, complete(body, INPUTS_PER_REQUEST) if r.status == 200 else True
    except (TimeoutError, aiohttp.ClientError) as err:
        return type(err).__name__, False


def logged_embedding_200s(log: str) -> int:
    """Requests the server's access log records as answered 200 on an embeddings route."""
    count = 0
    for line in log.splitlines():
        # Lines are "<time> INFO edge_embed.access {json}"; the JSON object is the record.
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("status") != 200:
            continue
        if "embeddings" in str(record.get("path", "")):
            count += 1
    return count


async def test_sigterm_drains_in_flight_requests_and_exits_0(tiny_bundle: Path) -> None:
    server = Live([tiny_bundle], [
        "--drain-timeout", str(DRAIN_TIMEOUT_S), "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--cache-entries", "0", "--access-log"]).start()
    base = server.url
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as probe:
            in_flight = [asyncio.create_task(_send(session, base, i)) for i in range(IN_FLIGHT)]
            # SIGTERM once work is really queued in the server (not merely sent).
            deadline = time.monotonic() + 30
            while metric_sum(await asyncio.to_thread(scrape, base),
                             "edge_embed_queue_inputs") == 0:
                assert time.monotonic() < deadline, "the load never reached the queue"
                assert not all(t.done() for t in in_flight), "the load finished before SIGTERM"
                await asyncio.sleep(0.01)
            server.sigterm()
            sigterm_at = time.monotonic()

            # The signal is handled by the event loop, so a probe racing it may still see 200;
            # allow that race (SIGNAL_GRACE_S), then every probe must see the drain.
            while True:
                async with probe.get(f"{base}/ready") as r:
                    if r.status == 503:
                        break
                assert time.monotonic() - sigterm_at < SIGNAL_GRACE_S, "/ready still 200"
                await asyncio.sleep(0.005)
            ready: list[int] = []
            refused: list[tuple[int, object]] = []
            for i in range(PROBES):
                async with probe.get(f"{base}/ready") as r:
                    ready.append(r.status)
                async with probe.post(f"{base}/v1/embeddings",
                                      json=payload(90_000 + i, 1)) as r:
                    refused.append((r.status, await r.json(content_type=None)))
            drained_during_probes = all(t.done() for t in in_flight)

            results = await asyncio.gather(*in_flight)
        code = await asyncio.to_thread(server.wait, DRAIN_TIMEOUT_S + EXIT_MARGIN_S)
        exited_after = time.monotonic() - sigterm_at
    finally:
        server.stop()

    # /ready and new requests: 503 from the first probe after SIGTERM on.
    assert not drained_during_probes, "the in-flight load ended before the probes: no drain seen"
    assert ready == [503] * PROBES, f"/ready during the drain: {ready}"
    for status, body in refused:
        assert status == 503, f"a new request during the drain got {status}"
        assert_openai_error(body, 503)

    # In-flight requests: each answered whole; none cut off by the exit.
    errors = [s for s, _ in results if not isinstance(s, int)]
    assert not errors, f"requests in flight lost their connection: {errors}"
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503}, f"in-flight statuses {statuses}"
    assert statuses.count(200) > 0, "no request in flight was finished by the drain"
    assert all(ok for _, ok in results), "a 200 answer was incomplete"

    assert code == 0, f"exit code {code} (None: still running {exited_after:.1f} s after SIGTERM)"
    assert exited_after <= DRAIN_TIMEOUT_S + EXIT_MARGIN_S

    # Nothing the server answered 200 went missing on the way out.
    assert logged_embedding_200s(server.log_text()) == statuses.count(200), (
        "the server logged a different number of 200 answers than the clients received:\n"
        + server.log_text()[-3000:])
