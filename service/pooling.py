"""Pooling and normalization in numpy: the step after the graph, shared by service and tools.

Kept out of the ONNX graph so that one exported graph serves every pooling mode, Matryoshka
cuts happen before normalization, and quantization sees only the encoder.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .bundle import Pooling

F32 = npt.NDArray[np.float32]
# Guards the division for an all-zero vector (a degenerate model output), as torch's
# F.normalize does with eps=1e-12.
_NORM_EPS = 1e-12


def pool(hidden: F32, mask: npt.NDArray[np.int64], mode: Pooling) -> F32:
    """[B, T, H] token states + [B, T] attention mask (right padded) -> [B, H]."""
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)
    if mode == "last":
        last = np.maximum(mask.sum(axis=1) - 1, 0)
        return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), last, :], dtype=np.float32)
    weights = mask.astype(np.float32)[:, :, None]
    summed: F32 = np.einsum("bth,bt->bh", hidden, weights[:, :, 0], dtype=np.float32)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    return np.asarray(summed / counts, dtype=np.float32)


def normalize(vectors: F32) -> F32:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, _NORM_EPS), dtype=np.float32)


def finish(pooled: F32, *, dimensions: int | None, normalized: bool) -> F32:
    """Cut to `dimensions` (Matryoshka) and L2-normalize where the model's vectors are."""
    out = pooled if dimensions is None else pooled[:, :dimensions]
    # A cut of a normalized model's vector is re-normalized: that is what its users compare.
    return normalize(out) if normalized else np.ascontiguousarray(out, dtype=np.float32)
