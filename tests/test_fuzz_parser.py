"""Property tests for the request parser and the response encoder.

Arbitrary bytes and arbitrary JSON go through the parser exactly as a request body does
(`parse_body` -> `parse_request` -> `check_for_model`): each either yields a request or raises an
`InvalidRequest`-family error naming a field; no other exception may escape (it would be a 500).
The encoder's base64 decodes to exactly the float32 vectors, and its float JSON reads back
equal to them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_embed.core.bundle import Manifest, load_manifest
from edge_embed.service.errors import ApiError, InvalidRequest
from edge_embed.service.schema import (
    ENCODING_FORMATS,
    EmbeddingRequest,
    check_for_model,
    encode_response,
    parse_body,
    parse_request,
)

# The server's defaults (service/settings.py) and one small bound, so that both the OpenAI-sized
# limit and a limit the generator can actually reach are exercised.
LIMITS = ({"max_inputs": 2048, "max_input_chars": 65_536}, {"max_inputs": 3, "max_input_chars": 8})
EXAMPLES = 400
TINY_VOCAB = 600  # at most: the tiny tokenizer's vocabulary target (tests/fixtures/tiny.py)

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**63), 2**64)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=30)
token_ids = st.lists(st.integers(-5, TINY_VOCAB + 5) | st.integers(), min_size=0, max_size=6)
plausible_input = (st.text(max_size=12) | st.lists(st.text(max_size=10), max_size=5) | token_ids
                   | st.lists(token_ids, max_size=4) | json_values)
# Bodies shaped like requests, each field plausible or arbitrary: reaches the deep branches.
request_like = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["tiny", "tiny-cls", ""]) | json_values,
    "input": plausible_input,
    "encoding_format": st.sampled_from(["float", "base64", None, "FLOAT", "b64"]) | json_values,
    "dimensions": st.sampled_from([None, 16, 32, 0, -1, 33, 2**40]) | json_values,
    "truncate": st.booleans() | json_values,
    "input_type": st.sampled_from(["query", "passage", "doc"]) | json_values,
    "user": json_values,
    "metadata": json_values,
    "cache_control": st.fixed_dictionaries({}, optional={
        "no_cache": st.booleans() | json_values,
        "ttl": st.floats() | st.integers() | json_values}) | json_values,
    "extra_body": st.dictionaries(st.sampled_from(["input", "dimensions", "model", "x"]),
                                  json_values, max_size=3) | json_values,
    "unknown_field": json_values,
})


@pytest.fixture(scope="module")
def manifests(tiny_bundle: Path, tiny_cls_bundle: Path) -> list[Manifest]:
    return [load_manifest(tiny_bundle), load_manifest(tiny_cls_bundle)]


def through_parser(raw: bytes, manifests: list[Manifest]) -> None:
    """The parser's whole path for one body; only InvalidRequest may come out of it."""
    for limits in LIMITS:
        try:
            data = parse_body(raw)
            req = parse_request(data, **limits)
        except InvalidRequest as exc:
            assert exc.status == 400 and exc.param, (exc.message, exc.param)
            assert exc.message.strip()
            continue
        assert isinstance(req, EmbeddingRequest)
        assert 1 <= len(req.inputs) <= limits["max_inputs"]
        assert req.encoding_format in ENCODING_FORMATS
        for manifest in manifests:
            try:
                check_for_model(req, manifest, manifest.vocab_size or TINY_VOCAB)
            except InvalidRequest as exc:
                assert exc.param, exc.message


def _dumps(value: Any) -> bytes:
    # json (not orjson) so that NaN, Infinity and huge integers reach the parser as text.
    return json.dumps(value, allow_nan=True).encode()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(manifests: list[Manifest], raw: bytes) -> None:
    through_parser(raw, manifests)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_arbitrary_json(manifests: list[Manifest], value: Any) -> None:
    through_parser(_dumps(value), manifests)


@settings(max_examples=EXAMPLES * 2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=request_like)
def test_request_shaped_json(manifests: list[Manifest], body: dict[str, Any]) -> None:
    through_parser(_dumps(body), manifests)


def test_parser_refusals_are_api_errors() -> None:
    # The family the middleware renders: an InvalidRequest is an ApiError with status 400.
    assert issubclass(InvalidRequest, ApiError) and InvalidRequest.status == 400


vectors = hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 48)),
                     elements=st.floats(width=32, allow_nan=False, allow_infinity=False))


@given(batch=vectors)
def test_base64_encoding_round_trips(batch: np.ndarray) -> None:
    body = orjson.loads(encode_response(batch, "base64", "m", 1, "req-1", []))
    for i, item in enumerate(body["data"]):
        assert item["index"] == i
        got = np.frombuffer(base64.b64decode(item["embedding"], validate=True), dtype="<f4")
        np.testing.assert_array_equal(got, batch[i])


@given(batch=vectors)
def test_float_encoding_reads_back_equal(batch: np.ndarray) -> None:
    body = orjson.loads(encode_response(batch, "float", "m", 1, "req-1", []))
    for i, item in enumerate(body["data"]):
        got = np.asarray(item["embedding"], dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(got, batch[i])


@given(batch=vectors)
def test_base64_equals_float(batch: np.ndarray) -> None:
    as_float = orjson.loads(encode_response(batch, "float", "m", 1, "r", []))["data"]
    as_b64 = orjson.loads(encode_response(batch, "base64", "m", 1, "r", []))["data"]
    for f, b in zip(as_float, as_b64, strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f["embedding"], np.float32))
