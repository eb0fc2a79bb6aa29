"""Pooling and normalization in numpy: the step after the graph, shared by service and tools.

Kept out of the ONNX graph so that one exported graph serves every pooling mode, Matryoshka
cuts happen before normalization, and quantization sees only the encoder.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .bundle import OutputKind, Pooling

F32 = npt.NDArray[np.float32]
# Guards the division for an all-zero vector (a degenerate model output), as torch's
# F.normalize does with eps=1e-12.
_NORM_EPS = 1e-12
# Floor on a row's token count in mean pooling, as sentence-transformers' Pooling clamps it: a
# row with no real token gives zeros instead of a division by zero.
_COUNT_EPS = 1e-9


def pool(hidden: F32, mask: npt.NDArray[np.int64], mode: Pooling) -> F32:
    """[B, T, H] token states + [B, T] attention mask -> [B, H].

    The mask says where each row's tokens are, so this holds for right and left padding alike:
    "cls" is a row's first real token, "last" its last real one (a decoder's tokenizer pads on
    the left, where the last real token is the row's last position, not its length - 1).
    """
    rows = np.arange(hidden.shape[0])
    real = mask.astype(bool)
    if mode == "cls":
        first = np.argmax(real, axis=1)
        return np.ascontiguousarray(hidden[rows, first, :], dtype=np.float32)
    if mode == "last":
        # argmax finds the first True of the reversed row; a row with no real token reads 0.
        last = np.where(real.any(axis=1), real.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1), 0)
        return np.ascontiguousarray(hidden[rows, last, :], dtype=np.float32)
    weights = mask.astype(np.float32)[:, :, None]
    summed: F32 = np.einsum("bth,bt->bh", hidden, weights[:, :, 0], dtype=np.float32)
    counts = np.maximum(weights.sum(axis=1), _COUNT_EPS)
    return np.asarray(summed / counts, dtype=np.float32)


def pool_output(output: object, mask: npt.NDArray[np.int64], kind: OutputKind,
                mode: Pooling) -> F32:
    """A graph's output -> one vector per row: token states are pooled, a sentence embedding
    output (a graph with pooling inside) or a classifier's logits are taken as they are."""
    array = np.asarray(output, dtype=np.float32)
    return pool(array, mask, mode) if kind == "token_embeddings" else array


def normalize(vectors: F32) -> F32:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, _NORM_EPS), dtype=np.float32)


def finish(pooled: F32, *, dimensions: int | None, normalized: bool) -> F32:
    """Cut to `dimensions` (Matryoshka) and L2-normalize where the model's vectors are."""
    out = pooled if dimensions is None else pooled[:, :dimensions]
    # A cut of a normalized model's vector is re-normalized: that is what its users compare.
    return normalize(out) if normalized else np.ascontiguousarray(out, dtype=np.float32)
