"""How far two models' vectors for the same inputs agree: row-wise cosines and nearest-neighbour
agreement; for rerankers, how two models' scores order each query's documents. Export's parity
check, quantize's judging and the canaries all measure with these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .bundle import RankingQuality
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


def kendall_tau(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    """Kendall's tau-b of two score lists over the same items (ties counted as scipy does);
    1.0 where either list is constant (nothing to order)."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    x, y = da[upper], db[upper]
    concordant = float(np.sum(x * y))
    untied_a, untied_b = float(np.sum(x != 0)), float(np.sum(y != 0))
    if untied_a == 0 or untied_b == 0:
        return 1.0
    return concordant / float(np.sqrt(untied_a * untied_b))


# The top-k agreement of a reranker's order: the top 3 is what a retrieval pipeline usually keeps.
TOP_K = 3


def ranking_quality(reference: Sequence[F32], candidate: Sequence[F32], *, reference_name: str,
                    eval_set: str, invariance: float | None = None) -> RankingQuality:
    """How a reranker's scores (`candidate`, one array per query) order each query's documents
    against `reference`'s, and how far the scores themselves are."""
    taus, top1, topk, diffs = [], [], [], []
    for ref, cand in zip(reference, candidate, strict=True):
        ref64, cand64 = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
        taus.append(kendall_tau(ref64, cand64))
        top1.append(float(np.argmax(ref64) == np.argmax(cand64)))
        k = min(TOP_K, len(ref64))
        topk.append(len(set(np.argsort(-ref64)[:k]) & set(np.argsort(-cand64)[:k])) / k)
        diffs.append(np.abs(ref64 - cand64))
    every = np.concatenate(diffs)
    return RankingQuality(
        reference=reference_name, eval_set=eval_set, n_queries=len(taus), n_pairs=len(every),
        score_abs_max=float(f"{every.max():.3g}"), score_abs_mean=float(f"{every.mean():.3g}"),
        kendall_tau_min=round(min(taus), 6), kendall_tau_mean=round(float(np.mean(taus)), 6),
        top1_agreement=round(float(np.mean(top1)), 6),
        top3_agreement=round(float(np.mean(topk)), 6),
        batch_invariance_max_abs_diff=invariance)
