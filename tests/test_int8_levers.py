"""The per-token int8 levers, each on a graph small enough to check by hand: smoothing, 7-bit
weights and 8-bit pair-bounded weights (saturation-free), least-squares weight ranges, the int8
word-embedding table, and the cross-CPU comparison tool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_embed.core.bundle import Manifest, Quantization, load_manifest
from edge_embed.quantize import crosscpu
from edge_embed.quantize.cli import main
from edge_embed.quantize.gather import quantize_gathers
from edge_embed.quantize.graph import weight_matmuls
from edge_embed.quantize.pairs import pairs_fit, quantize_pairs
from edge_embed.quantize.pertoken import quantize_pertoken, quantize_weight
from edge_embed.quantize.saturation import (
    SATURATION_FREE_QMAX,
    int8_weights,
    saturation_free,
    widest_weight,
)
from edge_embed.quantize.smooth import Calibration, factors

EXIT_USAGE = 2
K, N, ROWS = 64, 32, 48
# The channel that is large in every token, as transformer activations have a few.
OUTLIER, OUTLIER_GAIN = 5, 60.0


def quantization_of(manifest: Manifest) -> Quantization:
    assert manifest.quantization is not None, "a quantized bundle records its quantization"
    return manifest.quantization


def matmul_graph(activation_op: str | None = None) -> onnx.ModelProto:
    """x [rows, K] (-> activation_op) -> MatMul by a random [K, N] weight -> y."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.1
    nodes, source = [], "x"
    if activation_op is not None:
        nodes.append(helper.make_node(activation_op, ["x"], ["a"], name="act",
                                      domain="com.microsoft" if activation_op == "Gelu" else ""))
        source = "a"
    nodes.append(helper.make_node("MatMul", [source, "w"], ["y"], name="mm"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["rows", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("com.microsoft", 1)])


def activations() -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((ROWS, K)).astype(np.float32)
    x[:, OUTLIER] *= OUTLIER_GAIN
    return x


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_smoothing_cuts_the_error_an_outlier_channel_causes() -> None:
    model, x = matmul_graph(), activations()
    want = run(model, x)
    plain = relative_error(run(quantize_pertoken(model).model, x), want)
    smooth = factors(model, weight_matmuls(model), Calibration({"x": np.abs(x).max(axis=0)}),
                     alpha=0.5)
    smoothed = relative_error(run(quantize_pertoken(model, smooth=smooth).model, x), want)
    assert smooth["x"][OUTLIER] > 5 * np.median(smooth["x"])  # the outlier is divided down
    assert smoothed < plain / 2


def test_smoothing_after_gelu_keeps_the_product() -> None:
    # GELU's output is quantized shifted (one-sided); the shift's correction must divide the
    # smoothing factors back out, else every output column is off by a constant
    model, x = matmul_graph("Gelu"), activations()
    want = run(model, x)
    calibration = Calibration({"a": np.abs(x).max(axis=0)})
    smooth = factors(model, weight_matmuls(model), calibration, alpha=0.5)
    got = run(quantize_pertoken(model, smooth=smooth).model, x)
    assert relative_error(got, want) < 0.02


def test_seven_bit_weights_are_saturation_free() -> None:
    model = matmul_graph()
    eight = quantize_pertoken(model).model
    seven = quantize_pertoken(model, weight_qmax=SATURATION_FREE_QMAX).model
    assert widest_weight(eight) == 127 and not saturation_free(eight)
    assert widest_weight(seven) == 63 and saturation_free(seven)
    # 255 * 63 * 2: the largest pair sum AVX2's vpmaddubsw can meet stays inside int16
    assert np.iinfo(np.int16).max >= 2 * 255 * 63


def worst_lane(wq: np.ndarray) -> int:
    """The extreme of AVX2's vpmaddubsw lane over K positions (2j, 2j+1) of any column, for
    uint8 activations: 255 where a weight helps the sum's magnitude, 0 where it does not; by
    plain arithmetic, one pair at a time (independent of pairs.py)."""
    worst = 0
    w = wq.astype(np.int64)
    for j in range(0, w.shape[0] - 1, 2):
        up = 255 * (np.maximum(w[j], 0) + np.maximum(w[j + 1], 0))
        down = 255 * (np.minimum(w[j], 0) + np.minimum(w[j + 1], 0))
        worst = max(worst, int(up.max()), int(-down.min()))
    return worst


def outlier_weight() -> np.ndarray:
    """Weights as smoothing leaves them: a few rows (input channels) scaled up."""
    w = np.random.default_rng(4).standard_normal((K, N)).astype(np.float32)
    w[[OUTLIER, OUTLIER + 1, 20]] *= 8.0  # 5 and 6 share a lane, 20 pairs with a normal row
    return w


@pytest.mark.parametrize("clip", [False, True])
def test_pair_bounded_weights_fit_int16_and_keep_8_bit_accuracy(clip: bool) -> None:
    w = outlier_weight()
    q, scale = quantize_pairs(w, clip)
    assert q.dtype == np.int8 and np.abs(q).max() <= 127
    assert worst_lane(q) <= np.iinfo(np.int16).max and pairs_fit(q)
    eight, eight_scale = quantize_weight(w, 127.0, clip)
    seven, seven_scale = quantize_weight(w, SATURATION_FREE_QMAX, clip)
    assert worst_lane(eight) > np.iinfo(np.int16).max and not pairs_fit(eight)  # plain 8 bits
    err = ((q * scale - w) ** 2).sum()
    err8 = ((eight * eight_scale - w) ** 2).sum()
    err7 = ((seven * seven_scale - w) ** 2).sum()
    assert err < 1.5 * err8 and err < err7 / 2


def test_pairs_follow_mlas_lanes_not_neighbours_across_them() -> None:
    # rows 1 and 2 are neighbours in K but in different lanes ((0, 1) and (2, 3)): both may
    # keep 127; rows 0 and 1 share a lane and cannot
    across = np.zeros((4, 1), np.int8)
    across[1:3] = 127
    within = np.zeros((4, 1), np.int8)
    within[0:2] = 127
    assert pairs_fit(across) and not pairs_fit(within)
    opposite = np.array([[127], [-127], [0], [0]], np.int8)  # opposite signs cannot saturate
    assert pairs_fit(opposite)
    # the step comes from the widest same-sign lane (1 + 1 -> 128), not the widest weight
    q, scale = quantize_pairs(np.array([[1.0], [1.0], [0.5], [-1.0]], np.float32))
    assert q[:, 0].tolist() == [64, 64, 32, -64] and scale[0] == pytest.approx(1 / 64)


def test_pair_bounded_graph_is_saturation_free() -> None:
    model = matmul_graph()
    eight = quantize_pertoken(model).model
    pairs = quantize_pertoken(model, weight_pairs=True).model
    assert not saturation_free(eight) and saturation_free(pairs)
    weights = list(int8_weights(pairs))
    assert weights and all(worst_lane(w) <= np.iinfo(np.int16).max for w in weights)
    x = activations()
    want = run(model, x)
    assert relative_error(run(pairs, x), want) < 2 * relative_error(run(eight, x), want) + 1e-3


def test_least_squares_ranges_never_worse_than_max() -> None:
    w = np.random.default_rng(2).standard_t(2, (2048, 16)).astype(np.float32)  # heavy tails
    for qmax in (SATURATION_FREE_QMAX, 127.0):
        errors = []
        for clip in (False, True):
            q, scale = quantize_weight(w, qmax, clip)
            errors.append(((q * scale - w) ** 2).sum(axis=0))
        assert np.all(errors[1] <= errors[0])
        if qmax == SATURATION_FREE_QMAX:  # 7 bits, heavy tails: clipping pays somewhere
            assert errors[1].sum() < errors[0].sum()


def gather_graph(rows: int, dim: int) -> tuple[onnx.ModelProto, np.ndarray]:
    table = np.random.default_rng(3).standard_normal((rows, dim)).astype(np.float32)
    table[7] *= 100.0  # a loud row must not coarsen the others: one scale per row
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="lookup")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), table


