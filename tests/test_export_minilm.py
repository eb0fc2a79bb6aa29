"""The real all-MiniLM-L6-v2: the fp32 bundle gives sentence-transformers' vectors, at its limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from tests.fixtures.minilm import MINILM_MAX_TOKENS

pytestmark = pytest.mark.minilm

# The required agreement of the fp32 bundle with sentence-transformers on torch.
MIN_COSINE = 0.99999
# Items per kind of the evaluation set: enough of each (one word, paraphrase, other languages)
# to cover the tokenizer's paths, every long input (the truncation path), and a bounded run time.
PER_KIND = 30
# Longer than the model's 256-token limit and than the 128 its shipped tokenizer.json cuts at.
OVER_LIMIT = " ".join(f"token{i} is followed by some ordinary words" for i in range(120))
BETWEEN_LIMITS = " ".join(["a sentence of ordinary english words"] * 30)  # ~190 tokens


@pytest.fixture(scope="module")
def sentence_transformer(minilm_src: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_src), device="cpu")


def _texts() -> list[str]:
    """A slice of the repo's evaluation set per kind, every long input, and two over-long ones."""
    rows = load_eval_set().items
    picked: list[str] = []
    seen: dict[str, int] = {}
    for row in rows:
        kind = row.kind
        if kind == "long" or seen.get(kind, 0) < PER_KIND:
            picked.append(row.text)
            seen[kind] = seen.get(kind, 0) + 1
    return [*picked, OVER_LIMIT, BETWEEN_LIMITS]


def test_limits(minilm_fp32_bundle: Path) -> None:
    m = load_manifest(minilm_fp32_bundle)
    assert m.max_tokens == MINILM_MAX_TOKENS
    assert (m.dimensions, m.pooling, m.normalize) == (384, "mean", True)
    assert m.defaults == ()
    tok = json.loads((minilm_fp32_bundle / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["truncation"]["max_length"] == MINILM_MAX_TOKENS
    assert tok["padding"] is None or tok["padding"]["strategy"] == "BatchLongest"
    assert m.parity is not None and m.parity.cosine_min >= 0.9999


def test_token_ids_match_sentence_transformers(minilm_fp32_bundle: Path,
                                               sentence_transformer: Any) -> None:
    texts = [OVER_LIMIT, BETWEEN_LIMITS, "hello", "Café, naïve, résumé!"]
    ours = BundleModel(minilm_fp32_bundle).tokenizer.encode(texts)
    theirs = sentence_transformer.tokenize(texts)
    for i, tokens in enumerate(ours):
        n = int(theirs["attention_mask"][i].sum())
        assert tokens.ids.tolist() == theirs["input_ids"][i][:n].tolist()
    assert len(ours[0].ids) == MINILM_MAX_TOKENS and ours[0].truncated
    assert 128 < len(ours[1].ids) < MINILM_MAX_TOKENS and not ours[1].truncated


def test_vectors_match_sentence_transformers(minilm_fp32_bundle: Path,
                                             sentence_transformer: Any) -> None:
    texts = _texts()
    want = sentence_transformer.encode(texts, convert_to_numpy=True, batch_size=32)
    got = BundleModel(minilm_fp32_bundle).embed(texts)
    cos = (got * want).sum(axis=1)  # both L2-normalized
    assert cos.min() >= MIN_COSINE, (cos.min(), texts[int(cos.argmin())][:80])
    assert np.abs(got - want).max() < 1e-4
