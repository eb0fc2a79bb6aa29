"""Property tests for base64 encoding and `dimensions`.

- base64 over the wire decodes (little-endian float32) to exactly the float answer, for
  arbitrary text;
- `dimensions` on a Matryoshka bundle gives the full vector cut and re-normalized, with unit norm;
- `finish` (the numpy step both rely on) gives unit-norm cuts for arbitrary vectors.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_embed.core.pooling import finish
from tests.fixtures.server import Live, live_server
from tests.reliability_server import http

# Requests per property over HTTP: each example is 2-3 requests of a few ms.
HTTP_EXAMPLES = 40
# Matryoshka dimensions of the tiny-cls bundle (tests/fixtures/tiny.py TINY_MATRYOSHKA).
CUTS = (32, 16)
# float32 rounding of a normalized vector's norm: 32-384 terms, ~1e-7 relative each.
NORM_TOL = 1e-5

texts = st.text(min_size=1, max_size=300).filter(lambda t: t.strip() != "")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tiny_cls_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle, tiny_cls_bundle], ["--cache-entries", "0"]) as live:
        yield live


def embed(server: Live, body: dict[str, object]) -> list[dict[str, object]]:
    status, _, answer = http("POST", f"{server.url}/v1/embeddings", body=body)
    assert status == 200, (body, status, answer)
    assert isinstance(answer, dict)
    data: list[dict[str, object]] = answer["data"]
    return data


def decode(item: object) -> np.ndarray:
    assert isinstance(item, str), f"base64 embedding is not a string: {type(item)}"
    raw = base64.b64decode(item, validate=True)
    return np.frombuffer(raw, dtype="<f4")


@settings(max_examples=HTTP_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs=st.lists(texts, min_size=1, max_size=4))
def test_base64_round_trip_equals_float(server: Live, inputs: list[str]) -> None:
    floats = embed(server, {"model": "tiny", "input": inputs, "encoding_format": "float"})
    b64 = embed(server, {"model": "tiny", "input": inputs, "encoding_format": "base64"})
    assert len(floats) == len(b64) == len(inputs)
    for f, b in zip(floats, b64, strict=True):
        expected = np.asarray(f["embedding"], dtype=np.float32)
        got = decode(b["embedding"])
        assert got.shape == expected.shape == (32,)
        # Bit-equal: the float answer prints float32 values that read back exactly.
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=HTTP_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, dims=st.sampled_from(CUTS), fmt=st.sampled_from(["float", "base64"]))
def test_dimensions_cut_and_renormalize(server: Live, text: str, dims: int,
                                        fmt: str) -> None:
    (full,) = embed(server, {"model": "tiny-cls", "input": text, "encoding_format": "float"})
    (cut,) = embed(server, {"model": "tiny-cls", "input": text, "dimensions": dims,
                            "encoding_format": fmt})
    vector = (decode(cut["embedding"]) if fmt == "base64"
              else np.asarray(cut["embedding"], dtype=np.float32))
    assert vector.shape == (dims,)
    assert abs(float(np.linalg.norm(vector.astype(np.float64))) - 1.0) < NORM_TOL
    head = np.asarray(full["embedding"], dtype=np.float64)[:dims]
    expected = head / np.linalg.norm(head)
    np.testing.assert_allclose(vector, expected, atol=1e-5)


@given(vectors=hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(2, 64)),
                          elements=st.floats(-1e3, 1e3, width=32)),
       data=st.data())
def test_finish_cuts_have_unit_norm(vectors: np.ndarray, data: st.DataObject) -> None:
    dims = data.draw(st.integers(1, vectors.shape[1]))
    out = finish(vectors, dimensions=dims, normalized=True)
    assert out.shape == (vectors.shape[0], dims) and out.dtype == np.float32
    norms = np.linalg.norm(vectors[:, :dims].astype(np.float64), axis=1)
    for row, norm in zip(out, norms, strict=True):
        if norm > 1e-6:  # an all-zero cut has no direction to keep
            assert abs(float(np.linalg.norm(row.astype(np.float64))) - 1.0) < NORM_TOL
        assert np.all(np.isfinite(row))
