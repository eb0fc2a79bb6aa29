"""Every encoder architecture, in both sentence-transformers folder formats, from folder to
served vector: export -> quantize -> the service (in process), checked against
sentence-transformers' own `encode` on the same folder.

The twins (tests/fixtures/encoders.py) have random weights, so the vectors say nothing about
quality; what is checked is that the bundle is the model sentence-transformers runs: the same
vectors (fp32), the same prompts, the same cut and token counts, and no dependence on what else
shares a batch. The int8 bundles are quantized with the default method and the tiny models'
explicit gates (tests/fixtures/quantized.py: TINY_GATES), less the nearest-neighbour gate
(MATRIX_GATES).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.service.app import create_app
from edge_embed.service.bundle import Manifest, load_manifest
from edge_embed.service.limits import CacheLimits
from edge_embed.service.models import Registry
from edge_embed.service.settings import Settings
from tests.fixtures.encoders import FORMATS, TWINS, Twin, build_twin
from tests.fixtures.quantized import TINY_GATES, build_quantized
from tests.fixtures.server import AiohttpClient
from tests.fixtures.tiny import build_tiny_bundle

# On random weights the CLS vectors of different inputs are nearly the same (the CLS token's
# embedding dominates), so which input is another's nearest neighbour is noise: measured 0.68
# agreement for bert-cls at a mean cosine above 0.999. The int8 vectors are checked against
# sentence-transformers directly instead (MIN_COSINE_INT8).
MATRIX_GATES = (*TINY_GATES, "--gate-nn", "0")
# fp32 against sentence-transformers on torch: the export's own gate.
MIN_COSINE_FP32 = 0.9999
# int8 against sentence-transformers: the quality gate's mean (a random tiny model reads ~1.0).
MIN_COSINE_INT8 = 0.99
# Alone vs inside a padded batch: the same arithmetic except padding.
MIN_COSINE_BATCH = 0.9999
# A prompt must change the vector measurably (a random model's vectors are all close).
MAX_COSINE_PROMPT_VS_NONE = 0.99999
OVER_LONG = " ".join(["the museum opens at ten and closes at six on weekdays"] * 20)
TEXTS = [
    "hello", "a", "The quick brown fox jumps over the lazy dog.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "Numbers like 3.14159, 2718 and 1,000,000 appear in text too.",
    "Café, naïve, résumé and façade keep their accents.", OVER_LONG,
]
CASES = [(name, fmt) for name in TWINS for fmt in FORMATS]
PROMPTED = [(name, fmt) for name, fmt in CASES if TWINS[name].prompts]


@dataclass
class Built:
    twin: Twin
    folder: Path
    fp32: Path
    int8: Path
    st: Any  # the SentenceTransformer loaded from `folder`
    registry: Registry

    @property
    def manifest(self) -> Manifest:
        return load_manifest(self.fp32)

    def ids(self, text: str) -> list[int]:
        """sentence-transformers' own token ids for `text`, cut as it cuts."""
        # `preprocess` is 5.x's name for what earlier releases call `tokenize`
        features = (getattr(self.st, "preprocess", None) or self.st.tokenize)([text])
        return [i for i, m in zip(features["input_ids"][0].tolist(),
                                  features["attention_mask"][0].tolist(), strict=True) if m]


