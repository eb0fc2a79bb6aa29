"""The committed tiny bundles (tests/data/tiny-bundles/, served by the fast loop) are what today's
exporter makes from the same tiny models: the same manifest, graph, tokenizer and vectors.

When a change to the exporter or the tiny models makes this fail, write them anew with
`make tiny-bundles` and commit the result.

The committed copies were exported on some other machine. What an export *makes* (the graph, the
tokenizer, the manifest's fields) is the same on every machine and is compared with the fresh
export exactly. What an export *measures* (the parity figures: onnxruntime against torch on this
machine's kernels) is not: a random tiny model's nearest neighbours are near-ties, so a last-bit
difference between two CPUs' kernels flips a few of them. Those figures are measured here for the
committed graph and compared with the fresh export's, both taken on this machine; the committed
copy's own figures are only held to what is true of a faithful export anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tokenizers import Tokenizer

from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from edge_embed.core.tooling import Reporter
from edge_embed.export import torch_model
from edge_embed.export.parity import MIN_COSINE, measure
from tests.fixtures.tiny import (
    COMMITTED_BUNDLES,
    TINY_BUNDLE_ID,
    TINY_CLS_BUNDLE_ID,
    build_cls_bundle,
    build_tiny_bundle,
)

# Manifest fields that name the machine or the moment of an export, not what it made; `files`
# holds the files' digests, compared below through the files themselves, and `parity` holds
# figures this machine measures.
VOLATILE = ("build", "tools", "files", "parity")
# Figures of the parity section that are measured (the others name what was measured).
MEASURED = ("cosine_min", "cosine_mean", "nn_agreement", "max_abs_diff", "batch_invariance_min")
# Figures of the compact section measured on this machine's vectors (the scale is chosen from
# them too: compared to within SCALE_TOLERANCE instead).
COMPACT_MEASURED = ("scale", "clipped_fraction", "inputs_clipped_fraction", "max_abs",
                    "cosine_min", "cosine_mean")
# Two machines' last-bit differences move the quantile the scale comes from by far less.
SCALE_TOLERANCE = 1e-4
# Weights of the same seeded model on two machines: torch's initializers are bit-exact across
# x86 and arm64, and a constant folded by a different kernel moves a value by an ulp or two.
WEIGHT_TOLERANCE = 1e-6
# A faithful fp32 export agrees with torch to float32 rounding on any CPU (a few 1e-7).
FAITHFUL_MAX_ABS_DIFF = 1e-5
# Both bundles run through the same onnxruntime here, so their vectors agree to float32 rounding
# when their weights are the same.
VECTOR_TOLERANCE = 1e-6

Builder = Callable[[Path, Path], Path]
CASES = [(TINY_BUNDLE_ID, "tiny_st_model", build_tiny_bundle),
         (TINY_CLS_BUNDLE_ID, "tiny_cls_model", build_cls_bundle)]


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest less what differs between two faithful exports of the same model."""
    kept = {k: v for k, v in manifest.items() if k not in VOLATILE}
    kept["source"] = {k: v for k, v in manifest["source"].items() if k != "path"}
    kept["parity"] = {k: v for k, v in manifest["parity"].items() if k not in MEASURED}
    kept["compact"] = {k: v for k, v in (manifest.get("compact") or {}).items()
                       if k not in COMPACT_MEASURED}
    return kept


def graph_without_weights(model: onnx.ModelProto) -> bytes:
    """The graph's structure (nodes, inputs, outputs, initializer names and shapes), as bytes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        tensor.ClearField("raw_data")
        for name in ("float_data", "int32_data", "int64_data", "double_data"):
            tensor.ClearField(name)
    return bytes(copy.graph.SerializeToString(deterministic=True))


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray[Any, Any]]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_same_graph(old: Path, new: Path) -> None:
    a, b = onnx.load(str(old)), onnx.load(str(new))
    assert graph_without_weights(a) == graph_without_weights(b), "the graphs differ"
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name, value in wa.items():
        assert value.dtype == wb[name].dtype and value.shape == wb[name].shape, name
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, wb[name], rtol=0, atol=WEIGHT_TOLERANCE,
                                       err_msg=name)
        else:
            assert np.array_equal(value, wb[name]), name


@dataclass(frozen=True)
class Pair:
    source: Path  # the tiny model folder
    committed: Path
    fresh: Path  # exported here, now


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    bundle_id, model_fixture, build = request.param
    source: Path = request.getfixturevalue(model_fixture)
    fresh = build(source, tmp_path_factory.mktemp("fresh") / bundle_id)
    return Pair(source, COMMITTED_BUNDLES / bundle_id, fresh)


def test_committed_bundle_is_what_the_exporter_makes(pair: Pair) -> None:
    committed, fresh = pair.committed, pair.fresh
    old = json.loads((committed / "bundle.json").read_text(encoding="utf-8"))
    new = json.loads((fresh / "bundle.json").read_text(encoding="utf-8"))

    assert comparable(old) == comparable(new), "run `make tiny-bundles` and commit the result"
    assert old["files"].keys() == new["files"].keys()
    assert old["parity"].keys() == new["parity"].keys()
    assert old["compact"]["scale"] == pytest.approx(new["compact"]["scale"], rel=SCALE_TOLERANCE)
    assert_same_graph(committed / load_manifest(committed).model_file,
                      fresh / load_manifest(fresh).model_file)

    texts = list(load_eval_set().texts)
    old_tok = Tokenizer.from_file(str(committed / "tokenizer.json"))
    new_tok = Tokenizer.from_file(str(fresh / "tokenizer.json"))
    assert old_tok.get_vocab() == new_tok.get_vocab()
    assert ([e.ids for e in old_tok.encode_batch(texts)]
            == [e.ids for e in new_tok.encode_batch(texts)])

    old_vectors = BundleModel(committed).embed(texts)
    new_vectors = BundleModel(fresh).embed(texts)
    assert old_vectors.shape == new_vectors.shape == (len(texts), old["dimensions"])
    assert float(np.max(np.abs(old_vectors - new_vectors))) <= VECTOR_TOLERANCE


def test_committed_figures_are_measured_here_as_a_fresh_export_measures_them(
        pair: Pair) -> None:
    committed, fresh = pair.committed, pair.fresh
    old = json.loads((committed / "bundle.json").read_text(encoding="utf-8"))["parity"]
    new = json.loads((fresh / "bundle.json").read_text(encoding="utf-8"))["parity"]
    eval_set = load_eval_set()
    here = measure(committed, torch_model.load(pair.source), eval_set.texts, eval_set.name,
                   Reporter(quiet=True))
    # The committed graph, measured on this machine, gives the fresh export's figures.
    assert here.eval_set == new["eval_set"] and here.n_inputs == new["n_inputs"]
    for key in ("cosine_min", "cosine_mean", "max_abs_diff"):
        assert getattr(here, key) == pytest.approx(new[key], abs=VECTOR_TOLERANCE), key
    assert here.nn_agreement == new["nn_agreement"]
    # The committed figures, from whatever machine wrote them, are those of a faithful export.
    assert old["cosine_min"] >= MIN_COSINE and old["cosine_mean"] >= MIN_COSINE
    assert 0.0 <= old["max_abs_diff"] <= FAITHFUL_MAX_ABS_DIFF
    assert 0.0 <= old["nn_agreement"] <= 1.0
