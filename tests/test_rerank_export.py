"""Cross-encoder folders become rerank bundles: four architectures in both folder formats, scored
as sentence-transformers' CrossEncoder.predict scores them; what no bundle can serve right is
refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.evalset import load_eval_set
from edge_embed.core.rerank import RerankModel, unpack
from edge_embed.export.cross_encoder import SCORE_TOLERANCE
from tests.fixtures.cross_encoders import (
    CROSS_TWINS,
    FORMATS,
    IDENTITY,
    build_cross_twin,
    build_decoder_reranker,
    export_reranker,
)
from tests.fixtures.tiny import run_export

QUERY = "My laptop battery drains within two hours."


def _documents() -> list[str]:
    texts = load_eval_set().texts
    # short ones, and one far over every twin's limit (the document gives way)
    return [*texts[:6], " ".join(texts[:40])]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(CROSS_TWINS))
def test_cross_encoder_folder_becomes_a_reranker(name: str, fmt: str, tmp_path: Path) -> None:
    twin = CROSS_TWINS[name]
    src = build_cross_twin(tmp_path / f"src-{name}", name, fmt)
    bundle = export_reranker(src, tmp_path / "bundle", bundle_id=f"ce-{name}")
    manifest = load_manifest(bundle)
    assert manifest.task == "rerank" and manifest.output_kind == "logits"
    assert manifest.dimensions == 1
    assert manifest.max_tokens == twin.max_length  # CrossEncoder's limit, not the positions'
    assert manifest.rerank is not None
    assert manifest.rerank.activation == ("identity" if twin.activation == IDENTITY
                                          else "sigmoid")
    assert manifest.rerank.truncation == "longest_first"
    parity = manifest.rerank.parity
    assert parity is not None and parity.reference == "cross-encoder"
    assert parity.score_abs_max <= SCORE_TOLERANCE and parity.n_pairs > 100

    # the served path (RerankModel) against CrossEncoder.predict, an over-long pair included;
    # imported here: the provider venvs (make test-openvino) collect this module without torch
    from sentence_transformers import CrossEncoder

    docs = _documents()
    ours = RerankModel(bundle).rerank(QUERY, docs)
    theirs = CrossEncoder(str(src), device="cpu", local_files_only=True).predict(
        [(QUERY, d) for d in docs], show_progress_bar=False)
    np.testing.assert_allclose(ours, np.asarray(theirs, dtype=np.float32), atol=SCORE_TOLERANCE,
                               rtol=0)


def test_pair_cut_keeps_the_query_and_the_token_types(rerank_bundle: Path) -> None:
    model = RerankModel(rerank_bundle)
    long = " ".join(load_eval_set().texts[:40])
    query = "reset the router"  # shorter than the document: the document gives way alone
    (short,), (cut,) = model.pairs.encode(query, ["a cat"]), model.pairs.encode(query, [long])
    ids, types = unpack(short.ids)
    assert 0 < int(types.sum()) < len(types)  # BERT: the document's side is segment 1
    cut_ids, cut_types = unpack(cut.ids)
    assert len(cut_ids) == model.manifest.max_tokens and cut.original_tokens > len(cut_ids)
    query_side = int((cut_types == 0).sum())
    assert cut_ids[:query_side].tolist() == ids[:query_side].tolist()  # the query kept whole


def test_segments_reach_the_graph(rerank_bundle: Path) -> None:
    """Token types are fed: a pair scored with its document's side as segment 0 scores else."""
    model = RerankModel(rerank_bundle)
    (tok,) = model.pairs.encode(QUERY, ["the battery of my notebook is empty"])
    ids, _ = unpack(tok.ids)
    assert model.run([tok.ids])[0, 0] != model.run([ids])[0, 0]


def _refusal(src: Path, tmp_path: Path, *args: str) -> str:
    result = run_export(str(src), "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "out").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_decoder_yes_no_reranker_is_refused(tmp_path: Path) -> None:
    line = _refusal(build_decoder_reranker(tmp_path / "qwen3-reranker"), tmp_path)
    assert "yes/no logits" in line and "Qwen3ForCausalLM" in line


def test_multi_label_classifier_is_refused(tmp_path: Path) -> None:
    src = build_cross_twin(tmp_path / "nli", "bert", "classic", labels=3)
    line = _refusal(src, tmp_path)
    assert "3 output labels" in line


def test_unknown_activation_is_refused(tmp_path: Path) -> None:
    src = build_cross_twin(tmp_path / "tanh", "bert", "st5")
    config = src / "config_sentence_transformers.json"
    data = json.loads(config.read_text())
    data["activation_fn"] = "torch.nn.modules.activation.Tanh"
    config.write_text(json.dumps(data))
    line = _refusal(src, tmp_path)
    assert "activation_fn" in line and "Tanh" in line


def test_embedder_options_are_refused_for_a_reranker(rerank_src: Path, tmp_path: Path) -> None:
    line = _refusal(rerank_src, tmp_path, "--pooling", "mean")
    assert "--pooling" in line and "cross-encoder" in line


def test_hub_id_from_the_local_hub_cache(rerank_src: Path, tmp_path: Path) -> None:
    """The hub-id path, offline: `org/name` resolved from a Hugging Face cache on disk."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-reranker"
    shutil.copytree(rerank_src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "bundle"
    result = run_export("org/tiny-reranker", "--out", str(out),
                        env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out)
    assert manifest.task == "rerank" and manifest.id == "tiny-reranker"
    assert (manifest.source["model"], manifest.source["revision"]) == ("org/tiny-reranker",
                                                                        commit)
    assert manifest.source["hub"] is True


def test_corpus_job_refuses_a_reranker(rerank_bundle: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from edge_embed.corpus.cli import main as embed_main

    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "hello"}\n', encoding="utf-8")
    assert embed_main([str(src), "--model", str(rerank_bundle), "--out",
                       str(tmp_path / "out")]) == 2
    assert "task 'rerank'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_rerank_set_refuses_what_is_not_a_query_with_candidates(tmp_path: Path) -> None:
    from edge_embed.core.evalset import load_rerank_set
    from edge_embed.core.tooling import ToolError

    shipped = load_rerank_set()
    assert shipped.n_pairs == sum(len(q.documents) for q in shipped.queries) >= 200
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "q", "query": "x", "documents": ["a", "b", "c", "d"]}\n{"id": 2}\n')
    with pytest.raises(ToolError, match=r"bad.jsonl:2: not a rerank item"):
        load_rerank_set(bad)
    bad.write_text('{"id": "q", "query": "x", "documents": ["a", "b"]}\n')
    with pytest.raises(ToolError, match="at least 4 non-empty documents"):
        load_rerank_set(bad)
