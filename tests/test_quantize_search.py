"""The sensitivity search: stable choices (grid, ties, fixed order), the shared feed and pooling,
the same result run after run, and the machine its figures were measured on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_embed.core.agreement import cosines
from edge_embed.core.bundle import Quantization, load_manifest
from edge_embed.core.encoder import BundleModel, TextTokenizer
from edge_embed.core.runtime import graph_level
from edge_embed.core.tooling import Reporter, measured_on
from edge_embed.quantize import sensitivity
from edge_embed.quantize.fusion import fuse
from edge_embed.quantize.sensitivity import (
    MIN_GAIN,
    SCORE_STEP,
    TIE_STEPS,
    Candidate,
    pick,
    worst_inputs,
)
from tests.fixtures.quantized import build_tiny_int8

# The size of the last-digit differences between CPUs' int8 kernels is ~1e-5; the search must
# not move for perturbations well inside that.
JITTER = 1e-6
TRIALS = 300
# Where the probes' worst cosine stands before the step: on a grid point's interior, so that
# JITTER cannot carry it across a rounding boundary.
CURRENT = 0.9741 + 0.2 * SCORE_STEP
TEXTS = ["hello world", "a", "The quick brown fox jumps over the lazy dog.", "café",
         "query: what is the capital of France?", "Numbers like 3.14159 and 2718.",
         " ".join(["the museum opens at ten and closes at six on weekdays"] * 6)]


def candidate(name: str, size: float, gain: float, mean: float = 0.99) -> Candidate:
    return Candidate(name, size, CURRENT + gain, mean)


# Realistic first-step scores: two attention matmuls whose gains differ by 5e-7 (far below what
# separates CPUs), an FFN matmul 4x their size, and weaker ones.
NEAR_TIE = [
    candidate("/encoder/layer.4/attention/self/value/MatMul", 1.0, 0.0074805),
    candidate("/encoder/layer.5/attention/self/value/MatMul", 1.0, 0.0074800),
    candidate("/encoder/layer.4/intermediate/dense/MatMul", 4.0, 0.0042),
    candidate("/encoder/layer.3/attention/self/key/MatMul", 1.0, 0.0041),
    candidate("/encoder/layer.2/attention/output/dense/MatMul", 1.0, 0.0023),
]


def jittered(cands: list[Candidate], rng: np.random.Generator) -> list[Candidate]:
    return [Candidate(c.name, c.size, c.cosine_min + rng.uniform(-JITTER, JITTER),
                      c.cosine_mean + rng.uniform(-JITTER, JITTER)) for c in cands]


def raw_argmax(cands: list[Candidate], current: float) -> str:
    """The search's former rule: the highest raw gain per size, then the highest mean."""
    best = max(cands, key=lambda c: ((c.cosine_min - current) / c.size, c.cosine_mean))
    return best.name


def test_jitter_does_not_change_the_choice() -> None:
    rng = np.random.default_rng(0)
    chosen = {pick(jittered(NEAR_TIE, rng), CURRENT + rng.uniform(-JITTER, JITTER))
              for _ in range(TRIALS)}
    assert {c.name for c in chosen if c is not None} == {
        "/encoder/layer.4/attention/self/value/MatMul"}
    assert None not in chosen


def test_jitter_did_change_the_raw_comparison() -> None:
    # The scenario above is one where comparing raw cosines flips: the test can fail.
    rng = np.random.default_rng(0)
    flips = {raw_argmax(jittered(NEAR_TIE, rng), CURRENT) for _ in range(TRIALS)}
    assert len(flips) == 2


def test_ties_go_to_the_smaller_matmul_then_the_name() -> None:
    # The FFN matmul lifts the worst cosine 4x as much for 4x the weight plus one grid step:
    # within TIE_STEPS of the attention one, so the cheaper attention matmul wins.
    steps = 40
    ffn = candidate("a/ffn", 4.0, (4 * steps + 4) * SCORE_STEP)
    attn = candidate("z/attn", 1.0, steps * SCORE_STEP)
    assert pick([ffn, attn], CURRENT) == attn
    # a clear margin beats the order
    clear = candidate("a/ffn", 4.0, 4 * (steps + TIE_STEPS + 1) * SCORE_STEP)
    assert pick([clear, attn], CURRENT) == clear
    # same size, same score: the first name
    twin = candidate("b/attn", 1.0, steps * SCORE_STEP)
    assert pick([attn, twin], CURRENT) == twin
    assert pick([twin, attn], CURRENT) == twin  # not the order they were tried in


def test_below_min_gain_is_not_chosen_nor_steals_a_tie() -> None:
    small = candidate("a/attn", 1.0, MIN_GAIN / 2)
    assert pick([small], CURRENT) is None
    # scores: small 5 steps, big 24/4 = 6 steps: tied, but the small one does not count
    big = candidate("b/ffn", 4.0, 4 * (MIN_GAIN / 2 + SCORE_STEP))
    assert pick([small, big], CURRENT) == big
    assert pick([], CURRENT) is None


