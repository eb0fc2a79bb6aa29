"""Every architecture twin, encoders and decoders, in both sentence-transformers folder formats,
from folder to served vector: export -> quantize -> the service (in process), checked against
sentence-transformers' own `encode` on the same folder.

The twins (tests/fixtures/encoders.py) have random weights, so the vectors say nothing about
quality; what is checked is that the bundle is the model sentence-transformers runs: the same
vectors (fp32), the same prompts, the same cut and token counts (the closing special token kept
after a cut), and no dependence on what else shares a batch. The int8 bundles are quantized with
the default method and the tiny models' explicit gates (tests/fixtures/quantized.py: TINY_GATES),
less the nearest-neighbour gate (tests/fixtures/matrix.py: MATRIX_GATES). The decoders' own
checks (padding side, the default gates) are in tests/test_decoders.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_embed.core.encoder import BundleModel
from edge_embed.service.app import create_app
from tests.fixtures.encoders import FORMATS, TWINS
from tests.fixtures.matrix import Builds, Built, settings_for
from tests.fixtures.server import AiohttpClient

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
    # the folder's prompts, an empty one too (a request may name it as its input_type);
    # sentence-transformers 5.x gives every model `query` and `document` prompts (empty where
    # the folder names none) when it loads it, and so writes them when it saves
    assert built.twin.prompts.items() <= m.prompts.items()
    assert m.prompts.items() <= built.st.prompts.items()
    assert {k: v for k, v in m.prompts.items() if v} == {
        k: v for k, v in built.st.prompts.items() if v}
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
    plain, _ = await embed(client, f"{name}-{fmt}", TEXTS)
    for input_type, prompt in built.manifest.prompts.items():
        want = built.st.encode(TEXTS, prompt_name=input_type, convert_to_numpy=True)
        got, _ = await embed(client, f"{name}-{fmt}", TEXTS, input_type=input_type)
        assert cosines(got, want).min() >= MIN_COSINE_FP32, input_type
        if prompt:
            assert cosines(got, plain).min() < MAX_COSINE_PROMPT_VS_NONE, input_type
        else:  # an empty prompt is no prompt, as in sentence-transformers
            assert cosines(got, plain).min() >= MIN_COSINE_BATCH, input_type


@pytest.mark.parametrize(("name", "fmt"), CASES)
async def test_truncation_reports_the_cut_sentence_transformers_makes(
        name: str, fmt: str, builds: Builds, aiohttp_client: AiohttpClient) -> None:
    built = builds.get(name, fmt)
    client = await client_for(built, aiohttp_client)
    tokenizer = BundleModel(built.fp32).tokenizer
    prompts = [("", None), *((p, t) for t, p in built.manifest.prompts.items())]
    for prompt, input_type in prompts:
        extra = {"input_type": input_type} if input_type else {}
        full = built.st.tokenizer(prompt + OVER_LONG, truncation=False)["input_ids"]
        cut = built.ids(prompt + OVER_LONG)
        assert len(full) > len(cut) == built.st.max_seq_length
        # the same ids, the closing special token ([SEP], </s>, a decoder's EOS) kept after the
        # cut as sentence-transformers keeps it: last-token pooling reads that token
        assert tokenizer.encode([prompt + OVER_LONG])[0].ids.tolist() == cut
        assert cut[-1] == full[-1]
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
