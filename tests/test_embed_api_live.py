"""A live server driven by Cohere's official client (ClientV2.embed, every embedding type) and the
openai client (the compact types as an extension), /tokenize counts against the usage the
embeddings route reports, and bad bodies for each new route answered 4xx naming the field."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import cohere
import numpy as np
import openai
import pytest

from edge_embed.core import compact
from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from tests.fixtures.server import LIVE_KEY, LIVE_LIMITED, Live
from tests.reliability_server import assert_openai_error, http

KEY, LIMITED = LIVE_KEY, LIVE_LIMITED
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps on the windowsill."]
TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


@pytest.fixture(scope="module")
def live(keyed_live: Live) -> Live:
    return keyed_live


def co(live: Live, key: str = KEY) -> cohere.ClientV2:
    return cohere.ClientV2(base_url=live.url, api_key=key, timeout=30)


def floats(resp: Any) -> np.ndarray[Any, Any]:
    """The float vectors of a Cohere response (they must be there)."""
    value = resp.embeddings.float_
    assert value is not None
    return np.asarray(value, dtype=np.float32)


def test_cohere_client_every_embedding_type(live: Live, tiny_bundle: Path) -> None:
    scale = load_manifest(tiny_bundle).compact.scale  # type: ignore[union-attr]
    resp = co(live).embed(model="tiny", texts=TEXTS, input_type="search_query",
                          embedding_types=TYPES)
    e = resp.embeddings
    floats = np.asarray(e.float_, dtype=np.float32)
    model = BundleModel(tiny_bundle)
    np.testing.assert_allclose(floats, model.embed(TEXTS, prompt="query: "), atol=1e-5)
    assert e.int8 == compact.to_int8(floats, scale).tolist()
    assert e.uint8 == compact.to_uint8(floats, scale).tolist()
    assert e.binary == compact.to_binary(floats).tolist()
    assert e.ubinary == compact.to_ubinary(floats).tolist()
    assert e.base64 is not None
    for row, b64 in zip(floats, e.base64, strict=True):
        assert np.array_equal(np.frombuffer(base64.b64decode(b64), dtype="<f4"), row)
    assert resp.texts == TEXTS
    assert resp.meta is not None and resp.meta.billed_units is not None
    assert resp.meta.billed_units.input_tokens == sum(
        len(t.ids) for t in model.tokenizer.encode(["query: " + t for t in TEXTS]))


def test_cohere_input_types_truncate_and_dimensions(live: Live, tiny_bundle: Path) -> None:
    client = co(live)
    model = BundleModel(tiny_bundle)
    doc = floats(client.embed(model="tiny", texts=TEXTS[:1], input_type="search_document",
                              embedding_types=["float"]))
    np.testing.assert_allclose(doc, model.embed(TEXTS[:1], prompt="passage: "), atol=1e-5)
    plain = floats(client.embed(model="tiny", texts=TEXTS[:1], input_type="clustering",
                                embedding_types=["float"]))
    np.testing.assert_allclose(plain, model.embed(TEXTS[:1]), atol=1e-5)
    long = "first words here " + "fox " * 200 + "the very end"
    with pytest.raises(cohere.BadRequestError) as refused:
        client.embed(model="tiny", texts=["ok", long], input_type="search_document",
                     truncate="NONE")
    assert "texts[1]" in str(refused.value.body)
    start = floats(client.embed(model="tiny", texts=[long], input_type="clustering",
                                truncate="START", embedding_types=["float"]))
    end = floats(client.embed(model="tiny", texts=[long], input_type="clustering",
                              truncate="END", embedding_types=["float"]))
    tok = model.tokenizer
    (kept_end,) = tok.encode([long], cut="start")
    np.testing.assert_allclose(start, model.finish(model.run([kept_end.ids])), atol=1e-5)
    np.testing.assert_allclose(end, model.embed([long]), atol=1e-5)
    cut = client.embed(model="tiny-cls", texts=TEXTS, input_type="classification",
                       output_dimension=16, embedding_types=["float", "ubinary"])
    assert np.asarray(cut.embeddings.float_).shape == (2, 16)
    assert np.asarray(cut.embeddings.ubinary).shape == (2, 2)


def test_cohere_auth_and_allow_lists(live: Live) -> None:
    with pytest.raises(cohere.UnauthorizedError):
        co(live, "sk-wrong-key-000000000000").embed(model="tiny", texts=["x"],
                                                    input_type="search_query")
    with pytest.raises(cohere.NotFoundError):
        co(live, LIMITED).embed(model="tiny", texts=["x"], input_type="search_query")
    assert co(live, LIMITED).embed(model="tiny-cls", texts=["x"], input_type="search_query",
                                   embedding_types=["int8"]).embeddings.int8


def test_openai_client_with_the_compact_extension(live: Live, tiny_bundle: Path) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    scale = load_manifest(tiny_bundle).compact.scale  # type: ignore[union-attr]
    # the client asks for base64 by default: every type comes back as base64 of its bytes
    resp = client.embeddings.create(model="tiny", input=TEXTS,
                                    extra_body={"embedding_types": ["int8", "ubinary"]})
    for item in resp.data:
        floats = np.asarray(item.embedding, dtype=np.float32)[None, :]
        extra = (item.model_extra or {})["embeddings"]
        assert np.frombuffer(base64.b64decode(extra["int8"]), dtype=np.int8).tolist() == \
            compact.to_int8(floats, scale)[0].tolist()
        assert np.frombuffer(base64.b64decode(extra["ubinary"]), dtype=np.uint8).tolist() == \
            compact.to_ubinary(floats)[0].tolist()
    raw = client.embeddings.with_raw_response.create(
        model="tiny", input=TEXTS[0], encoding_format="float",
        extra_body={"encoding_format": "binary"}).http_response.json()
    floats = np.asarray(client.embeddings.create(model="tiny", input=TEXTS[0],
                                                 encoding_format="float").data[0].embedding,
                        dtype=np.float32)[None, :]
    assert raw["data"][0]["embedding"] == compact.to_binary(floats)[0].tolist()


def test_tokenize_counts_are_the_embeddings_usage(live: Live) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    auth = {"Authorization": f"Bearer {KEY}"}
    for text in (TEXTS[0], "fox " * 200):
        for input_type in (None, "query"):
            extra = {"input_type": input_type} if input_type else {}
            used = client.embeddings.create(model="tiny", input=text,
                                            extra_body=extra).usage.prompt_tokens
            status, _, got = http("POST", f"{live.url}/tokenize", headers=auth,
                                  body={"model": "tiny", "prompt": text, **extra})
            assert status == 200 and isinstance(got, dict)
            assert got["used_tokens"] == used
            assert got["truncated"] == (got["count"] > used)
            if not got["truncated"]:
                assert got["count"] == used
    status, _, body = http("POST", f"{live.url}/tokenize", body={"model": "tiny", "prompt": "x"})
    assert status == 401
    status, _, body = http("POST", f"{live.url}/tokenize",
                           headers={"Authorization": f"Bearer {LIMITED}"},
                           body={"model": "tiny", "prompt": "x"})
    assert status == 404
    status, _, body = http("POST", f"{live.url}/tokenize",
                           headers={"Authorization": f"Bearer {LIMITED}"},
                           body={"inputs": "x"})  # the key's one model
    assert status == 200 and isinstance(body, list)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v2/embed", {"model": "tiny"}, "texts"),
    ("/v2/embed", {"texts": ["x"]}, "model"),
    ("/v2/embed", {"model": "tiny", "texts": ["x", ""]}, "texts"),
    ("/v2/embed", {"model": "tiny", "texts": "x"}, "texts"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "input_type": "query"}, "input_type"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "embedding_types": ["int4"]},
     "embedding_types"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "embedding_types": []}, "embedding_types"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "embedding_types": ["int8", "int8"]},
     "embedding_types"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "truncate": "LEFT"}, "truncate"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "output_dimension": 0}, "output_dimension"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "output_dimension": 16},
     "output_dimension"),
    ("/v2/embed", {"model": "tiny", "texts": ["x"], "images": ["data:image/png;base64,AA=="]},
     "images"),
    ("/v1/embed", {"model": "tiny", "texts": [3]}, "texts"),
    ("/v1/embeddings", {"model": "tiny", "input": "x", "embedding_types": "int8"},
     "embedding_types"),
    ("/v1/embeddings", {"model": "tiny", "input": "x", "encoding_format": "bits"},
     "encoding_format"),
    ("/tokenize", {"model": "tiny", "prompt": 3}, "prompt"),
    ("/detokenize", {"model": "tiny", "tokens": ["a"]}, "tokens"),
    ("/decode", {"model": "tiny", "ids": [-1]}, "ids"),
])
def test_bad_bodies_name_the_field(live: Live, path: str, body: Any, param: str) -> None:
    status, _, got = http("POST", f"{live.url}{path}", body=body,
                          headers={"Authorization": f"Bearer {KEY}"})
    error = assert_openai_error(got, status, type_="invalid_request_error")
    assert status == 400 and error["param"] == param, got