def test_probes_are_stable_under_jitter() -> None:
    rng = np.random.default_rng(1)
    # grid points' interiors, several inputs sharing a grid value (ties by input order)
    scan = 0.97 + (rng.integers(0, 200, size=500) + 0.3) * SCORE_STEP
    want = worst_inputs(scan)
    for _ in range(50):
        assert worst_inputs(scan + rng.uniform(-JITTER, JITTER, size=scan.shape)) == want
    assert len(want) == sensitivity.PROBES
    assert sorted(scan[want])[-1] <= np.sort(scan)[sensitivity.PROBES]


def test_measured_on_reads_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse avx2 avx512f "
                   "avx512bw avx512_vnni amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: "
                   "Other\nflags\t\t: fpu\n", encoding="utf-8")
    info = measured_on(x86)
    assert info["cpu"] == "Some Xeon"
    assert info["isa"] == ["avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"]
    assert info["onnxruntime"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd40\n",
                   encoding="utf-8")
    assert measured_on(arm)["isa"] == ["asimddp", "i8mm"]
    assert measured_on(arm)["cpu"]  # the architecture stands in for a missing name
    assert measured_on(tmp_path / "absent")["isa"] == []


def test_manifest_records_the_machine(tiny_int8_bundle: Path) -> None:
    q = load_manifest(tiny_int8_bundle).quantization
    assert q is not None
    assert q["measured_on"] == measured_on()
    assert q["sensitivity"]["score_step"] == SCORE_STEP


def _switchboard(bundle: Path, fused: bool) -> tuple[sensitivity._Switchboard, list[np.ndarray]]:
    manifest = load_manifest(bundle)
    model = onnx.load(str(bundle / manifest.model_file))
    if fused:
        model = fuse(model, skip_layer_norm=False).model
    tokenizer = TextTokenizer(bundle / manifest.tokenizer_file, manifest.max_tokens)
    fusion = Quantization.of({"fused": fused})
    level = graph_level(dataclasses.replace(manifest, quantization=fusion), "auto")
    board = sensitivity._Switchboard(model, manifest, tokenizer, level)
    return board, [t.ids for t in tokenizer.encode(TEXTS)]


def test_switchboard_all_fp32_is_the_fp32_bundle(tiny_bundle: Path) -> None:
    board, rows = _switchboard(tiny_bundle, fused=False)
    got = board.embed(rows, set(board.switches))
    want = BundleModel(tiny_bundle).embed(TEXTS)
    assert cosines(got, want).min() > 1 - 1e-6


def test_switchboard_all_int8_is_the_int8_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    # Every matmul in int8, fused as quantize fuses: the bundle quantize writes, vector for vector
    # (without the levers the search does not see: smoothing's calibrated factors, and the int8
    # word-embedding table, which needs the embedding left unfused).
    int8 = build_tiny_int8(tiny_bundle, tmp_path / "int8", ["--exclude", "none", "--smooth",
                                                            "none", "--embeddings", "fp32"])
    board, rows = _switchboard(tiny_bundle, fused=True)
    got = board.embed(rows, set())
    want = BundleModel(int8).embed(TEXTS)
    assert cosines(got, want).min() > 1 - 1e-6
    # and it is int8: not the fp32 vectors
    assert np.abs(got - board.embed(rows, set(board.switches))).max() > 1e-6


def test_search_is_the_same_run_after_run(tiny_bundle: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny model meets the target at once; an unreachable target and a finer grid make the
    # search take steps, so that there is a choice to repeat.
    monkeypatch.setattr(sensitivity, "TARGET_MIN_COSINE", 1.0)
    monkeypatch.setattr(sensitivity, "SCORE_STEP", 1e-9)
    monkeypatch.setattr(sensitivity, "MIN_GAIN", 1e-9)
    monkeypatch.setattr(sensitivity, "MAX_EXCLUDED_SHARE", 0.25)
    manifest = load_manifest(tiny_bundle)
    model = fuse(onnx.load(str(tiny_bundle / "model.onnx")), skip_layer_norm=False).model
    fusion = Quantization.of({"fused": True})
    level = graph_level(dataclasses.replace(manifest, quantization=fusion), "auto")
    runs = [sensitivity.choose_fp32_matmuls(model, manifest, tiny_bundle, TEXTS * 5, level,
                                            Reporter(quiet=True)) for _ in range(2)]
    assert runs[0].excluded, "the search took no step: nothing was compared"
    assert runs[0].excluded == runs[1].excluded
    assert runs[0].steps == runs[1].steps  # the very same cosines, to the last bit
    assert runs[0].first_gains == runs[1].first_gains
