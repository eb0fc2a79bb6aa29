"""The images `make image` builds, run as a user would run them (`make image-test`; needs podman
or docker, hence marked `container` and left out of `make test`).

Both images: edge-embed:<version> with the host's int8 MiniLM bundle (`make model`) mounted at
/models, and edge-embed:<version>-minilm with the one its build made inside. Each must be ready
soon after its start, serve the official openai client the vectors the host's own service gives
for the very bundle the container serves (the -minilm one copied out of the image), run as uid
1000 on a read-only root with nothing writable, report healthy through the image's HEALTHCHECK
on the port it was given, and drain and exit 0 on SIGTERM. The bundle built in the image must be
the host's `make model` output byte for byte, bundle.json apart from its "build" field (when and
how long: the recipe is byte-reproducible otherwise, `make model-repro`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_embed.core.bundle import MANIFEST_NAME
from edge_embed.core.canary import CANARY_FILE
from edge_embed.core.files import sha256
from edge_embed.quantize.repro import manifest_without_build
from edge_embed.service.limits import MAX_BODY_BYTES
from edge_embed.service.process import ServiceProcess, free_port
from edge_embed.service.settings import DRAIN_TIMEOUT_S
from tests.container import engine
from tests.container.sizes import MAX_ABOVE_BASE_BYTES
from tests.fixtures.server import live_server
from tests.reliability_server import post_bodies, token_ids_body

pytestmark = pytest.mark.container

BUNDLE = "all-minilm-l6-v2-int8"
IN_IMAGE = f"/models/{BUNDLE}"  # where the -minilm image carries it, and where it is mounted
BASE = "docker.io/library/debian:bookworm-slim"
# The manifest records the folder a bundle was exported from: a place, not the bundle's content.
SOURCE_FIELD, SOURCE_PATH_KEY = "source", "path"
UID = "1000"
# A layer's size counts its tar headers and directory entries besides the files' bytes.
BUNDLE_LAYER_SLACK_BYTES = 64 * 1024
# From the container's start to /ready: a sidecar or a scaled-out pod serves within this.
READY_LIMIT_S = 2.0
# Waiting for /ready at all (a shared 2-core machine); the bound above is asserted separately.
READY_TIMEOUT_S = 60.0
# Starts timed per image: the fastest is the one compared with the bound, because on a machine
# shared with other work the others measure the neighbours too (each start is printed).
READY_STARTS = 3
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge boxes run embedding models next to the data.",
    "short",
    "A somewhat longer sentence, so that the batch is padded to more than one width, which is "
    "where a difference between two builds of the same runtime would show.",
]


@dataclass
class Started:
    container: engine.Container
    ready_s: float  # from the container's process start to the first 200 from /ready
    cpu_s: float  # CPU time the server used until then
    model: str
    bundle: Path  # the bundle the container serves, on the host (the -minilm one copied out)


def models() -> Path:
    value = os.environ.get("EDGE_EMBED_MODELS")
    if not value or not (Path(value) / BUNDLE / "bundle.json").is_file():
        pytest.fail(f"EDGE_EMBED_MODELS must hold {BUNDLE} (make model; make image-test sets it)")
    return Path(value)


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle the -minilm image's build made, copied out of the image."""
    return engine.copy_out(engine.image() + "-minilm", IN_IMAGE,
                           tmp_path_factory.mktemp("image") / BUNDLE)


def start(variant: str, image_bundle: Path) -> Iterator[Started]:
    if variant == "mounted":
        bundle = models() / BUNDLE
        name, env, mounts = engine.image(), {"EDGE_EMBED_MODEL": IN_IMAGE}, [(bundle, IN_IMAGE)]
    else:
        bundle = image_bundle
        name, env, mounts = engine.image() + "-minilm", {}, []
    with engine.running(name, free_port(), env, mounts) as container:
        ready_at = container.wait_ready(READY_TIMEOUT_S)
        yield Started(container, ready_at - container.started_at(), container.cpu_seconds(),
                      engine.manifest_id(bundle), bundle)


@pytest.fixture(scope="module", params=["mounted", "minilm"])
def started(request: pytest.FixtureRequest, image_bundle: Path) -> Iterator[Started]:
    yield from start(request.param, image_bundle)


def host_vectors(bundle: Path) -> np.ndarray:
    """What the host's own service (this checkout, the host's venv) gives for TEXTS."""
    with live_server([bundle]) as live:
        return embed(live.url, engine.manifest_id(bundle))


def embed(url: str, model: str, texts: list[str] = TEXTS) -> np.ndarray:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model=model, input=texts)
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def host_ready_s() -> float:
    """The same bundle served by a host process: start to /ready, the baseline for the image."""
    with ServiceProcess(models() / BUNDLE) as server:
        return server.wait_ready(READY_TIMEOUT_S, engine.READY_POLL_S)


def test_the_image_bundle_is_the_hosts_make_model_output(image_bundle: Path) -> None:
    host = models() / BUNDLE
    names = {p.name for p in image_bundle.iterdir()}
    assert names == {p.name for p in host.iterdir()}
    assert {MANIFEST_NAME, "model.onnx", "tokenizer.json", CANARY_FILE} <= names, names
    # The files that carry no time or place: the same bytes.
    for name in sorted(names - {MANIFEST_NAME}):
        assert sha256(image_bundle / name) == sha256(host / name), f"{name}: bytes differ"
    # The manifest: every field, but for "build" (created, seconds: when and how long) and
    # source.path (the folder it was built in, /src/models/src/... in the image's stage).
    in_image, on_host = manifest_without_build(image_bundle), manifest_without_build(host)
    for manifest in (in_image, on_host):
        manifest[SOURCE_FIELD].pop(SOURCE_PATH_KEY)
    assert in_image == on_host


