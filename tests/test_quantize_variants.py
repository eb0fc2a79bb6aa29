"""Every int8 variant quantize can write, built on the tiny model and run on THIS machine's
kernels: it agrees with fp32 and is batch-invariant. And --target picks the variant, records it,
and is refused for OpenVINO; the service warns, in its log and /health, about a bundle built
for another CPU family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.machine import this_target
from edge_embed.core.targets import OPENVINO_ADVICE, SATURATION_FREE_VARIANT_FOR, VARIANT_FOR
from edge_embed.core.tooling import measured_on
from edge_embed.quantize.variants import VARIANTS
from tests.fixtures.quantized import build_tiny_int8
from tests.fixtures.server import live_server
from tests.reliability_server import get_json
from tests.test_quantize import INVARIANT_DIFF, alone_vs_batched, op_counts

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.", "café",
         "A much longer sentence, with commas, numbers like 12345 and several clauses."]
# The tiny random model's int8 vectors against its fp32 ones: measured 0.99999+ for every
# variant (its vectors are dominated by the embeddings); a broken variant (a wrong zero point,
# a scale applied twice) lands far below.
AGREEMENT = 0.999
EXIT_USAGE = 2


def _initializer_types(bundle: Path) -> set[int]:
    model = onnx.load(str(bundle / "model.onnx"))
    mm_inputs = {n.input[1] for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"}
    return {i.data_type for i in model.graph.initializer if i.name in mm_inputs}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_is_correct_and_batch_invariant_here(name: str, tiny_bundle: Path,
                                                     tmp_path: Path) -> None:
    variant = VARIANTS[name]
    out = build_tiny_int8(tiny_bundle, tmp_path / name, ["--variant", name, "--exclude", "none"])
    q = load_manifest(out).quantization
    assert q is not None and q["method"] == "pertoken"
    assert q["target"]["variant"]["name"] == name and q["params"]["variant"]["name"] == name
    assert q["target"]["variant_chosen_by"] == "--variant"
    # the weights the kernel reads are of the variant's type
    want = onnx.TensorProto.UINT8 if variant.weights == "u8" else onnx.TensorProto.INT8
    assert _initializer_types(out) == {want}
    counts = op_counts(out)
    assert counts["MatMulIntegerToFloat"] == q["quantized_matmuls"] > 0
    if variant.row_scale == "rowmul":
        assert counts.get("Mul", 0) >= q["quantized_matmuls"]
    ref = BundleModel(tiny_bundle).embed(TEXTS)
    got = BundleModel(out).embed(TEXTS)
    assert np.all((ref * got).sum(axis=1) >= AGREEMENT)
    assert alone_vs_batched(out) <= INVARIANT_DIFF
    assert q["batch_invariance_max_abs_diff"] <= INVARIANT_DIFF


@pytest.mark.parametrize("name", ["s8s8", "u8u8-rowmul"])
def test_variant_composes_with_7bit_activations(name: str, tiny_bundle: Path,
                                                tmp_path: Path) -> None:
    # 7-bit rows move the zero point (64 for u8, -64 for s8): a wrong one lands far below
    out = build_tiny_int8(tiny_bundle, tmp_path / name, [
        "--variant", name, "--exclude", "none", "--weight-bits", "8", "--activation-bits", "7"])
    q = load_manifest(out).quantization
    assert q is not None and q["params"]["variant"]["name"] == name
    assert q["params"]["activation_zero_point"] == (-64 if VARIANTS[name].activations == "s8"
                                                    else 64)
    assert q["params"]["saturation_free"] is True
    ref = BundleModel(tiny_bundle).embed(TEXTS)
    got = BundleModel(out).embed(TEXTS)
    assert np.all((ref * got).sum(axis=1) >= AGREEMENT)
    assert alone_vs_batched(out) <= INVARIANT_DIFF


# The default recipe (8-bit weights bounded by AVX2's lane pairs) and 7-bit weights are
# saturation-free: AVX2 keeps its u8s8 kernel; with plain 8-bit weights and activations it needs
# u8u8, the kernel that cannot saturate.
PLAIN_8 = ("--weight-bits", "8", "--no-weight-pairs")


@pytest.mark.parametrize(("target", "recipe", "variant"), [
    *[(t, (), SATURATION_FREE_VARIANT_FOR[t]) for t in sorted(VARIANT_FOR)],
    ("avx2", ("--weight-bits", "7"), "u8s8"),
    ("avx2", PLAIN_8, "u8u8")])
def test_target_picks_and_records_its_variant(target: str, recipe: tuple[str, ...],
                                              variant: str, tiny_bundle: Path,
                                              tmp_path: Path) -> None:
    out = build_tiny_int8(tiny_bundle, tmp_path / target, [
        "--target", target, "--exclude", "none", *recipe])
    q = load_manifest(out).quantization
    assert q is not None
    assert q["target"]["name"] == target and q["target"]["detected"] is False
    assert q["target"]["variant"]["name"] == variant == q["params"]["variant"]["name"]
    assert q["params"]["recipe"]["weight_bits"] == (7 if "7" in recipe else 8)
    assert q["params"]["saturation_free"] is (recipe != PLAIN_8)
    assert q["target"]["variant_chosen_by"] == "target"
    assert alone_vs_batched(out) <= INVARIANT_DIFF


def test_auto_target_is_this_machine(tiny_int8_bundle: Path) -> None:
    q = load_manifest(tiny_int8_bundle).quantization
    assert q is not None
    here = this_target()
    assert here is not None, "this CPU's /proc/cpuinfo names no int8 target"
    assert q["target"]["name"] == here == q["measured_on"]["target"] == measured_on()["target"]
    assert q["target"]["detected"] is True


def test_openvino_target_refused(tiny_bundle: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from edge_embed.quantize.cli import main

    code = main([str(tiny_bundle), "--out", str(tmp_path / "ov"), "--target", "openvino"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and OPENVINO_ADVICE in err
    assert "Traceback" not in err and not (tmp_path / "ov").exists()


def test_service_warns_about_a_bundle_for_another_cpu(tiny_bundle: Path,
                                                      tmp_path: Path) -> None:
    here = this_target()
    other = next(t for t in sorted(VARIANT_FOR) if t != here)
    bundle = build_tiny_int8(tiny_bundle, tmp_path / "other", ["--target", other])
    with live_server([bundle]) as s:
        health = get_json(f"{s.url}/health")
        [warning] = health["models"]["tiny-int8"]["warnings"]
        assert f"built for {other}" in warning and f"--target {here}" in warning
        log = s.log_text()
    line = next(ln for ln in log.splitlines() if f"built for {other}" in ln)
    assert " WARNING " in line


def test_service_is_quiet_about_a_bundle_for_this_cpu(tiny_int8_bundle: Path) -> None:
    with live_server([tiny_int8_bundle]) as s:
        health = get_json(f"{s.url}/health")
        assert health["models"]["tiny-int8"]["warnings"] == []
        assert "built for" not in s.log_text()
