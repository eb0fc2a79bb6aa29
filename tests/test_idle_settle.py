"""The arena given back after the load stops (service/engine.py, IDLE_SETTLE_S): a live server
settles once after a burst, and not while it has had no runs since the warm-up (which gives the
arena back itself)."""

from __future__ import annotations

import time
from pathlib import Path

from edge_embed.service.engine import IDLE_SETTLE_S
from tests.fixtures.server import live_server
from tests.reliability_server import get, http

# Polls of /health for the settle after the burst: a few settle periods on a busy machine.
WAIT_S = 20 * IDLE_SETTLE_S


def _settles(url: str) -> int:
    status, body = get(url + "/health")
    assert status == 200 and isinstance(body, dict), body
    return int(body["models"]["tiny"]["idle_settles"])


def test_settles_once_after_a_burst_and_never_without_runs(tiny_bundle: Path) -> None:
    with live_server([tiny_bundle]) as live:
        time.sleep(3 * IDLE_SETTLE_S)
        assert _settles(live.url) == 0  # no run since the warm-up: nothing to give back
        for i in range(3):
            status, _, body = http("POST", live.url + "/v1/embeddings", body={
                "model": "tiny", "input": [f"burst {i} " + "word " * 40] * 16})
            assert status == 200, body
        deadline = time.monotonic() + WAIT_S
        while _settles(live.url) == 0:
            assert time.monotonic() < deadline, "no settle after the burst"
            time.sleep(0.1)
        time.sleep(3 * IDLE_SETTLE_S)
        assert _settles(live.url) == 1  # once per burst, not once per period
        status, _, body = http("POST", live.url + "/v1/embeddings",
                               body={"model": "tiny", "input": "after"})
        assert status == 200, body