@pytest.mark.parametrize("variant", ["mounted", "minilm"])
def test_ready_within_two_seconds_of_start(variant: str, image_bundle: Path) -> None:
    host: list[float] = []
    runs: list[Started] = []
    for _ in range(READY_STARTS):  # interleaved, so that both see the same neighbours
        host.append(host_ready_s())
        runs += list(start(variant, image_bundle))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report = (f"{variant}: ready {', '.join(f'{r.ready_s:.2f}' for r in runs)} s after the "
              f"container's start, using {', '.join(f'{r.cpu_s:.2f}' for r in runs)} CPU-s; a "
              f"host process: {', '.join(f'{t:.2f}' for t in host)} s (load average {load})")
    print("\n" + report)
    assert 0 < min(r.ready_s for r in runs) <= READY_LIMIT_S, report


def test_openai_client_gets_the_hosts_vectors(started: Started) -> None:
    vectors, host = embed(started.container.url, started.model), host_vectors(started.bundle)
    assert vectors.shape == host.shape == (len(TEXTS), 384)
    np.testing.assert_array_equal(vectors, host)


def test_runs_as_uid_1000_on_a_read_only_root(started: Started) -> None:
    c = started.container
    assert c.exec("id", "-u").stdout.strip() == UID
    # PID 1 is the server itself (exec form, no shell), so SIGTERM reaches it.
    assert "edge-embed" in c.exec("cat", "/proc/1/cmdline").stdout
    for path in ("/probe", "/tmp/probe", "/opt/edge-embed/probe", IN_IMAGE + "/probe"):
        assert c.exec("touch", path).returncode != 0, f"{path} is writable"


def test_healthcheck_turns_healthy_on_the_configured_port(started: Started) -> None:
    c = started.container
    assert c.port != 8000  # the check must follow EDGE_EMBED_PORT, not assume the default
    if engine.engine() == "podman":
        done = engine.command("healthcheck", "run", c.name, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + READY_TIMEOUT_S  # docker runs it on its own schedule
    while (health := c.inspect("{{.State.Health.Status}}")) != "healthy":
        assert health in ("starting", ""), health
        assert time.monotonic() < deadline, f"health still {health!r}"
        time.sleep(1)


@pytest.mark.parametrize("variant", ["mounted", "minilm"])
def test_sigterm_drains_and_exits_zero(variant: str, image_bundle: Path) -> None:
    for s in start(variant, image_bundle):
        c = s.container
        assert embed(c.url, s.model).shape == (len(TEXTS), 384)
        c.signal("TERM")
        began = time.monotonic()
        code = c.wait(timeout=DRAIN_TIMEOUT_S + 10)
        took = time.monotonic() - began
        print(f"\n{c.name}: exit {code} {took:.2f} s after SIGTERM")
        assert code == 0, c.logs()
        assert took < DRAIN_TIMEOUT_S, f"stopped after {took:.1f} s"

def test_runtime_layers_stay_small_and_the_model_image_adds_only_its_bundle(
        image_bundle: Path) -> None:
    """The bundle's build stage leaves nothing of the export stack in the -minilm image."""
    base, runtime = engine.image_size(BASE), engine.image_size(engine.image())
    with_bundle = engine.image_size(engine.image() + "-minilm")
    bundle = sum(f.stat().st_size for f in image_bundle.iterdir())
    print(f"\n{engine.image()}: {(runtime - base) / 1e6:.1f} MB above {BASE}; -minilm: "
          f"{(with_bundle - runtime) / 1e6:.1f} MB more (the bundle: {bundle / 1e6:.1f} MB)")
    assert 0 < runtime - base <= MAX_ABOVE_BASE_BYTES
    assert bundle <= with_bundle - runtime <= bundle + BUNDLE_LAYER_SLACK_BYTES


# Twenty bodies of token ids just under the 16 MiB limit, at once, against a container capped at
# 512 MiB: parsed as Python ints, each took ~160 MB, so a handful of them killed it.
FLOOD_BODIES = 20
FLOOD_BODY_BYTES = MAX_BODY_BYTES - 64 * 1024
MEMORY_LIMIT = "512m"
# MiniLM's vocabulary holds these ids (5 bytes each with the comma).
FLOOD_LOW_ID = 1000
FLOOD_STATUSES = {200, 413, 429, 503}


def test_twenty_big_token_id_bodies_under_512_mib() -> None:
    bundle = models() / BUNDLE
    model = engine.manifest_id(bundle)
    bodies = [token_ids_body(i, model, FLOOD_BODY_BYTES, low=FLOOD_LOW_ID)
              for i in range(FLOOD_BODIES)]
    with engine.running(engine.image(), free_port(), {"EDGE_EMBED_MODEL": IN_IMAGE},
                        [(bundle, IN_IMAGE)], extra=["--memory", MEMORY_LIMIT]) as c:
        c.wait_ready(READY_TIMEOUT_S)
        answers = post_bodies(f"{c.url}/v1/embeddings", bodies)
        running, oom, code = c.inspect(
            "{{.State.Running}} {{.State.OOMKilled}} {{.State.ExitCode}}").split()
        report = (f"{c.name} under --memory {MEMORY_LIMIT}: {answers}; running {running}, "
                  f"OOM-killed {oom}, exit code {code}")
        print("\n" + report)
        assert (running, oom) == ("true", "false"), report + "\n" + c.logs()
        assert {s for s, _ in answers} <= FLOOD_STATUSES, report
        assert all(retry for s, retry in answers if s in (429, 503)), report
        # Served normally after.
        assert embed(c.url, model).shape == (len(TEXTS), 384)
