"""Tokenizing reads a bounded prefix of each text: the same ids as the tokenizer's own
truncation of the whole text, the exact token count up to the tokenizer's `count_cap` (4x the
limit, 1024 at least), a lower bound flagged as such past it, and work bounded by the limit, not
by the text's length.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from edge_embed.core.encoder import BundleModel, TextTokenizer
from tests.fixtures.server import MakeClient
from tests.fixtures.tiny import CORPUS

# The longest input the server takes by default (characters).
LONGEST = 64_000


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle: Path) -> TextTokenizer:
    return BundleModel(tiny_bundle).tokenizer


def _reference(tiny_bundle: Path, limit: int) -> tuple[Tokenizer, Tokenizer]:
    path = str(tiny_bundle / "tokenizer.json")
    full, cut = Tokenizer.from_file(path), Tokenizer.from_file(path)
    full.no_truncation()
    full.no_padding()
    cut.enable_truncation(limit)
    cut.no_padding()
    return full, cut


def _texts() -> list[str]:
    rng = random.Random(7)
    vocab = " ".join(CORPUS).split()

    def words(n: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(n))

    return [words(1), words(10), *(words(n) for n in (30, 60, 61, 62, 63, 64, 65, 100, 200,
                                                       250, 255, 256, 300, 1000)),
            words(LONGEST // 4)[:LONGEST],
            " " * (LONGEST - 2000) + words(300),  # few tokens per character: longer prefixes
            "x" * LONGEST,  # one word of the whole text
            "é😀 " * 2000, words(2000).replace(" ", "")]


def test_ids_as_the_tokenizers_own_cut_and_counts_exact_up_to_the_bound(
        tokenizer: TextTokenizer, tiny_bundle: Path) -> None:
    limit = tokenizer.max_tokens
    full, cut = _reference(tiny_bundle, limit)
    texts = _texts()
    got = tokenizer.encode(texts)
    for text, tok in zip(texts, got, strict=True):
        everything = len(full.encode(text).ids)
        assert tok.ids.tolist() == cut.encode(text).ids, text[:60]
        if everything <= tokenizer.count_cap:
            assert (tok.original_tokens, tok.exact) == (everything, True), text[:60]
        elif tok.exact:
            assert tok.original_tokens == everything, text[:60]
        else:  # a lower bound, past the bound
            assert tokenizer.count_cap < tok.original_tokens <= everything, text[:60]
    assert any(not t.exact for t in got)  # the long texts did stop the count


def test_work_is_bounded_by_the_limit_not_the_length(tokenizer: TextTokenizer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    for name in ("_full", "_cut"):
        inner = getattr(tokenizer, name)

        class Counting:
            def __init__(self, wrapped: Any) -> None:
                self.wrapped = wrapped

            def encode_batch(self, texts: list[str]) -> Any:
                read.append(sum(len(t) for t in texts))
                return self.wrapped.encode_batch(texts)

        monkeypatch.setattr(tokenizer, name, Counting(inner))
    text = " ".join(" ".join(CORPUS).split() * 400)[:LONGEST]
    (tok,) = tokenizer.encode([text])
    assert tok.truncated and not tok.exact
    assert sum(read) <= tokenizer.scan_bound(len(text)) < LONGEST / 4, read


async def test_the_warning_says_when_the_count_is_a_lower_bound(
        make_client: MakeClient, tokenizer: TextTokenizer) -> None:
    client = await make_client()
    limit = tokenizer.max_tokens
    near = " ".join(["fox"] * (limit * 2))  # counted whole: exact
    far = " ".join(["fox"] * (tokenizer.count_cap * 4))
    resp = await client.post("/v1/embeddings", json={"model": "tiny", "input": [near, far]})
    assert resp.status == 200
    first, second = (await resp.json())["warnings"]
    assert (first["original_tokens"], first["original_tokens_exact"]) == (limit * 2 + 2, True)
    assert second["original_tokens_exact"] is False
    assert second["original_tokens"] > tokenizer.count_cap
    assert f"at least {second['original_tokens']} tokens" in second["message"]
    resp = await client.post("/v1/embeddings", json={"model": "tiny", "input": far,
                                                     "truncate": False})
    assert resp.status == 400
    assert "has at least" in (await resp.json())["error"]["message"]
