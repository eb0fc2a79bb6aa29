"""Compact vectors (core/compact.py): the conversions as Cohere defines them, the per-bundle scale
in bundle.json, and a vector's compact form independent of what it was sent with."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.bench import compact as bench_compact
from edge_embed.core import compact
from edge_embed.core.bundle import load_manifest
from edge_embed.core.errors import BundleError
from edge_embed.service.app import create_app
from edge_embed.service.limits import CacheLimits
from edge_embed.service.settings import Settings
from tests.fixtures.server import AiohttpClient, MakeClient

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps on the windowsill.",
         "fox " * 90, "dog"]
TYPES = ["float", "int8", "uint8", "binary", "ubinary"]
NO_CACHE = CacheLimits(entries=0)


def test_sign_bits_pack_high_bit_first() -> None:
    v = np.array([[0.5, -0.1, 0.0, 0.2, -0.3, 0.1, 0.1, 0.1, 0.4, -0.2]], dtype=np.float32)
    ubinary = compact.to_ubinary(v)
    # 1 where x > 0 (0.0 is not), first dimension in the highest bit, the last byte zero-padded
    assert ubinary.tolist() == [[0b10010111, 0b10000000]]
    assert compact.to_binary(v).tolist() == [[0b10010111 - 128, 0b10000000 - 128]]
    assert compact.to_binary(v).dtype == np.int8 and ubinary.dtype == np.uint8


def test_int8_is_the_fixed_scale_clipped_and_uint8_is_offset() -> None:
    v = np.array([[0.01, -0.01, 0.5, -0.5, 0.0]], dtype=np.float32)
    assert compact.to_int8(v, 1000.0).tolist() == [[10, -10, 127, -128, 0]]
    assert compact.to_uint8(v, 1000.0).tolist() == [[138, 118, 255, 0, 128]]
    # a cut of a quarter of the dimensions, re-normalized, has values twice as large
    assert compact.scale_for(100.0, 384, 96) == pytest.approx(50.0)


def test_calibration_clips_what_its_quantile_leaves_out() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scale = compact.calibrate(vectors, "set@x", quantile=0.99)
    assert scale.n_values == vectors.size and scale.eval_set == "set@x"
    assert 0.004 <= scale.clipped_fraction <= 0.011
    assert scale.max_abs == pytest.approx(float(np.abs(vectors).max()), abs=1e-6)
    assert scale.cosine_mean > 0.999 and scale.cosine_min <= scale.cosine_mean


def test_the_manifest_section_is_typed_and_checked(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    assert manifest.compact is not None and manifest.compact.scale > 0
    assert manifest.compact.quantile == compact.CALIBRATION_QUANTILE
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    data = json.loads((copy / "bundle.json").read_text(encoding="utf-8"))
    data["compact"]["scheme"] = "per-dimension"
    (copy / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BundleError, match="compact"):
        load_manifest(copy)
    data["compact"] = {**manifest.compact.__dict__, "scale": -1}
    (copy / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(BundleError, match="compact"):
        load_manifest(copy)


async def embed(client: Any, texts: list[str], **extra: Any) -> dict[str, Any]:
    resp = await client.post("/v2/embed", json={"model": "tiny", "texts": texts,
                                               "embedding_types": TYPES, **extra})
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    return body


async def test_a_vector_compact_form_ignores_its_batch_mates(make_client: MakeClient,
                                                             tiny_bundle: Path) -> None:
    client = await make_client(cache=NO_CACHE)
    scale = load_manifest(tiny_bundle).compact.scale  # type: ignore[union-attr]
    together = (await embed(client, TEXTS))["embeddings"]
    for i, text in enumerate(TEXTS):
        alone = (await embed(client, [text]))["embeddings"]
        for kind in TYPES[1:]:
            assert alone[kind][0] == together[kind][i], (kind, i)
        floats = np.asarray(alone["float"], dtype=np.float32)
        for kind in TYPES[1:]:
            assert compact.convert(floats, kind, scale).tolist() == alone[kind]  # type: ignore[arg-type]


async def test_openai_route_extension(make_client: MakeClient, tiny_bundle: Path) -> None:
    client = await make_client()
    info = await (await client.get("/v1/models/tiny")).json()
    assert info["embedding_types"] == ["float", "base64", *compact.COMPACT_TYPES]
    scale = load_manifest(tiny_bundle).compact.scale  # type: ignore[union-attr]
    resp = await client.post("/v1/embeddings", json={
        "model": "tiny", "input": TEXTS[:2], "embedding_types": TYPES, "encoding_format": "base64"})
    body = await resp.json()
    assert resp.status == 200, body
    for item in body["data"]:
        floats = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")[None, :]
        got = item["embeddings"]
        assert np.array_equal(np.frombuffer(base64.b64decode(got["float"]), dtype="<f4"),
                              floats[0])
        for kind, dtype in (("int8", np.int8), ("uint8", np.uint8), ("binary", np.int8),
                            ("ubinary", np.uint8)):
            raw = np.frombuffer(base64.b64decode(got[kind]), dtype=dtype)
            assert raw.tolist() == compact.convert(floats, kind, scale)[0].tolist(), kind  # type: ignore[arg-type]
    resp = await client.post("/v1/embeddings", json={
        "model": "tiny", "input": TEXTS[0], "encoding_format": "ubinary"})
    body = await resp.json()
    assert resp.status == 200 and len(body["data"][0]["embedding"]) == 32 // 8


async def test_a_matryoshka_cut_uses_the_scaled_scale(make_client: MakeClient,
                                                      tiny_cls_bundle: Path) -> None:
    client = await make_client()
    manifest = load_manifest(tiny_cls_bundle)
    resp = await client.post("/v2/embed", json={
        "model": "tiny-cls", "texts": TEXTS[:2], "output_dimension": 16,
        "embedding_types": ["float", "int8"]})
    body = await resp.json()
    assert resp.status == 200, body
    floats = np.asarray(body["embeddings"]["float"], dtype=np.float32)
    assert floats.shape == (2, 16)
    scale = compact.scale_for(manifest.compact.scale, 32, 16)  # type: ignore[union-attr]
    assert body["embeddings"]["int8"] == compact.to_int8(floats, scale).tolist()


async def test_a_bundle_without_a_scale_refuses_int8_only(tiny_bundle: Path, tmp_path: Path,
                                                          aiohttp_client: AiohttpClient) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    data = json.loads((old / "bundle.json").read_text(encoding="utf-8"))
    del data["compact"]  # as written before compact vectors existed
    (old / "bundle.json").write_text(json.dumps(data), encoding="utf-8")
    client = await aiohttp_client(create_app(Settings(models=(old,))))
    for path, body, param in (
            ("/v2/embed", {"texts": ["x"], "embedding_types": ["binary", "uint8"]},
             "embedding_types"),
            ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format")):
        resp = await client.post(path, json={"model": "tiny", **body})
        got = await resp.json()
        assert resp.status == 400 and got["error"]["param"] == param
        assert "no int8 scale" in got["error"]["message"]
    resp = await client.post("/v2/embed", json={"model": "tiny", "texts": ["x"],
                                                "embedding_types": ["binary", "ubinary"]})
    assert resp.status == 200
    info = await (await client.get("/v1/models/tiny")).json()
    assert info["embedding_types"] == ["float", "base64", "binary", "ubinary"]


async def test_the_cache_keeps_the_two_cuts_apart(make_client: MakeClient) -> None:
    client = await make_client()
    long = "first words here " + "fox " * 100 + "the very end"
    bodies: dict[str, list[Any]] = {}
    for truncate in ("END", "START", "END", "START"):
        resp = await client.post("/v2/embed", json={"model": "tiny", "texts": [long],
                                                    "truncate": truncate})
        body = await resp.json()
        assert resp.status == 200 and resp.headers["X-Edge-Embed-Truncated"] == "1"
        assert body["meta"]["warnings"] and body["warnings"][0]["index"] == 0
        bodies.setdefault(truncate, []).append(body["embeddings"]["float"])
    assert bodies["END"][0] == bodies["END"][1] and bodies["START"][0] == bodies["START"][1]
    assert bodies["END"][0] != bodies["START"][0]


async def test_v1_embed_answers_floats_unless_types_are_asked(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/v1/embed", json={"model": "tiny", "texts": TEXTS[:2]})
    body = await resp.json()
    assert body["response_type"] == "embeddings_floats" and len(body["embeddings"]) == 2
    assert body["meta"]["api_version"]["version"] == "1"
    resp = await client.post("/v1/embed", json={"model": "tiny", "texts": TEXTS[:2],
                                                "embedding_types": ["ubinary"]})
    body = await resp.json()
    assert body["response_type"] == "embeddings_by_type"
    assert list(body["embeddings"]) == ["ubinary"] and len(body["embeddings"]["ubinary"][0]) == 4


def test_bench_compact_measures_every_type(tiny_bundle: Path, tmp_path: Path) -> None:
    assert bench_compact.main(["--model", str(tiny_bundle), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / bench_compact.RESULT_JSON).read_text(encoding="utf-8"))
    rows = {row["kind"]: row for row in result["types"]}
    assert list(rows) == ["float", "int8", "uint8", "binary", "ubinary"]
    assert rows["float"]["recall_at_10"] == rows["float"]["nn_agreement"] == 1.0
    assert {k: v for k, v in rows["binary"].items() if k != "kind"} == \
        {k: v for k, v in rows["ubinary"].items() if k != "kind"}
    for row in rows.values():
        assert 0.0 <= row["recall_at_10"] <= row["recall_at_10_rescored"] <= 1.0
    assert rows["binary"]["bytes_per_vector"] == 32 // 8 and rows["int8"]["bytes_per_vector"] == 32
    assert (tmp_path / bench_compact.RESULT_TABLE).read_text(encoding="utf-8").count("\n") == 7
