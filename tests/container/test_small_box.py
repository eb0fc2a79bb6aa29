"""The image on one CPU and 256 MiB (`--cpuset-cpus 0 --memory 256m`, enforced by podman with
runc here: the container reads a 268435456-byte limit) with the documented small-box settings
(service/limits.py, SMALL_BOX_FLAGS, given as EDGE_EMBED_* variables as a deployment would):
600 requests of 8 long texts at once get only 200 and 429 answers, the container is not killed
for memory, and it serves normally afterwards. Marked `container`: `make image-test` runs it.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_embed.bench.flood import FLOOD_REQUESTS, flood, long_texts
from edge_embed.service.address import env_name
from edge_embed.service.limits import SMALL_BOX_FLAGS
from edge_embed.service.process import free_port
from tests.container import engine
from tests.container.test_image import BUNDLE, IN_IMAGE, READY_TIMEOUT_S, models
from tests.reliability_server import http

pytestmark = pytest.mark.container

MEMORY = "256m"
MEMORY_BYTES = 256 * 1024 * 1024
# Where the container reads its memory limit: cgroup v2, else v1.
CGROUP_V2_LIMIT = "/sys/fs/cgroup/memory.max"
CGROUP_V1_LIMIT = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
TEXTS = 2048


def small_box_env() -> dict[str, str]:
    env = {}
    for flag in SMALL_BOX_FLAGS:
        name, value = flag.split("=", 1)
        env[env_name(name)] = value
    return env


def test_one_cpu_256_mib_survives_the_flood() -> None:
    bundle = models() / BUNDLE
    model = engine.manifest_id(bundle)
    env = {"EDGE_EMBED_MODEL": IN_IMAGE, **small_box_env()}
    with engine.running(engine.image(), free_port(), env, [(bundle, IN_IMAGE)],
                        extra=["--memory", MEMORY, "--cpuset-cpus", "0"]) as box:
        box.wait_ready(READY_TIMEOUT_S)
        limit = box.exec("sh", "-c", f"cat {CGROUP_V2_LIMIT} 2>/dev/null || "
                                     f"cat {CGROUP_V1_LIMIT}").stdout.strip()
        assert limit == str(MEMORY_BYTES), f"the memory limit is not enforced here: {limit!r}"
        result = asyncio.run(flood(box.url, model, long_texts(TEXTS), FLOOD_REQUESTS))
        statuses = result.statuses
        killed = box.inspect("{{.State.OOMKilled}}")
        running = box.inspect("{{.State.Running}}")
        status, _, body = http("POST", box.url + "/v1/embeddings",
                               body={"model": model, "input": "after the flood"})
        report = (f"statuses {dict(statuses)}, OOMKilled {killed}, running {running}, slowest "
                  f"200 {result.slowest(200):.1f} s")
        print("\n" + report)
        assert killed == "false" and running == "true", report + "\n" + box.logs()[-2000:]
        assert set(statuses) <= {200, 429}, report
        assert statuses[200] > 0, report
        assert status == 200 and isinstance(body, dict) and len(body["data"]) == 1, (status, body)
