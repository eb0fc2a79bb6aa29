"""How far two models' vectors for the same inputs agree: row-wise cosines and nearest-neighbour
agreement. Export's parity check, quantize's judging and the canaries all measure with these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .pooling import F32


def cosines(a: F32, b: F32, dtype: type[np.floating[Any]] = np.float64) -> npt.NDArray[Any]:
    """Row-wise cosine of two [n, d] arrays, computed in `dtype`.

    float64 (the default), at most 1: in float32 a vector's cosine with an identical copy reads
    0.99999988, which would blur an invariance gate at 0.9999999. float32 is export's parity
    check, whose figures every bundle records as computed there (unclamped: near-identical
    vectors may read 1.0000001)."""
    x, y = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    out: npt.NDArray[Any] = (x * y).sum(axis=1) / np.maximum(norms, np.finfo(dtype).tiny)
    return np.minimum(out, 1.0) if dtype is np.float64 else out


def nearest_neighbours(vectors: F32) -> npt.NDArray[np.intp]:
    """Index of each row's most similar other row (cosine)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.asarray(sims.argmax(axis=1))


def nn_agreement(reference: F32, candidate: F32) -> float:
    """Share of inputs whose nearest other input is the same under both models (1.0 for fewer
    than three inputs, where the nearest other is forced)."""
    if len(reference) < 3:
        return 1.0
    return float((nearest_neighbours(reference) == nearest_neighbours(candidate)).mean())
