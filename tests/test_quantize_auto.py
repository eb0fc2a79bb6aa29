"""`--method auto` and the gates' neighbour criterion.

The criterion is checked on synthetic vectors first (a reference whose vectors are all alike,
one whose neighbours are well apart), then on the tiny bundles through the real quantize code:
the random CLS-pooled BERT (all its vectors alike) passes by rank agreement, a coarser per-token
int8 falls back to blockwise, and a gate nothing meets refuses with every method's figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_embed.core.bundle import load_manifest
from edge_embed.quantize import build
from edge_embed.quantize.cli import main
from edge_embed.quantize.gates import NN_CRITERION, RANK_CRITERION, Gates, neighbour_criterion
from edge_embed.quantize.geometry import expected_nn_agreement, measure
from edge_embed.quantize.methods import Quantized, apply
from tests.fixtures.quantized import build_quantized

EXIT_GATE = 3
N, DIMS = 300, 32
# The tiny random model's vectors hardly depend on its matmuls (even ternary weights keep
# cosine 0.9993), so the failing per-token candidate is made by shuffling its token embedding
# table: vectors unrelated to the reference's.
EMBEDDINGS = "embeddings.word_embeddings.weight"


def collapsed(rng: np.random.Generator) -> np.ndarray:
    """Vectors all alike: one direction plus a 1e-3 wobble (a random model's CLS vectors)."""
    base = rng.normal(size=DIMS)
    return base + 1e-3 * rng.normal(size=(N, DIMS))


class FakeEvaluation:
    """What neighbour_criterion reads of an Evaluation."""

    def __init__(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        self.geometry = measure(reference, candidate)


def test_expected_nn_agreement_bounds() -> None:
    assert expected_nn_agreement(np.array([0.5, 0.3]), 1e-6) == pytest.approx(1.0)
    assert expected_nn_agreement(np.zeros(10), 0.01) == pytest.approx(0.5)
    assert expected_nn_agreement(np.array([0.01]), 0.0) == 1.0


def test_collapsed_reference_is_judged_by_rank() -> None:
    rng = np.random.default_rng(0)
    ref = collapsed(rng)
    good = ref + 2e-5 * rng.normal(size=ref.shape)  # noise ~2 % of the wobble
    geometry = measure(ref, good)
    criterion, why = neighbour_criterion(Gates(), FakeEvaluation(ref, good))  # type: ignore[arg-type]
    assert criterion == RANK_CRITERION and "tied within the noise" in why
    assert geometry.nn_expected < Gates.nn
    assert geometry.rank_agreement >= Gates.rank
    # and rank agreement can fail: vectors that lost the reference's structure
    shuffled = ref[rng.permutation(N)]
    assert measure(ref, shuffled).rank_agreement < 0.5


def test_spread_reference_is_judged_by_nn() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(N, DIMS))
    good = ref + 1e-3 * rng.normal(size=ref.shape)
    criterion, _ = neighbour_criterion(Gates(), FakeEvaluation(ref, good))  # type: ignore[arg-type]
    assert criterion == NN_CRITERION


def test_identical_vectors() -> None:
    ref = np.random.default_rng(2).normal(size=(20, 8))
    g = measure(ref, ref.copy())
    assert g.similarity_noise == 0.0 and g.nn_expected == 1.0 and g.rank_agreement == 1.0


def test_cls_bundle_passes_by_rank_agreement(tiny_cls_bundle: Path, tmp_path: Path) -> None:
    # Its vectors are all alike: NN agreement read ~0.65 at cosine >= 0.99999 and refused it.
    out = build_quantized(tiny_cls_bundle, tmp_path / "cls-int8")
    manifest = load_manifest(out)
    q, quality = manifest.quantization, manifest.quality
    assert q is not None and quality is not None
    assert q["verdict"]["neighbour_criterion"] == RANK_CRITERION
    assert quality.nn_agreement is not None and quality.nn_agreement < Gates.nn
    assert quality.cosine_min > 0.9999
    figures = q["selection"]["tried"][0]["figures"]
    assert figures["rank_agreement"] >= Gates.rank
    assert q["method"] == "pertoken"


def broken_pertoken(real: Callable[..., Quantized]) -> Callable[..., Quantized]:
    def apply(method: str, model: onnx.ModelProto, exclude: list[str],
              *variant_and_recipe: object) -> Quantized:
        result = real(method, model, exclude, *variant_and_recipe)
        if method == "pertoken":
            for init in result.model.graph.initializer:
                if init.name == EMBEDDINGS:
                    table = numpy_helper.to_array(init)
                    shuffled = table[np.random.default_rng(0).permutation(len(table))]
                    init.CopyFrom(numpy_helper.from_array(shuffled, init.name))
        return result
    return apply


def test_auto_falls_back_to_blockwise(tiny_bundle: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "apply", broken_pertoken(apply))
    out = build_quantized(tiny_bundle, tmp_path / "auto")
    q = load_manifest(out).quantization
    assert q is not None
    assert q["method"] == "blockwise"
    tried = q["selection"]["tried"]
    assert [t["method"] for t in tried] == ["pertoken", "blockwise"]
    assert tried[0]["passed"] is False and tried[0]["failures"]
    assert tried[1]["passed"] is True
    assert "pertoken failed" in q["selection"]["why"]
    assert "blockwise passed" in q["selection"]["why"]
    # the failed candidate skipped the invariance probe; the chosen one was probed
    assert tried[0]["figures"]["batch_invariance_min"] is None
    assert tried[1]["figures"]["batch_invariance_min"] >= Gates.invariance
    # the bundle is blockwise's, not the failed attempt's
    data = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    assert data["quantization"]["params"]["bits"] == 8


def test_auto_refusal_lists_every_method(tiny_bundle: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "refused"
    code = main([str(tiny_bundle), "--out", str(out), "--quiet", "--gate-mean", "1.0"])
    assert code == EXIT_GATE
    err = capsys.readouterr().err
    assert "pertoken (cosine min" in err and "blockwise (cosine min" in err
    assert err.count("mean cosine") == 2 and "no bundle written" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".old"))]


def test_explicit_method_is_tried_alone(tiny_bundle: Path, tmp_path: Path) -> None:
    out = build_quantized(tiny_bundle, tmp_path / "explicit", "--method", "pertoken",
                          "--gate-mean", "0.9")
    q = load_manifest(out).quantization
    assert q is not None
    assert q["selection"]["policy"] == "pertoken"
    assert [t["method"] for t in q["selection"]["tried"]] == ["pertoken"]
    assert "--method pertoken" in q["selection"]["why"]
