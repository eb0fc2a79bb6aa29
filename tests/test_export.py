"""`edge-embed export` on the tiny random BERT: parity with torch, manifest, tokenizer, options."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from edge_embed.core.tooling import Reporter, ToolError
from edge_embed.export import parity, pipeline, torch_model
from edge_embed.export.cli import main
from tests.fixtures.tiny import (
    TINY_HIDDEN,
    TINY_MAX_SEQ_LENGTH,
    TINY_POSITIONS,
    TINY_PROMPTS,
    build_tiny_model,
)

# What "matches torch" means for these tests: the export's own gate is 0.9999; a faithful graph
# is at ~1 - 1e-7, so 0.99999 still catches a real difference.
PARITY_COSINE = 0.99999
TEXTS = [
    "hello", "a", "The quick brown fox jumps over the lazy dog.",
    "query: what is the capital of France?", "Le chat dort sur le canapé.",
    "Numbers like 3.14159 and 2718.",
    # longer than the 64-token limit: both sides must cut it the same way
    " ".join(["the museum opens at ten and closes at six on weekdays"] * 20),
]


def _manifest(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    return data


def _sentence_transformers(folder: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


@pytest.mark.parametrize("bundle_fixture,model_fixture", [
    ("tiny_bundle", "tiny_st_model"), ("tiny_cls_bundle", "tiny_cls_model")])
def test_bundle_matches_sentence_transformers(bundle_fixture: str, model_fixture: str,
                                              request: pytest.FixtureRequest) -> None:
    bundle: Path = request.getfixturevalue(bundle_fixture)
    model = _sentence_transformers(request.getfixturevalue(model_fixture))
    want = model.encode(TEXTS, convert_to_numpy=True, batch_size=4)
    got = BundleModel(bundle).embed(TEXTS)
    assert got.shape == (len(TEXTS), TINY_HIDDEN)
    assert _cosines(got, want).min() >= PARITY_COSINE
    # normalized like the ST model's Normalize module: unit vectors, same values
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - want).max() < 1e-4


def test_cls_and_mean_bundles_differ(tiny_bundle: Path, tiny_cls_bundle: Path) -> None:
    # The two fixtures share weights and tokenizer; only pooling differs, and it must show.
    mean = BundleModel(tiny_bundle).embed(TEXTS)
    cls = BundleModel(tiny_cls_bundle).embed(TEXTS)
    assert _cosines(mean, cls).max() < 0.999


def test_manifest_reads_sentence_transformers_config(tiny_bundle: Path,
                                                     tiny_st_model: Path) -> None:
    m = load_manifest(tiny_bundle)
    assert m.id == "tiny"
    assert m.precision == "fp32"
    assert m.max_tokens == TINY_MAX_SEQ_LENGTH < TINY_POSITIONS
    assert m.pooling == "mean" and m.normalize is True
    assert m.prompts == TINY_PROMPTS
    assert m.defaults == ()
    assert m.dimensions == TINY_HIDDEN
    assert m.inputs[:2] == ("input_ids", "attention_mask")
    assert m.output == "last_hidden_state" and m.output_kind == "token_embeddings"
    assert m.vocab_size == json.loads((tiny_st_model / "config.json").read_text())["vocab_size"]
    assert m.source["library"] == "sentence-transformers"
    assert m.source["model_type"] == "bert"
    weights = (tiny_st_model / "model.safetensors").read_bytes()
    assert m.source["weights"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    for tool in ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "tokenizers"):
        assert m.tools.get(tool), tool
    assert m.build["created"]


def test_manifest_files_are_the_bundle_files(tiny_bundle: Path) -> None:
    m = load_manifest(tiny_bundle)
    on_disk = {p.name for p in tiny_bundle.iterdir() if p.name != "bundle.json"}
    assert set(m.files) == on_disk == {"model.onnx", "tokenizer.json", "canary.json"}
    for name, entry in m.files.items():
        data = (tiny_bundle / name).read_bytes()
        assert (entry.size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_manifest_records_parity_on_the_eval_set(tiny_bundle: Path) -> None:
    m = load_manifest(tiny_bundle)
    assert m.parity is not None
    eval_set = load_eval_set()
    assert m.parity.reference == "torch"
    assert m.parity.eval_set == eval_set.name
    assert m.parity.n_inputs == len(eval_set.texts) > 0
    assert m.parity.cosine_min >= parity.MIN_COSINE
    assert m.parity.max_abs_diff is not None and m.parity.max_abs_diff < 1e-4


def test_matryoshka_dimensions_recorded(tiny_cls_bundle: Path) -> None:
    m = load_manifest(tiny_cls_bundle)
    assert m.pooling == "cls"
    assert m.matryoshka_dimensions == (32, 16)


def test_tokenizer_truncates_at_max_tokens_without_fixed_padding(tiny_bundle: Path) -> None:
    data = json.loads((tiny_bundle / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["truncation"]["max_length"] == TINY_MAX_SEQ_LENGTH
    # padding only to a batch's longest input (kept to name the pad token), never to a length
    padding = data["padding"]
    assert padding is None or padding["strategy"] == "BatchLongest"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    long = tok.encode(TEXTS[-1])
    assert len(long.ids) == TINY_MAX_SEQ_LENGTH
    assert long.tokens[-1] == "[SEP]"
    assert len(tok.encode("hello").ids) < 8  # one input alone: no padding at all


def test_plain_hf_model_records_defaults(tiny_hf_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    assert main([str(tiny_hf_model), "--out", str(out), "--quiet"]) == 0
    m = load_manifest(out)
    assert m.id == "tiny-bert-hf"  # derived from the folder's name, lowercased
    assert set(m.defaults) == {"pooling", "normalize", "max_tokens", "prompts"}
    assert m.pooling == "mean" and m.normalize is False
    assert m.max_tokens == TINY_POSITIONS
    assert m.prompts == {}
    assert m.source["library"] == "transformers"
    vectors = BundleModel(out).embed(TEXTS[:3])
    # not normalized: the model never said so
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_plain_hf_model_parity_with_transformers(tiny_hf_model: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "hf"
    assert main([str(tiny_hf_model), "--out", str(out), "--quiet"]) == 0
    tok = AutoTokenizer.from_pretrained(str(tiny_hf_model))  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(str(tiny_hf_model)).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=TINY_POSITIONS,
                return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    got = BundleModel(out).embed(TEXTS)
    assert _cosines(got, want).min() >= PARITY_COSINE


def test_last_token_pooling(tmp_path: Path) -> None:
    src = build_tiny_model(tmp_path / "last", pooling="lasttoken")
    out = tmp_path / "bundle"
    assert main([str(src), "--out", str(out), "--quiet"]) == 0
    m = load_manifest(out)
    assert m.pooling == "last"
    model = _sentence_transformers(src)
    want = model.encode(TEXTS, convert_to_numpy=True)
    assert _cosines(BundleModel(out).embed(TEXTS), want).min() >= PARITY_COSINE


def test_flags_override_the_model(tiny_st_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "over"
    code = main([str(tiny_st_model), "--out", str(out), "--id", "custom", "--alias", "a1",
                 "--alias", "org/a2", "--max-tokens", "16", "--pooling", "cls",
                 "--no-normalize", "--revision", "v1", "--quiet"])
    assert code == 0
    m = load_manifest(out)
    assert (m.id, m.aliases) == ("custom", ("a1", "org/a2"))
    assert (m.max_tokens, m.pooling, m.normalize) == (16, "cls", False)
    assert m.source["revision"] == "v1"
    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["truncation"]["max_length"] == 16


def test_force_replaces_an_existing_bundle(tiny_st_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    assert main([str(tiny_st_model), "--out", str(out), "--id", "first", "--quiet"]) == 0
    assert main([str(tiny_st_model), "--out", str(out), "--id", "second", "--quiet",
                 "--force"]) == 0
    assert load_manifest(out).id == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folders left


def test_refuses_a_bundle_that_disagrees_with_torch(tiny_st_model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A graph that drifts from torch (here: torch's side is perturbed) must not become a bundle.
    real = torch_model.last_hidden_state

    def drifted(*args: Any, **kwargs: Any) -> np.ndarray:
        hidden = real(*args, **kwargs)
        noise = np.random.default_rng(0).normal(0, 1, hidden.shape).astype(np.float32)
        return np.asarray(hidden + noise * np.abs(hidden).mean(), dtype=np.float32)

    monkeypatch.setattr(torch_model, "last_hidden_state", drifted)
    out = tmp_path / "bad"
    opts = pipeline.ExportOptions(src=str(tiny_st_model), out=out)
    with pytest.raises(ToolError, match="disagrees with torch"):
        pipeline.run(opts, Reporter(quiet=True))
    assert list(tmp_path.iterdir()) == []


def test_progress_messages_unless_quiet(tiny_st_model: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tiny_st_model), "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    assert "exporting to ONNX" in err and "checking the graph against torch" in err
    assert main([str(tiny_st_model), "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name,expected", [
    ("sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2"),
    ("My Model (v2)", "my-model-v2"), ("intfloat/e5-small-v2", "e5-small-v2")])
def test_default_id(name: str, expected: str) -> None:
    assert pipeline.default_id(name) == expected


def test_folder_without_tokenizer_json(tiny_st_model: Path, tmp_path: Path) -> None:
    # Older models ship only vocab.txt: transformers builds the fast tokenizer, the bundle
    # keeps it as tokenizer.json, and the ids are the ones the original file gave.
    import shutil

    src = Path(shutil.copytree(tiny_st_model, tmp_path / "src"))
    (src / "tokenizer.json").unlink()
    out = tmp_path / "bundle"
    assert main([str(src), "--out", str(out), "--quiet"]) == 0
    ours = BundleModel(out).tokenizer.encode(TEXTS)
    reference = json.loads((tiny_st_model / "tokenizer.json").read_text(encoding="utf-8"))
    assert reference["model"]["type"] == "WordPiece"
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(tiny_st_model / "tokenizer.json"))
    original.enable_truncation(TINY_MAX_SEQ_LENGTH)
    for tokens, enc in zip(ours, original.encode_batch(TEXTS), strict=True):
        assert tokens.ids.tolist() == [i for i, m in zip(enc.ids, enc.attention_mask,
                                                          strict=True) if m]


def test_tokenizer_follows_transformers_not_the_raw_file(tiny_st_model: Path,
                                                         tmp_path: Path) -> None:
    # tokenizer.json says "no lowercasing", tokenizer_config.json says do_lower_case: transformers
    # (and so sentence-transformers) lowercases, and the bundle must tokenize the same way.
    import shutil

    from tokenizers import Tokenizer

    src = Path(shutil.copytree(tiny_st_model, tmp_path / "src"))
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"]["lowercase"] = False
    (src / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    raw = Tokenizer.from_file(str(src / "tokenizer.json")).encode("The Museum").tokens
    assert "[UNK]" in raw  # the raw file alone would lose the capitalised words
    out = tmp_path / "bundle"
    assert main([str(src), "--out", str(out), "--quiet"]) == 0
    bundle_tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert bundle_tok.encode("The Museum").tokens == ["[CLS]", "the", "museum", "[SEP]"]
    want = _sentence_transformers(src).encode(TEXTS, convert_to_numpy=True)
    assert _cosines(BundleModel(out).embed(TEXTS), want).min() >= PARITY_COSINE


def test_refuses_a_tokenizer_that_disagrees_with_the_source(
        tiny_st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_embed.export import tokenizer

    real = tokenizer.write

    def broken(folder: Path, out: Path, *args: Any) -> Any:
        tok = real(folder, out, *args)
        data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        data["normalizer"]["lowercase"] = False  # a bundle tokenizer that drifted
        (out / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
        return tok

    monkeypatch.setattr(tokenizer, "write", broken)
    out = tmp_path / "bad"
    with pytest.raises(ToolError, match="tokenizer disagrees"):
        pipeline.run(pipeline.ExportOptions(src=str(tiny_st_model), out=out),
                     Reporter(quiet=True))
    assert list(tmp_path.iterdir()) == []


def test_source_names_the_hub_cache_commit(tmp_path: Path) -> None:
    from edge_embed.export import source

    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = tmp_path / "models--org--name" / "snapshots" / commit
    folder.mkdir(parents=True)
    resolved = source.resolve(str(folder))
    assert (resolved.revision, resolved.hub, resolved.folder) == (commit, False, folder)
    assert source.resolve(str(folder), "v2").revision == "v2"  # the user's word wins
    assert source.looks_like_hub_id("sentence-transformers/all-MiniLM-L6-v2")
    assert not source.looks_like_hub_id("./models/x")
    assert not source.looks_like_hub_id("plain-name")


def test_refuses_a_graph_input_the_service_cannot_fill(
        tiny_st_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # An architecture whose graph wants an input edge-embed has no value for (here added to the
    # tiny model's export) must be refused at export, not fail on the first request.
    import onnx
    from onnx import TensorProto, helper
    from optimum.exporters.onnx import convert

    real = convert.onnx_export_from_model

    def with_extra_input(*args: Any, output: Path, **kwargs: Any) -> Any:
        result = real(*args, output=output, **kwargs)
        graph = onnx.load(str(output / "model.onnx"))
        graph.graph.input.append(
            helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 3]))
        onnx.save(graph, str(output / "model.onnx"))
        return result

    monkeypatch.setattr(convert, "onnx_export_from_model", with_extra_input)
    out = tmp_path / "odd"
    assert main([str(tiny_st_model), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'pixel_values'" in err[0] and "no bundle written" in err[0], err
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary folder
