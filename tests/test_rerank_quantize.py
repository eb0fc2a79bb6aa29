"""`edge-embed quantize` on a rerank bundle: per-token int8, gated on ranking against the fp32
bundle, recorded in the manifest and shown by /v1/models; a pair's score does not depend on its
batch-mates, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_embed.bench.rerank import DOCUMENTS
from edge_embed.bench.rerank import main as bench_main
from edge_embed.core.bundle import load_manifest
from edge_embed.core.evalset import load_rerank_set
from edge_embed.core.rerank import RerankModel
from edge_embed.quantize.build import GateFailed, QuantizeOptions
from edge_embed.quantize.rerank import RankingGates, run
from edge_embed.service.app import create_app
from edge_embed.service.settings import Settings
from tests.fixtures.server import AiohttpClient

QUERY = "How do I reset my router?"


def test_manifest_records_the_ranking_gates(rerank_int8_bundle: Path) -> None:
    manifest = load_manifest(rerank_int8_bundle)
    assert manifest.task == "rerank" and manifest.precision == "int8"
    q = manifest.quantization
    assert q is not None and q.method == "pertoken" and q["verdict"]["passed"] is True
    gates = RankingGates(**q["gates"]["ranking"])
    assert manifest.rerank is not None
    quality = manifest.rerank.quality
    assert quality is not None and quality.reference == "fp32-bundle"
    assert quality.n_queries == len(load_rerank_set().queries)
    assert quality.kendall_tau_mean >= gates.kendall_tau_mean
    assert quality.top1_agreement >= gates.top1 and quality.top3_agreement >= gates.top3
    assert quality.batch_invariance_max_abs_diff == 0.0
    assert manifest.canary is None and manifest.quality is None


def test_a_score_does_not_depend_on_its_batch(rerank_int8_bundle: Path) -> None:
    model = RerankModel(rerank_int8_bundle)
    rerank_set = load_rerank_set()
    docs = [d for q in rerank_set.queries[:3] for d in q.documents]
    rows = [t.ids for t in model.pairs.encode(QUERY, docs)]
    together = model.run(rows)
    for i, row in enumerate(rows):
        assert model.run([row])[0, 0] == together[i, 0]  # bit for bit
    scores = model.rerank(QUERY, docs)
    assert np.all((scores > 0) & (scores < 1))  # the bundle's sigmoid, kept from the fp32 one


async def test_models_listing_shows_the_ranking_figures(
        rerank_int8_bundle: Path, aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_app(Settings(models=(rerank_int8_bundle,))))
    (model,) = (await (await client.get("/v1/models")).json())["data"]
    assert model["task"] == "rerank" and model["precision"] == "int8"
    quality = model["rerank"]["quality"]
    assert set(quality) >= {"kendall_tau_mean", "kendall_tau_min", "top1_agreement",
                            "top3_agreement", "score_abs_max", "batch_invariance_max_abs_diff"}
    body = {"model": "tiny-rerank-int8", "query": QUERY,
            "documents": ["reset the router", "a cold dinner", "restart the router"]}
    alone = []
    for doc in body["documents"]:
        resp = await client.post("/v1/rerank", json={**body, "documents": [doc]})
        alone.append((await resp.json())["results"][0]["relevance_score"])
    resp = await client.post("/v1/rerank", json=body)
    together = {r["index"]: r["relevance_score"] for r in (await resp.json())["results"]}
    assert [together[i] for i in range(3)] == alone


def test_ranking_gate_failure_writes_nothing(rerank_bundle: Path, tmp_path: Path) -> None:
    opts = QuantizeOptions(bundle=rerank_bundle, out=tmp_path / "out", quiet=True)
    with pytest.raises(GateFailed, match="Kendall tau mean"):
        run(opts, RankingGates(kendall_tau_mean=1.01))
    assert not (tmp_path / "out").exists()


def test_other_methods_are_refused(rerank_bundle: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edge_embed.quantize", str(rerank_bundle),
                           "--out", str(tmp_path / "dyn"), "--method", "dynamic", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "per-token" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dyn").exists()


@pytest.mark.slow
def test_bench_rerank_runs_every_system(rerank_bundle: Path, rerank_int8_bundle: Path,
                                        rerank_src: Path, tmp_path: Path) -> None:
    assert bench_main(["--int8", str(rerank_int8_bundle), "--fp32", str(rerank_bundle), "--source",
                 str(rerank_src), "--out", str(tmp_path), "--window", "0.2",
                 "--rounds", "1"]) == 0
    result = json.loads((tmp_path / "rerank.json").read_text())
    for n in DOCUMENTS:
        systems = result["results"][f"{n} documents"]
        assert set(systems) == {"int8", "fp32", "cross-encoder (torch)"}
        assert all(f["pairs_per_s"] > 0 and f["requests"] >= 1 for f in systems.values())
