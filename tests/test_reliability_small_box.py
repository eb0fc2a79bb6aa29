"""One core and 256 MiB: the small-box flags (service/limits.py, SMALL_BOX_FLAGS) under the flood.

The real int8 MiniLM bundle, the server pinned to one CPU (as `--cpuset-cpus 0` or taskset pins
it) with the documented small-box flags. 600 requests of 8 long texts arrive at once: every
answer must be a 200 or a 429, the process's peak RSS (VmHWM, what a memory limit sees of it)
must stay inside 256 MiB with room for the kernel's socket buffers and page tables, and the
server must answer normally afterwards. The same run inside the image under `--memory 256m
--cpuset-cpus 0` is tests/container/test_small_box.py (`make image-test`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from edge_embed.bench.flood import FLOOD_REQUESTS, flood, long_texts
from edge_embed.core.bundle import load_manifest
from edge_embed.service.limits import SMALL_BOX_FLAGS
from tests.fixtures.server import live_server
from tests.reliability_server import get, http

pytestmark = pytest.mark.minilm

BOX_BYTES = 256 * 1024 * 1024
# Left of the 256 MiB for what a memory cgroup charges beside the process's RSS: kernel socket
# buffers of 600 connections, page tables, the page cache of the files it reads.
KERNEL_MARGIN_BYTES = 24 * 1024 * 1024
TEXTS = 2048


def test_one_core_256_mib_survives_the_flood(minilm_int8_bundle: Path) -> None:
    model = load_manifest(minilm_int8_bundle).id
    one = {min(os.sched_getaffinity(0))}
    with live_server([minilm_int8_bundle], SMALL_BOX_FLAGS, cpus=one) as live:
        info = get(live.url + "/info")[1]
        assert isinstance(info, dict) and info["threads"]["usable_cpus"] == 1, info
        result = asyncio.run(flood(live.url, model, long_texts(TEXTS), FLOOD_REQUESTS))
        statuses = result.statuses
        peak = live.peak_rss()
        status, _, body = http("POST", live.url + "/v1/embeddings",
                               body={"model": model, "input": "after the flood"})
    report = (f"statuses {dict(statuses)}, peak RSS {peak / 2**20:.0f} MiB, slowest 200 "
              f"{result.slowest(200):.1f} s")
    print("\n" + report)
    assert set(statuses) <= {200, 429}, report
    assert statuses[200] > 0, report
    assert peak <= BOX_BYTES - KERNEL_MARGIN_BYTES, report
    assert status == 200 and isinstance(body, dict) and len(body["data"]) == 1, (status, body)
