"""The arm64 runtime image under qemu user emulation (`make test-arm64`; marked `arm64`): it
serves the fp32 and int8 MiniLM bundles (mounted), and its vectors agree with x86's: fp32 with
the host's to cosine 0.9999 or better, int8 with its own fp32 at least as well as the bundle's
recorded quality says, and int8 the same for a text alone and inside a batch; and the service's
own start-up check (each bundle's canaries embedded with the arm64 kernels) passed its gate.

Inputs stay short: under emulation a few short texts take seconds and a batch padded to 256
tokens takes minutes. Nothing here measures speed (emulation says nothing about it).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_embed.bench.server import free_port
from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from tests.container import engine

pytestmark = pytest.mark.arm64

FP32, INT8 = "all-minilm-l6-v2-fp32", "all-minilm-l6-v2-int8"
# fp32 kernels differ between x86 and ARM only in summation order.
FP32_COSINE_MIN = 0.9999
# Loading, verifying and warming two bundles under emulation: minutes on a shared machine.
READY_TIMEOUT_S = 600.0
# One request under emulation; the server's own default would cut it short.
REQUEST_TIMEOUT_S = 300
# Start-up checks file sizes only: this test is about the arm64 kernels' numerics, and hashing
# the two bundles (150 MB) under emulation would only lengthen the start (the x86 image tests
# run the default sha256 check).
VERIFY_FILES = "size"
# Padded tokens per model run: one full-length (256-token) input. The start-up calibration runs
# as many full-length inputs as this allows, twice per bundle, and under emulation those runs
# are most of the start (at the default budget, four each: about 7 minutes to /ready on a busy
# 2-core host). The texts here are far shorter, so their batches are the same either way.
BATCH_TOKENS = 256
# onnxruntime's CPU detection reads /sys/devices/system/cpu; under emulation it finds the host's
# x86 topology there and the process dies (SIGSEGV). Masked, it warns and carries on.
MASK_CPU_TOPOLOGY = ["--security-opt", "mask=/sys/devices/system/cpu:/sys/devices/system/node"]
TEXTS = ["hello world", "edge boxes run on ARM", "a cat sat on the mat",
         "embeddings for search", "short text", "quantized int8 kernels"]


def bundles() -> Path:
    value = os.environ.get("EDGE_EMBED_MODELS")
    if not value or not all((Path(value) / b / "bundle.json").is_file() for b in (FP32, INT8)):
        pytest.fail(f"EDGE_EMBED_MODELS must hold {FP32} and {INT8} (make model)")
    return Path(value)


@pytest.fixture(scope="module")
def arm64() -> Iterator[engine.Container]:
    models = bundles()
    mounts = [(models / b, f"/models/{b}") for b in (FP32, INT8)]
    env = {"EDGE_EMBED_MODEL": ",".join(target for _, target in mounts),
           "EDGE_EMBED_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
           "EDGE_EMBED_VERIFY_FILES": VERIFY_FILES, "EDGE_EMBED_BATCH_TOKENS": str(BATCH_TOKENS)}
    image = engine.image() + "-arm64"
    assert engine.command("image", "inspect", "--format", "{{.Architecture}}",
                          image).stdout.strip() == "arm64"
    with engine.running(image, free_port(), env, mounts, MASK_CPU_TOPOLOGY) as container:
        ready_s = container.wait_ready(READY_TIMEOUT_S) - container.started_at()
        print(f"\narm64 under emulation: ready {ready_s:.0f} s after the start (no speed claim)")
        assert container.exec("uname", "-m").stdout.strip() == "aarch64"
        yield container


def embed(container: engine.Container, bundle: str, texts: list[str]) -> np.ndarray:
    import openai

    client = openai.OpenAI(base_url=container.url + "/v1", api_key="unused", max_retries=0,
                           timeout=REQUEST_TIMEOUT_S)
    response = client.embeddings.create(model=engine.manifest_id(bundles() / bundle),
                                        input=texts)
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos: np.ndarray = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return cos


@pytest.fixture(scope="module")
def arm_fp32(arm64: engine.Container) -> np.ndarray:
    return embed(arm64, FP32, TEXTS)


@pytest.fixture(scope="module")
def arm_int8(arm64: engine.Container) -> np.ndarray:
    return embed(arm64, INT8, TEXTS)


def test_fp32_matches_x86(arm_fp32: np.ndarray) -> None:
    x86 = BundleModel(bundles() / FP32).embed(TEXTS)
    cos = cosines(arm_fp32, x86)
    print(f"\nfp32 arm64 vs x86: min cosine {cos.min():.6f}, "
          f"max |diff| {np.abs(arm_fp32 - x86).max():.2e}")
    assert cos.min() >= FP32_COSINE_MIN


def test_int8_within_its_recorded_quality(arm_fp32: np.ndarray, arm_int8: np.ndarray) -> None:
    quality = load_manifest(bundles() / INT8).quality
    assert quality is not None, f"{INT8}/bundle.json records no quality"
    cos = cosines(arm_int8, arm_fp32)
    x86_int8 = BundleModel(bundles() / INT8).embed(TEXTS)
    print(f"\nint8 vs fp32 on arm64: min {cos.min():.4f} mean {cos.mean():.4f} "
          f"(recorded on x86: min {quality.cosine_min:.4f} mean {quality.cosine_mean:.4f}); "
          f"int8 arm64 vs int8 x86: min {cosines(arm_int8, x86_int8).min():.4f}")
    assert cos.min() >= quality.cosine_min


def test_int8_is_batch_invariant(arm64: engine.Container, arm_int8: np.ndarray) -> None:
    quality = load_manifest(bundles() / INT8).quality
    assert quality is not None and quality.batch_invariance_min is not None
    alone = np.concatenate([embed(arm64, INT8, [t]) for t in TEXTS[:3]])
    cos = cosines(alone, arm_int8[:3])
    print(f"\nint8 on arm64, alone vs in a batch: min cosine {cos.min():.6f}")
    assert cos.min() >= quality.batch_invariance_min


def test_start_up_canaries_pass_on_arm64(arm64: engine.Container) -> None:
    """The service judged both bundles on ARM's kernels itself and served them (not loudly)."""
    with urllib.request.urlopen(arm64.url + "/v1/models", timeout=REQUEST_TIMEOUT_S) as response:
        models = {m["id"]: m for m in json.load(response)["data"]}
    for bundle in (FP32, INT8):
        canary = models[engine.manifest_id(bundles() / bundle)]["canary"]
        print(f"\n{bundle} canaries on arm64: {canary}")
        assert canary["status"] == "pass", canary
        assert canary["agreement"] >= canary["gate"]