class Builds:
    """Each (twin, format) built once per session, when a test first asks for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[tuple[str, str], Built] = {}

    def get(self, name: str, fmt: str) -> Built:
        key = (name, fmt)
        if key not in self.done:
            from sentence_transformers import SentenceTransformer

            base = self.root / f"{name}-{fmt}"
            folder = build_twin(base / "src", name, fmt)
            fp32 = build_tiny_bundle(folder, base / "fp32", bundle_id=f"{name}-{fmt}")
            int8 = build_quantized(fp32, base / "int8", "--id", f"{name}-{fmt}-int8",
                                   *MATRIX_GATES)
            settings = settings_for(fp32, int8)
            registry = Registry.load(settings.models, settings.runtime_options(1))
            self.done[key] = Built(TWINS[name], folder, fp32, int8,
                                   SentenceTransformer(str(folder), device="cpu"), registry)
        return self.done[key]


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    yield Builds(tmp_path_factory.mktemp("matrix"))


async def embed(client: Any, model: str, inputs: list[str],
                **extra: Any) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
    resp = await client.post("/v1/embeddings", json={"model": model, "input": inputs, **extra})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32), body


def cosines(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def settings_for(*bundles: Path) -> Settings:
    # no cache: a vector asked for twice must be computed twice (batch invariance)
    return Settings(models=bundles, cache=CacheLimits(entries=0))


async def client_for(built: Built, aiohttp_client: AiohttpClient) -> Any:
    settings = settings_for(built.fp32, built.int8)
    return await aiohttp_client(create_app(settings, registry=built.registry))


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_manifest_is_what_sentence_transformers_applies(name: str, fmt: str,
                                                        builds: Builds) -> None:
    built = builds.get(name, fmt)
    m = built.manifest
    assert m.source["library"] == "sentence-transformers"
    assert m.source["model_type"] == built.twin.model_type
    # the limit sentence-transformers cuts at, below the position embeddings on purpose
    assert m.max_tokens == built.st.max_seq_length == built.twin.max_seq_length
    assert "max_tokens" not in m.defaults
    assert m.pooling == {"lasttoken": "last"}.get(built.twin.pooling, built.twin.pooling)
    assert m.normalize is built.twin.normalize
    assert {k: v for k, v in m.prompts.items() if v} == built.twin.prompts
    assert m.parity is not None and m.parity.cosine_min >= MIN_COSINE_FP32


@pytest.mark.parametrize(("name", "fmt"), CASES)
async def test_served_vectors_agree_with_sentence_transformers(
        name: str, fmt: str, builds: Builds, aiohttp_client: AiohttpClient) -> None:
    built = builds.get(name, fmt)
    client = await client_for(built, aiohttp_client)
    want = built.st.encode(TEXTS, convert_to_numpy=True)
    fp32, _ = await embed(client, f"{name}-{fmt}", TEXTS)
    int8, _ = await embed(client, f"{name}-{fmt}-int8", TEXTS)
    assert cosines(fp32, want).min() >= MIN_COSINE_FP32
    assert cosines(int8, want).mean() >= MIN_COSINE_INT8
    if built.twin.normalize:
        assert np.allclose(np.linalg.norm(fp32, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("name", "fmt"), PROMPTED)
async def test_input_type_applies_the_prompt_as_sentence_transformers_does(
        name: str, fmt: str, builds: Builds, aiohttp_client: AiohttpClient) -> None:
    built = builds.get(name, fmt)
    client = await client_for(built, aiohttp_client)
    for input_type in built.twin.prompts:
        want = built.st.encode(TEXTS, prompt_name=input_type, convert_to_numpy=True)
        got, _ = await embed(client, f"{name}-{fmt}", TEXTS, input_type=input_type)
        assert cosines(got, want).min() >= MIN_COSINE_FP32, input_type
        plain, _ = await embed(client, f"{name}-{fmt}", TEXTS)
        assert cosines(got, plain).min() < MAX_COSINE_PROMPT_VS_NONE, input_type


@pytest.mark.parametrize(("name", "fmt"), CASES)
async def test_truncation_reports_the_cut_sentence_transformers_makes(
        name: str, fmt: str, builds: Builds, aiohttp_client: AiohttpClient) -> None:
    built = builds.get(name, fmt)
    client = await client_for(built, aiohttp_client)
    prompts = [("", None), *((p, t) for t, p in built.twin.prompts.items())]
    for prompt, input_type in prompts:
        extra = {"input_type": input_type} if input_type else {}
        full = built.st.tokenizer(prompt + OVER_LONG, truncation=False)["input_ids"]
        cut = built.ids(prompt + OVER_LONG)
        assert len(full) > len(cut) == built.st.max_seq_length
        for model in (f"{name}-{fmt}", f"{name}-{fmt}-int8"):
            _, body = await embed(client, model, ["short one", OVER_LONG], **extra)
            (warning,) = body["warnings"]
            assert warning["index"] == 1
            assert (warning["original_tokens"], warning["used_tokens"]) == (len(full), len(cut))


@pytest.mark.parametrize(("name", "fmt"), CASES)
async def test_a_vector_does_not_depend_on_its_batch(
        name: str, fmt: str, builds: Builds, aiohttp_client: AiohttpClient) -> None:
    built = builds.get(name, fmt)
    client = await client_for(built, aiohttp_client)
    for model in (f"{name}-{fmt}", f"{name}-{fmt}-int8"):
        alone = np.concatenate([(await embed(client, model, [t]))[0] for t in TEXTS])
        together, _ = await embed(client, model, TEXTS)
        assert cosines(alone, together).min() >= MIN_COSINE_BATCH, model
