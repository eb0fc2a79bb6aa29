"""`edge-embed quantize` on the tiny random BERT: manifest, methods, invariance, gates, errors.

The tiny model goes through the real fuse / quantize / evaluate code in seconds. Its cosines
against fp32 all read ~1.0 (a random 2-layer model is dominated by its embeddings), so quality
numbers are checked on MiniLM (test_quantize_minilm.py); batch invariance is checked here
exactly: per-token int8 must give bit-identical vectors alone and inside a padded batch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_embed.core import canary
from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from edge_embed.quantize.cli import main
from edge_embed.quantize.graph import weight_matmuls
from tests.fixtures.quantized import TINY_GATES, TINY_INT8_ID, build_tiny_int8

EXIT_USAGE = 2
EXIT_GATE = 3
# Per-token int8 keeps integer arithmetic exact: alone vs batched differs by float rounding at
# most (measured: exactly 0.0); dynamic int8 differs by ~1e-4 on the tiny model.
INVARIANT_DIFF = 1e-6


def op_counts(bundle: Path) -> dict[str, int]:
    model = onnx.load(str(bundle / "model.onnx"))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def alone_vs_batched(bundle: Path) -> float:
    """Largest |difference| of normalized vectors: each probe alone vs in a padded batch of 17."""
    model = BundleModel(bundle)
    texts = load_eval_set().texts
    tokens = model.tokenizer.encode(texts)
    by_length = sorted(range(len(tokens)), key=lambda i: len(tokens[i].ids))
    mates = [tokens[i].ids for i in [by_length[-1], *by_length[:: len(by_length) // 15]]][:16]
    worst = 0.0
    for probe in by_length[:: len(by_length) // 10]:
        alone = model.finish(model.run([tokens[probe].ids]))
        batched = model.finish(model.run([*mates[:5], tokens[probe].ids, *mates[5:]]))[5:6]
        worst = max(worst, float(np.abs(alone - batched).max()))
    return worst


def no_partials(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old"))]


def test_manifest_keeps_fp32_metadata(tiny_bundle: Path, tiny_int8_bundle: Path) -> None:
    src = load_manifest(tiny_bundle)
    out = load_manifest(tiny_int8_bundle)
    assert out.id == TINY_INT8_ID
    assert out.precision == "int8"
    for name in ("dimensions", "max_tokens", "pooling", "normalize", "prompts",
                 "matryoshka_dimensions", "output", "output_kind", "vocab_size", "source",
                 "defaults", "tokenizer_file"):
        assert getattr(out, name) == getattr(src, name), name
    assert out.parity is None  # the fp32 bundle's torch parity does not describe this graph
    graph_inputs = [i.name for i in onnx.load(str(tiny_int8_bundle / "model.onnx")).graph.input]
    assert list(out.inputs) == graph_inputs
    assert set(out.files) == {"model.onnx", "tokenizer.json", "canary.json"}
    assert out.tools.get("onnxruntime")


def test_manifest_records_method_and_quality(tiny_bundle: Path, tiny_int8_bundle: Path) -> None:
    out = load_manifest(tiny_int8_bundle)
    q = out.quantization
    assert q is not None
    assert q["method"] == "pertoken"
    assert q["precision"] == "int8"
    counts = op_counts(tiny_int8_bundle)
    # "fused" drives the service's graph level: it must say what the graph really is.
    assert q["fused"] is True
    assert counts.get("MultiHeadAttention", 0) > 0
    assert "SkipLayerNormalization" not in counts  # slower on CPU than LayerNorm + Add
    assert counts.get("MultiHeadAttention", 0) == q["fusion"]["MultiHeadAttention"]
    assert q["quantized_matmuls"] + len(q["excluded"]) == q["candidate_matmuls"]
    assert counts.get("MatMulIntegerToFloat", 0) == q["quantized_matmuls"]
    assert q["gates"]["invariance"] == float(TINY_GATES[5])
    assert set(q["per_kind"]) == {"para", "word", "long", "multi"}
    assert q["reference"]["id"] == load_manifest(tiny_bundle).id
    quality = out.quality
    assert quality is not None
    assert quality.reference == "fp32-bundle"
    assert quality.eval_set.startswith("eval.jsonl@")
    assert quality.n_inputs == len(load_eval_set().items)
    assert 0.999 <= quality.cosine_min <= quality.cosine_mean <= 1.0
    assert quality.nn_agreement is not None and quality.nn_agreement >= 0.95
    assert quality.batch_invariance_min is not None and quality.batch_invariance_min >= 0.9999


def test_int8_canaries_are_the_fp32_bundles_vectors(tiny_bundle: Path,
                                                    tiny_int8_bundle: Path) -> None:
    out = load_manifest(tiny_int8_bundle)
    info, quality = out.canary, out.quality
    assert info is not None and quality is not None
    carried = canary.load(tiny_int8_bundle, out)
    assert carried is not None and len(carried.texts) == info.count
    # the reference is the fp32 bundle's own vectors for the same texts
    np.testing.assert_allclose(carried.vectors, BundleModel(tiny_bundle).embed(carried.texts),
                               atol=1e-6)
    # the build machine's agreement is the int8 graph's, measured as the service measures it
    measured = canary.measure(BundleModel(tiny_int8_bundle), carried)
    assert info.build_agreement == measured
    worst = min(quality.cosine_min, info.build_agreement)
    assert info.gate == pytest.approx(worst - canary.QUANTIZED_KERNEL_MARGIN, abs=1e-6)
    assert measured >= info.gate


def test_pertoken_is_batch_invariant(tiny_int8_bundle: Path) -> None:
    assert alone_vs_batched(tiny_int8_bundle) <= INVARIANT_DIFF
    q = load_manifest(tiny_int8_bundle).quantization
    assert q is not None and q["batch_invariance_max_abs_diff"] <= INVARIANT_DIFF


def test_int8_vectors_close_to_fp32(tiny_bundle: Path, tiny_int8_bundle: Path) -> None:
    texts = ["hello world", "The quick brown fox jumps over the lazy dog.", "café"]
    ref = BundleModel(tiny_bundle).embed(texts)
    got = BundleModel(tiny_int8_bundle).embed(texts)
    assert np.all((ref * got).sum(axis=1) > 0.999)


def test_dynamic_is_not_batch_invariant(tiny_bundle: Path, tmp_path: Path) -> None:
    out = build_tiny_int8(tiny_bundle, tmp_path / "dyn", ["--method", "dynamic"])
    assert "DynamicQuantizeMatMul" in op_counts(out) or "MatMulInteger" in op_counts(out)
    diff = alone_vs_batched(out)
    assert diff > INVARIANT_DIFF  # the whole-batch activation scale leaks between rows
    q = load_manifest(out).quantization
    assert q is not None and q["method"] == "dynamic"
    assert q["batch_invariance_max_abs_diff"] > INVARIANT_DIFF


def test_blockwise(tiny_bundle: Path, tmp_path: Path) -> None:
    out = build_tiny_int8(tiny_bundle, tmp_path / "block", ["--method", "blockwise"])
    manifest = load_manifest(out)
    assert manifest.quantization is not None
    assert manifest.quantization["params"]["bits"] == 8
    assert manifest.quantization["params"]["block_size"] == 32
    assert op_counts(out).get("MatMulNBits", 0) == manifest.quantization["quantized_matmuls"] > 0
    assert alone_vs_batched(out) <= INVARIANT_DIFF


def test_fp16(tiny_bundle: Path, tmp_path: Path) -> None:
    out = build_tiny_int8(tiny_bundle, tmp_path / "fp16", ["--precision", "fp16",
                                                           "--id", "tiny-fp16"])
    manifest = load_manifest(out)
    assert manifest.precision == "fp16"
    model = onnx.load(str(out / "model.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    # keep_io_types: the service feeds int64 ids and reads float32
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert manifest.quality is not None and manifest.quality.cosine_mean > 0.999


def test_explicit_exclude_and_no_fuse(tiny_bundle: Path, tmp_path: Path) -> None:
    fp32 = onnx.load(str(tiny_bundle / "model.onnx"))
    names = [m.name for m in weight_matmuls(fp32)]
    keep = names[-1]
    out = build_tiny_int8(tiny_bundle, tmp_path / "ex", ["--no-fuse", "--exclude", keep])
    q = load_manifest(out).quantization
    assert q is not None
    assert q["fused"] is False and q["excluded"] == [keep]
    model = onnx.load(str(out / "model.onnx"))
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"
               and n.input[1] in {i.name for i in model.graph.initializer}]
    assert matmuls == [keep]
    assert op_counts(out)["MatMulIntegerToFloat"] == len(names) - 1


def test_gate_failure_writes_nothing(tiny_bundle: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "failed"
    # No quantized model is exactly equal to fp32: a mean gate of 1.0 must fail.
    code = main([str(tiny_bundle), "--out", str(out), "--quiet", *TINY_GATES[2:],
                 "--gate-mean", "1.0"])
    assert code == EXIT_GATE
    err = capsys.readouterr().err
    assert "mean cosine" in err and "no bundle written" in err
    assert not out.exists()
    assert no_partials(tmp_path) == []


def test_gate_failure_keep_failed(tiny_bundle: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kept"
    code = main([str(tiny_bundle), "--out", str(out), "--quiet", "--keep-failed",
                 "--gate-mean", "1.0", "--gate-nn", "0.5"])
    assert code == EXIT_GATE
    assert "kept" in capsys.readouterr().err
    assert load_manifest(out).precision == "int8"


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main([*argv, "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_error_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error([str(tmp_path / "nope"), "--out", str(tmp_path / "out")], capsys)
    assert "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_error_not_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    err = _error([str(tmp_path / "empty"), "--out", str(tmp_path / "out")], capsys)
    assert "bundle.json" in err
    assert not (tmp_path / "out").exists()


def test_error_corrupt_model(tiny_bundle: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "model.onnx").write_bytes(b"this is not a protobuf" * 10)
    err = _error([str(broken), "--out", str(tmp_path / "out")], capsys)
    assert "not a valid ONNX model" in err
    assert not (tmp_path / "out").exists()
    assert no_partials(tmp_path) == []


def test_error_existing_output(tiny_bundle: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _error([str(tiny_bundle), "--out", str(out)], capsys)
    assert "--force" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_error_int8_input(tiny_int8_bundle: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    err = _error([str(tiny_int8_bundle), "--out", str(tmp_path / "out")], capsys)
    assert "precision is int8" in err


def test_error_unknown_exclude(tiny_bundle: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    err = _error([str(tiny_bundle), "--out", str(tmp_path / "out"), "--exclude", "NoSuchNode"],
                 capsys)
    assert "NoSuchNode" in err
    assert not (tmp_path / "out").exists()
    assert no_partials(tmp_path) == []


def test_python_dash_m_and_dispatcher() -> None:
    for argv in ([sys.executable, "-m", "edge_embed.quantize", "--help"],
                 [sys.executable, "-m", "edge_embed.service.cli", "quantize", "--help"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "--gate-invariance" in done.stdout


def test_auto_exclusion_measures_before_excluding(tiny_int8_bundle: Path) -> None:
    from edge_embed.quantize.sensitivity import TARGET_MIN_COSINE

    data = json.loads((tiny_int8_bundle / "bundle.json").read_text())
    q = data["quantization"]
    assert q["exclude_policy"] == "auto"
    search = q["sensitivity"]
    assert search["candidates"] == q["candidate_matmuls"]
    # The tiny model already meets the target with every matmul in int8: nothing is given back.
    assert search["all_int8"]["cosine_min"] >= TARGET_MIN_COSINE
    assert q["excluded"] == [] and search["steps"] == []


def test_error_graph_input_it_cannot_fill(tiny_bundle: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from onnx import TensorProto, helper

    odd = Path(shutil.copytree(tiny_bundle, tmp_path / "odd"))
    model = onnx.load(str(odd / "model.onnx"))
    model.graph.input.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                           ["b", 3]))
    onnx.save(model, str(odd / "model.onnx"))
    err = _error([str(odd), "--out", str(tmp_path / "out")], capsys)
    assert "'pixel_values'" in err and "model.onnx" in err
    assert not (tmp_path / "out").exists()
    assert no_partials(tmp_path) == []