def test_int8_embedding_rows() -> None:
    model, table = gather_graph(300, 16)
    result = quantize_gathers(model, min_elements=0)
    assert result.tables == ("table",)
    stored = {i.name: i.data_type for i in result.model.graph.initializer}
    assert stored["table_int8"] == TensorProto.INT8 and "table" not in stored
    ids = np.array([0, 7, 299, 7], dtype=np.int64)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    got = ort.InferenceSession(result.model.SerializeToString(), so,
                               providers=["CPUExecutionProvider"]).run(["y"], {"ids": ids})[0]
    step = np.abs(table[ids]).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got - table[ids]) <= step / 2 + 1e-6)


def test_small_tables_stay_float() -> None:
    model, _ = gather_graph(300, 16)
    assert quantize_gathers(model).tables == ()


def test_default_manifest_records_the_recipe(tiny_int8_bundle: Path) -> None:
    q = load_manifest(tiny_int8_bundle).quantization
    assert q is not None
    params = q["params"]
    assert params["recipe"]["weight_bits"] == 8 and params["recipe"]["weight_pairs"] is True
    assert params["saturation_free"] is True
    assert params["recipe"]["smooth_alpha"] is not None and params["smoothed_inputs"] > 0
    model = onnx.load(str(tiny_int8_bundle / "model.onnx"))
    weights = list(int8_weights(model))
    assert weights and all(worst_lane(w) <= np.iinfo(np.int16).max for w in weights)


