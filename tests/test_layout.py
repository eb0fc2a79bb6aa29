"""The thread layout that follows the load: a run alone in flight takes the session with every
thread, runs side by side take the single-threaded one; the two share their weights and give
identical vectors."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.cpus import plan_lone_threads
from edge_embed.core.encoder import BundleModel
from edge_embed.core.errors import BundleError
from edge_embed.core.runtime import RuntimeOptions, create_sessions
from edge_embed.core.shared_weights import shareable
from edge_embed.service.app import ENGINES, create_app
from edge_embed.service.limits import CacheLimits
from edge_embed.service.models import Registry
from edge_embed.service.settings import Settings
from tests.fixtures.server import AiohttpClient, Gate, live_server, until
from tests.reliability_server import get_json, http

TEXTS = ["a cat", "the quick brown fox jumps over the lazy dog " * 3, "x", "hello world again",
         "edge devices run small embedding models on a couple of cores " * 6]
LAYERED = RuntimeOptions(intra_op_threads=1, lone_threads=2, spinning=False)


def test_plan_lone_threads() -> None:
    assert plan_lone_threads(2, 1, None) is None  # the default: one session
    assert plan_lone_threads(16, 4, None) is None
    assert plan_lone_threads(2, 1, 2) == 2  # --lone-threads 2: the lone session on 2 CPUs
    assert plan_lone_threads(2, 2, 2) is None  # runs already have every CPU
    assert plan_lone_threads(8, 2, 4) == 4  # --lone-threads wins
    assert plan_lone_threads(2, 1, 1) is None  # --lone-threads 1: one session


def test_lone_session_deferred_until_completed(tiny_bundle: Path) -> None:
    model = BundleModel(tiny_bundle, replace(LAYERED, defer_lone=True))
    assert not model.sessions.layered  # every run takes the side session meanwhile
    model.sessions.complete()
    model.sessions.complete()  # idempotent
    assert model.sessions.threads() == {"side_by_side": 1, "lone": 2}


def test_one_session_unless_asked(tiny_bundle: Path) -> None:
    model = BundleModel(tiny_bundle, RuntimeOptions(intra_op_threads=1, spinning=False))
    assert not model.sessions.layered
    assert model.sessions.threads() == {"side_by_side": 1, "lone": 1}


def test_shared_weights_are_the_files(tiny_bundle: Path) -> None:
    """Sessions built on the shared arrays give the vectors of sessions built from the file:
    a misread tensor (offset, type, shape) would change them."""
    path = tiny_bundle / "model.onnx"
    arrays = shareable(path, min_bytes=0)
    assert any("word_embeddings" in name for name in arrays), sorted(arrays)
    assert all(a.flags.owndata for a in arrays.values())
    plain = BundleModel(tiny_bundle, RuntimeOptions(intra_op_threads=1, spinning=False))
    layered = BundleModel(tiny_bundle, LAYERED)
    assert layered.sessions.layered and layered.sessions.threads() == {"side_by_side": 1,
                                                                       "lone": 2}
    rows = [t.ids for t in plain.tokenizer.encode(TEXTS)]
    want = plain.run(rows)
    assert np.array_equal(layered.run(rows), want)
    assert np.array_equal(layered.run(rows, lone=True), want)


def test_unreadable_model_names_the_file(tmp_path: Path, tiny_bundle: Path) -> None:
    for name in ("bundle.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((tiny_bundle / name).read_bytes())
    (tmp_path / "model.onnx").write_bytes(b"\x3a\xff\xff\xff\xff\x0f")  # graph field, cut short
    manifest = load_manifest(tmp_path)
    with pytest.raises(BundleError, match=r"model\.onnx.*share"):
        create_sessions(tmp_path, manifest, LAYERED)


@pytest.fixture(scope="module")
def layered_registry(tiny_bundle: Path) -> Registry:
    return Registry.load((tiny_bundle,), LAYERED)


async def test_lone_run_takes_every_thread_concurrent_runs_do_not(
        layered_registry: Registry, aiohttp_client: AiohttpClient) -> None:
    settings = Settings(models=(layered_registry.get("tiny").model.folder,), concurrent_runs=2,
                        cache=CacheLimits(entries=0))
    client = await aiohttp_client(create_app(settings, registry=layered_registry))
    engine = client.app[ENGINES]["tiny"]
    gate = Gate(engine)
    engine._run_sync = gate  # type: ignore[method-assign]
    gate.open.set()
    body = {"model": "tiny", "input": TEXTS[0]}
    resp = await client.post("/v1/embeddings", json=body)
    assert resp.status == 200
    alone = (await resp.json())["data"][0]["embedding"]
    assert gate.lone == [True]
    # Held in its run, the first request keeps the second from being alone.
    gate.open.clear()
    first = asyncio.ensure_future(client.post("/v1/embeddings", json=body))
    await until(lambda: engine.running == 1)
    second = asyncio.ensure_future(client.post("/v1/embeddings", json=body))
    await until(lambda: engine.running == 2)
    gate.open.set()
    for resp in await asyncio.gather(first, second):
        assert resp.status == 200
        # whichever session ran it, the same vector
        assert (await resp.json())["data"][0]["embedding"] == alone
    assert gate.lone == [True, True, False]
    health = await (await client.get("/health")).json()
    runs = health["models"]["tiny"]["runs"]
    assert (runs["lone"], runs["side_by_side"]) == (2, 1)
    assert runs["threads"] == {"side_by_side": 1, "lone": 2}


# ---- the real model ---------------------------------------------------------------------------
# Polls of /health, 50 ms apart, for the lone session built after start-up (0.5 s on a busy
# 2-core machine; the margin is for a machine shared with other test runs).
LONE_BUILD_POLLS = 600
LONG = "Edge devices run small embedding models on a couple of CPU cores, close to the data. " * 12


@pytest.mark.minilm
def test_vectors_identical_on_either_session(minilm_int8_bundle: Path,
                                             minilm_fp32_bundle: Path) -> None:
    # The fixtures named in the signature (not looked up by name) mark this an export test.
    for bundle in (minilm_int8_bundle, minilm_fp32_bundle):
        model = BundleModel(bundle, LAYERED)
        assert model.sessions.shared_bytes > 0
        rows = [t.ids for t in model.tokenizer.encode([*TEXTS, LONG])]
        for batch in (rows, rows[:1], rows[-1:]):
            assert np.array_equal(model.run(batch, lone=True), model.run(batch)), bundle


def _post(url: str, body: dict[str, Any]) -> None:
    status, _, answer = http("POST", f"{url}/v1/embeddings", body=body, timeout=60)
    assert status == 200, answer


def _runs(url: str) -> dict[str, Any]:
    health = get_json(f"{url}/health", timeout=10)
    runs: dict[str, Any] = next(iter(health["models"].values()))["runs"]
    return runs


@pytest.mark.minilm
def test_live_lone_then_side_by_side(minilm_int8_bundle: Path) -> None:
    """Over HTTP: requests one at a time take the lone session; concurrent ones, side by side."""
    args = ["--threads", "1", "--concurrent-runs", "2", "--lone-threads", "2",
            "--cache-entries", "0"]
    with live_server([minilm_int8_bundle], args) as live:
        model = get_json(f"{live.url}/v1/models", timeout=10)
        name = model["data"][0]["id"]
        # The lone session is built after /ready; until then every run is side by side.
        for _ in range(LONE_BUILD_POLLS):
            if _runs(live.url)["threads"]["lone"] == 2:
                break
            time.sleep(0.05)
        assert _runs(live.url)["threads"] == {"side_by_side": 1, "lone": 2}
        for i in range(3):
            _post(live.url, {"model": name, "input": f"one request at a time, number {i}"})
        assert _runs(live.url)["lone"] == 3 and _runs(live.url)["side_by_side"] == 0
        # 8 clients of 8 long texts each: runs of tens of ms, so they overlap.
        body = {"model": name, "input": [LONG] * 8}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: _post(live.url, body), range(32)))
        runs = _runs(live.url)
        assert runs["side_by_side"] > 0, runs
        assert runs["threads"] == {"side_by_side": 1, "lone": 2}
