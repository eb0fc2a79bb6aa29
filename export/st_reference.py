"""What sentence-transformers itself does with a sentence-transformers folder: the token limit it
applies and the token ids it feeds the model.

sentence-transformers decides the limit in several places (config files, the tokenizer's
`model_max_length` capped at the position embeddings, processor arguments). Rather than reproduce
that rule, the export loads the folder with `SentenceTransformer` (offline, on the CPU), reads
`max_seq_length`, and keeps its tokenization of the evaluation texts and of an over-long input,
which the bundle's tokenizer must reproduce (parity.check_tokenizer). The model is released
before the export loads the torch model, so the weights are in memory once at a time.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_embed.core.tooling import ToolError

from . import parity
from .torch_model import load_error, weights_file

# Texts per tokenize call: each call pads to its longest input, so small calls keep the padded
# arrays small next to the model's weights.
_BATCH = 64


@dataclass(frozen=True)
class Reference:
    max_tokens: int  # where sentence-transformers cuts (or --max-tokens, set on the model)
    tokenizer: Any  # the transformers tokenizer sentence-transformers uses
    tokens: parity.TokenReference


def _load(folder: Path, trust_remote_code: bool) -> Any:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    try:
        return SentenceTransformer(str(folder), device="cpu", local_files_only=True,
                                   trust_remote_code=trust_remote_code)
    except Exception as exc:  # the same failures as transformers' own loading, and its own
        raise load_error(weights_file(folder), exc) from None


def _tokenize(model: Any, texts: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    # `preprocess` is 5.x's name for what earlier releases call `tokenize` (now deprecated).
    encode = getattr(model, "preprocess", None) or model.tokenize
    out: list[tuple[int, ...]] = []
    for start in range(0, len(texts), _BATCH):
        features = encode(list(texts[start:start + _BATCH]))
        for ids, mask in zip(features["input_ids"].tolist(),
                             features["attention_mask"].tolist(), strict=True):
            out.append(tuple(i for i, m in zip(ids, mask, strict=True) if m))
    return tuple(out)


def load(folder: Path, texts: Sequence[str], *, max_tokens: int | None,
         trust_remote_code: bool) -> Reference:
    """sentence-transformers' limit (or `max_tokens`, given on the command line) and its
    tokenization of `texts` and of an input longer than that limit."""
    model = _load(folder, trust_remote_code)
    try:
        if max_tokens is not None:
            model.max_seq_length = max_tokens
        limit = model.max_seq_length
        tokenizer = model.tokenizer
        if tokenizer is None or not isinstance(limit, int) or limit <= 0:
            raise ToolError(f"{folder}: sentence-transformers loads no text tokenizer with a "
                            f"token limit for this model (max_seq_length {limit!r})")
        all_texts = (*texts, parity.over_long_text(tokenizer, texts, limit))
        tokens = parity.TokenReference("sentence-transformers", all_texts,
                                       _tokenize(model, all_texts), len(all_texts) - 1)
    finally:
        del model
        gc.collect()
    return Reference(limit, tokenizer, tokens)
