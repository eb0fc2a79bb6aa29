"""The model's input arrays: the one builder of the feed for whatever inputs an ONNX graph declares.

The service (encoder.BundleModel), the quantizer's sensitivity search and the export's torch
parity check all feed a model through `build_feeds`, so that a graph input one of them did not
know about cannot pass one check and fail in another. Each input is filled as Hugging Face fills
it for the model's forward pass; any other input is refused by name (`UnsupportedGraphInput`)
rather than guessed.

numpy only: the serving path imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_embed.core.errors import UnsupportedGraphInput

I64 = npt.NDArray[np.int64]
PaddingSide = Literal["right", "left"]
PADDING_SIDES: tuple[PaddingSide, ...] = ("right", "left")
# Every graph input the builder can fill. BERT-style encoders declare the first three; decoders
# (Qwen, Gemma) also take position_ids, which their ONNX export does not derive itself.
FILLED_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def check_inputs(names: Iterable[str]) -> None:
    """Refuse the first input name the builder cannot fill."""
    for name in names:
        if name not in FILLED_INPUTS:
            raise UnsupportedGraphInput(name, FILLED_INPUTS)


@dataclass(frozen=True)
class Feed:
    arrays: dict[str, I64]  # graph input name -> array, exactly the graph's inputs
    mask: I64  # [rows, width], 1 on real tokens: what pooling reads, fed or not


def build_feeds(rows: Sequence[I64], inputs: Sequence[str], *, pad_id: int,
                side: PaddingSide = "right", width: int | None = None,
                segments: Sequence[I64] | None = None) -> Feed:
    """The arrays for `inputs` (the graph's input names) from token-id rows, padded on `side`.

    Rows are padded to the longest row, or to `width` if that is wider (the service pads to a
    few fixed widths so that onnxruntime reuses its buffers); a lone row is never padded, since
    it has no batch-mate to line up with and padding would only cost compute.
    `segments`: each row's token type ids (a cross-encoder's pair: 0 for the query's side, 1 for
    the document's, as the tokenizer gives them); None: all 0, as for a single text.
    """
    if not rows:
        raise ValueError("build_feeds needs at least one row")
    longest = max(len(r) for r in rows)
    width = longest if len(rows) == 1 else max(longest, width or 0)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    for i, ids in enumerate(rows):
        span = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        input_ids[i, span] = ids
        mask[i, span] = 1
        if segments is not None:
            types[i, span] = segments[i]
    arrays: dict[str, I64] = {}
    for name in inputs:
        if name == "input_ids":
            arrays[name] = input_ids
        elif name == "attention_mask":
            arrays[name] = mask
        elif name == "token_type_ids":
            arrays[name] = types
        elif name == "position_ids":
            arrays[name] = position_ids(mask, side)
        else:
            raise UnsupportedGraphInput(name, FILLED_INPUTS)
    return Feed(arrays, mask)


def position_ids(mask: I64, side: PaddingSide) -> I64:
    """Positions as transformers computes them for the padding side in use.

    Right padding: 0..width-1 on every row (a model's default when it gets no position_ids; the
    padded tail's positions are masked out). Left padding: each row counts from its first real
    token, cumsum(mask) - 1, with the padded head held at 0 (what `generate` feeds decoders).
    """
    if side == "right":
        row = np.arange(mask.shape[1], dtype=np.int64)
        return np.ascontiguousarray(np.broadcast_to(row, mask.shape))
    return np.maximum(np.cumsum(mask, axis=1, dtype=np.int64) - 1, 0)
