"""Check the exported graph against the torch model it came from, on the repo's evaluation set.

Both sides get the same input arrays (the bundle's tokenizer, then core.feeds) and the same
numpy pooling (core.pooling), so what is measured is the graph alone; the service's code path
(core.encoder.BundleModel) runs the ONNX side, so the check covers the bundle exactly as it
will be served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_embed.core.agreement import cosines, nn_agreement
from edge_embed.core.bundle import Quality
from edge_embed.core.encoder import BundleModel
from edge_embed.core.pooling import finish, pool
from edge_embed.core.runtime import RuntimeOptions
from edge_embed.core.tooling import Reporter, ToolError

from . import torch_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# A graph that is a faithful export agrees with torch to ~1e-7 (measured: within 3e-7 on
# MiniLM); 0.9999 leaves room for kernel differences and still catches a wrong graph, a wrong
# input, or a dropped token_type_ids.
MIN_COSINE = 0.9999
# Batch size for the check: long enough to include padding, small enough to keep memory low.
PARITY_BATCH = 16
# How far past the limit the tokenizer check's over-long input goes: well past, so that the
# cut shows even where a tokenizer merges pieces across the boundary.
OVER_LONG_MARGIN = 16
# Times the evaluation texts may be repeated to make that input: a tokenizer that still makes
# too few tokens drops most of the text, and the check says so rather than loop.
OVER_LONG_ROUNDS = 100


def measure(bundle: Path, model: PreTrainedModel, texts: Sequence[str], eval_name: str,
            reporter: Reporter) -> Quality:
    # ONNX and torch batches alternate here: onnxruntime's spinning threads would keep the cores
    # busy after each run, competing with torch's threads; a tool needs no batch-1 latency.
    onnx_model = BundleModel(bundle, RuntimeOptions(spinning=False))
    manifest = onnx_model.manifest
    tokens = onnx_model.tokenizer.encode(list(texts))
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i].ids))
    dims = manifest.dimensions
    got = np.empty((len(texts), dims), dtype=np.float32)
    want = np.empty((len(texts), dims), dtype=np.float32)
    starts = range(0, len(order), PARITY_BATCH)
    for start in reporter.progress(starts, "parity with torch", total=len(starts)):
        rows = order[start:start + PARITY_BATCH]
        ids = [tokens[i].ids for i in rows]
        got[rows] = onnx_model.run(ids)
        feed = onnx_model.feed(ids)
        want[rows] = pool(torch_model.last_hidden_state(model, feed.arrays), feed.mask,
                          manifest.pooling)
    got = finish(got, dimensions=None, normalized=manifest.normalize)
    want = finish(want, dimensions=None, normalized=manifest.normalize)
    cos = cosines(got, want, np.float32)
    return Quality(reference="torch", eval_set=eval_name, n_inputs=len(texts),
                   cosine_min=float(cos.min()), cosine_mean=float(cos.mean()),
                   nn_agreement=nn_agreement(got, want),
                   max_abs_diff=float(np.abs(got - want).max()))


def check(quality: Quality, min_cosine: float = MIN_COSINE) -> None:
    if not quality.cosine_min >= min_cosine:
        raise ToolError(f"the exported graph disagrees with torch: cosine min "
                        f"{quality.cosine_min:.6f} < {min_cosine} (mean {quality.cosine_mean:.6f}, "
                        f"max abs diff {quality.max_abs_diff:.3g}); no bundle written")


@dataclass(frozen=True)
class TokenReference:
    """How the model's own library tokenizes the evaluation texts and one over-long input: what
    the bundle's tokenizer (the service's code) must reproduce, cut included."""

    name: str  # "sentence-transformers" or "transformers"
    texts: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]
    over_long: int  # the index in `texts` of the input longer than the limit


def over_long_text(tokenizer: Any, texts: Sequence[str], limit: int) -> str:
    """The first texts (repeated as needed) joined into one input of more than `limit` tokens."""
    pool = list(texts)
    lengths = tokenizer(pool, add_special_tokens=False, verbose=False)["input_ids"]
    want = limit + OVER_LONG_MARGIN
    chosen: list[str] = []
    total = 0
    for _ in range(OVER_LONG_ROUNDS):
        for text, ids in zip(pool, lengths, strict=True):
            chosen.append(text)
            total += len(ids)
            if total > want:
                joined = " ".join(chosen)
                # verbose=False: transformers would warn that the input is over the limit
                if len(tokenizer(joined, verbose=False)["input_ids"]) > want:
                    return joined
    raise ToolError(f"the tokenizer makes no input longer than {want} tokens from the "
                    "evaluation texts; cannot check where the bundle cuts")


def transformers_reference(tokenizer: Any, texts: Sequence[str],
                           max_tokens: int) -> TokenReference:
    """For a plain Hugging Face folder: the transformers tokenizer, cut at max_tokens."""
    all_texts = (*texts, over_long_text(tokenizer, texts, max_tokens))
    ids = tokenizer(list(all_texts), truncation=True, max_length=max_tokens)["input_ids"]
    return TokenReference("transformers", all_texts, tuple(tuple(i) for i in ids),
                          len(all_texts) - 1)


def check_tokenizer(bundle: Path, reference: TokenReference) -> None:
    """The bundle's tokenization (the service's code) must give the reference's ids, and cut an
    over-long input where the reference does."""
    texts = list(reference.texts)
    got = BundleModel(bundle, RuntimeOptions(spinning=False)).tokenizer.encode(texts)
    cut, want_cut = len(got[reference.over_long].ids), len(reference.ids[reference.over_long])
    if cut != want_cut:
        raise ToolError(f"{reference.name} cuts an over-long input at {want_cut} tokens, the "
                        f"bundle at {cut}; no bundle written (--max-tokens sets the limit)")
    bad = [i for i, (g, w) in enumerate(zip(got, reference.ids, strict=True))
           if g.ids.tolist() != list(w)]
    if bad:
        first = bad[0]
        # the ends show a special token one side adds and the other does not (an EOS, a BOS)
        ours, theirs = got[first].ids.tolist(), list(reference.ids[first])
        raise ToolError(f"the bundle's tokenizer disagrees with the {reference.name} tokenizer "
                        f"on {len(bad)} of {len(texts)} inputs (first: {texts[first][:60]!r}: "
                        f"{reference.name} ids {_ends(theirs)}, bundle ids {_ends(ours)}); "
                        "no bundle written")


def _ends(ids: Sequence[int], keep: int = 3) -> str:
    """`[a, b, c, ... x, y, z]` (N ids): enough to see a missing or extra special token."""
    if len(ids) <= 2 * keep:
        return f"{list(ids)}"
    head = ", ".join(map(str, ids[:keep]))
    tail = ", ".join(map(str, ids[-keep:]))
    return f"[{head}, ... {tail}] ({len(ids)} ids)"
