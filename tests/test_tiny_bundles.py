"""The committed tiny bundles (tests/data/tiny-bundles/, served by the fast loop) are what today's
exporter makes from the same tiny models: the same manifest, tokenizer and vectors.

When a change to the exporter or the tiny models makes this fail, write them anew with
`make tiny-bundles` and commit the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from tests.fixtures.tiny import (
    COMMITTED_BUNDLES,
    TINY_BUNDLE_ID,
    TINY_CLS_BUNDLE_ID,
    build_cls_bundle,
    build_tiny_bundle,
)

# Manifest fields that name the machine or the moment of an export, not what it made.
VOLATILE = ("build", "tools")
# The parity figures come from onnxruntime against torch, whose kernels may round differently
# from one release to the next; a faithful tiny export stays within 3e-7 of torch.
PARITY_TOLERANCE = 1e-6
# Both bundles run through the same onnxruntime here, so their vectors agree to float32 rounding
# when their weights are the same.
VECTOR_TOLERANCE = 1e-6

Builder = Callable[[Path, Path], Path]
CASES = [(TINY_BUNDLE_ID, "tiny_st_model", build_tiny_bundle),
         (TINY_CLS_BUNDLE_ID, "tiny_cls_model", build_cls_bundle)]


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest less what differs between two faithful exports of the same model."""
    kept = {k: v for k, v in manifest.items() if k not in (*VOLATILE, "files", "parity")}
    kept["source"] = {k: v for k, v in manifest["source"].items() if k != "path"}
    return kept


@pytest.mark.parametrize(("bundle_id", "model_fixture", "build"), CASES)
def test_committed_bundle_is_what_the_exporter_makes(
        bundle_id: str, model_fixture: str, build: Builder, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    committed = COMMITTED_BUNDLES / bundle_id
    fresh = build(request.getfixturevalue(model_fixture), tmp_path / bundle_id)
    old = json.loads((committed / "bundle.json").read_text(encoding="utf-8"))
    new = json.loads((fresh / "bundle.json").read_text(encoding="utf-8"))

    assert comparable(old) == comparable(new), "run `make tiny-bundles` and commit the result"
    assert old["parity"].keys() == new["parity"].keys()
    for key, value in old["parity"].items():
        if isinstance(value, float):
            assert value == pytest.approx(new["parity"][key], abs=PARITY_TOLERANCE), key
        else:
            assert value == new["parity"][key], key

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