def test_plain_eight_bit_option_is_not_saturation_free(tiny_bundle: Path, tmp_path: Path) -> None:
    from tests.fixtures.quantized import build_tiny_int8

    out = build_tiny_int8(tiny_bundle, tmp_path / "w8", ["--weight-bits", "8", "--smooth",
                                                          "none", "--exclude", "none",
                                                          "--no-weight-pairs"])
    params = quantization_of(load_manifest(out))["params"]
    assert params["saturation_free"] is False and params["recipe"]["smooth_alpha"] is None


def test_pair_option_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from tests.fixtures.quantized import build_tiny_int8

    out = build_tiny_int8(tiny_bundle, tmp_path / "pairs", ["--weight-bits", "8",
                                                             "--weight-pairs", "--exclude",
                                                             "none"])
    manifest = load_manifest(out)
    params = quantization_of(manifest)["params"]
    assert params["recipe"]["weight_pairs"] is True and params["saturation_free"] is True
    assert params["widest_weight"] > SATURATION_FREE_QMAX  # 8-bit where the pairs allow it
    model = onnx.load(str(out / manifest.model_file))
    weights = list(int8_weights(model))
    assert weights and all(worst_lane(w) <= np.iinfo(np.int16).max for w in weights)
    assert manifest.quality is not None
    assert manifest.quality.cosine_min >= 0.999
    invariance = manifest.quality.batch_invariance_min
    assert invariance is not None and invariance >= 0.9999
    assert quantization_of(manifest)["verdict"]["passed"] is True


def test_pair_option_is_moot_with_seven_bits(tiny_bundle: Path, tmp_path: Path) -> None:
    from tests.fixtures.quantized import build_tiny_int8

    out = build_tiny_int8(tiny_bundle, tmp_path / "seven", ["--weight-bits", "7",
                                                             "--weight-pairs", "--exclude",
                                                             "none", "--smooth", "none"])
    params = quantization_of(load_manifest(out))["params"]
    assert params["recipe"]["weight_pairs"] is False and params["widest_weight"] <= 63


def test_kept_matmuls_as_blocks(tiny_bundle: Path, tmp_path: Path) -> None:
    from tests.fixtures.quantized import build_tiny_int8

    fp32 = onnx.load(str(tiny_bundle / load_manifest(tiny_bundle).model_file))
    kept = sorted(m.name for m in weight_matmuls(fp32))[0]
    out = build_tiny_int8(tiny_bundle, tmp_path / "blocks", ["--exclude", kept, "--kept-as",
                                                              "blocks", "--no-fuse"])
    manifest = load_manifest(out)
    q = quantization_of(manifest)
    assert q["excluded"] == [kept] and q["params"]["blockwise_matmuls"] == 1
    assert q["params"]["saturation_free"] is False  # MatMulNBits' kernels are not covered
    ops = [n.op_type for n in onnx.load(str(out / manifest.model_file)).graph.node]
    assert ops.count("MatMulNBits") == 1
    assert ops.count("MatMulIntegerToFloat") == len(weight_matmuls(fp32)) - 1
    assert manifest.quality is not None and manifest.quality.cosine_min >= 0.999
    invariance = manifest.quality.batch_invariance_min
    assert invariance is not None and invariance >= 0.9999


@pytest.mark.parametrize("value", ["0", "1", "1.5", "x"])
def test_bad_alpha_is_a_usage_error(tiny_bundle: Path, tmp_path: Path, value: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bundle), "--out", str(tmp_path / "o"), "--smooth", value])
    assert exc.value.code == EXIT_USAGE
    assert "--smooth" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_crosscpu_compare_and_record(tiny_int8_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_int8_bundle, bundle)
    same = tmp_path / "b.native.npy"
    crosscpu.embed(bundle, same)
    vectors = np.load(same)
    np.save(tmp_path / "b.avx2.npy", vectors)
    off = vectors.copy()
    off[0] = -off[0]
    np.save(tmp_path / "b.arm64.npy", off)
    assert crosscpu.main(["compare", str(same), str(tmp_path / "b.avx2.npy")]) == 0
    assert crosscpu.main(["compare", str(same), str(tmp_path / "b.arm64.npy"),
                          "--record", str(bundle)]) == 1
    recorded = json.loads((bundle / "bundle.json").read_text())["quantization"]["cross_cpu"]
    assert recorded["min_cosine"]["native vs arm64"] == pytest.approx(-1.0)
    assert recorded["texts"] == len(crosscpu.TEXTS)
    assert crosscpu.main(["compare", str(same), str(tmp_path / "missing.npy")]) == EXIT_USAGE
