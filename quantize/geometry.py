"""What a reference's geometry lets a quality gate judge: nearest neighbours, or similarity ranks.

Nearest-neighbour agreement has an answer only where the reference's nearest neighbour is clearly
nearer than its second; where they are tied within the candidate's similarity noise (a model
whose vectors are all alike is tied everywhere), even noise alone flips a coin. So the reference's
gaps against the candidate's noise give the agreement a noise-only candidate would score
(`nn_expected`); where that is below the gate, the rank agreement of all pairwise similarities
(Spearman) judges instead. Figures: docs/measurements.md, Quantization (nearest-neighbour
agreement). float64 throughout: a collapsed model's similarities differ in their 6th-7th digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
# Guards the division for an all-zero vector (a degenerate output), as core.pooling does.
_NORM_EPS = 1e-300


@dataclass(frozen=True)
class Geometry:
    """How the candidate's pairwise similarities relate to the reference's."""

    similarity_spread: float  # std of the reference's pairwise similarities
    similarity_noise: float  # std of (candidate - reference) over the same pairs
    nn_gap_median: float  # median gap between an input's nearest and second-nearest neighbour
    nn_expected: float  # NN agreement a candidate whose only fault were that noise would score
    rank_agreement: float  # Spearman correlation of the pairwise similarities

    def to_json(self) -> dict[str, float]:
        return {"similarity_spread": round(self.similarity_spread, 8),
                "similarity_noise": round(self.similarity_noise, 8),
                "nn_gap_median": round(self.nn_gap_median, 8),
                "nn_expected": round(self.nn_expected, 6),
                "rank_agreement": round(self.rank_agreement, 6)}


def _unit(x: npt.NDArray[np.floating]) -> F64:
    x64 = x.astype(np.float64)
    return np.asarray(x64 / np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), _NORM_EPS))


def _ranks(values: F64) -> F64:
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values), dtype=np.float64)
    return ranks


def rank_agreement(a: F64, b: F64) -> float:
    """Spearman correlation of two lists of similarities (1.0 for identical orders)."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def neighbour_gaps(sims: F64) -> F64:
    """Per row of a similarity matrix: nearest minus second-nearest other row."""
    masked = sims.copy()
    np.fill_diagonal(masked, -np.inf)
    top2 = np.sort(masked, axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0])


def expected_nn_agreement(gaps: F64, noise: float) -> float:
    """Mean over inputs of the chance that noise of std `noise` on each of the two nearest
    similarities leaves them in order: Phi(gap / (noise * sqrt(2))) (a difference of two such
    noises has std noise * sqrt(2))."""
    if noise <= 0:
        return 1.0
    scale = noise * math.sqrt(2.0)
    return float(np.mean([0.5 * (1.0 + math.erf(g / scale / math.sqrt(2.0))) for g in gaps]))


def measure(reference: npt.NDArray[np.floating],
            candidate: npt.NDArray[np.floating]) -> Geometry:
    ref, cand = _unit(reference), _unit(candidate)
    if len(ref) < 3:
        return Geometry(0.0, 0.0, 0.0, 1.0, 1.0)
    ref_sims, cand_sims = ref @ ref.T, cand @ cand.T
    upper = np.triu_indices(len(ref), 1)
    pairs_ref, pairs_cand = ref_sims[upper], cand_sims[upper]
    noise = float(np.std(pairs_cand - pairs_ref))
    gaps = neighbour_gaps(ref_sims)
    return Geometry(similarity_spread=float(np.std(pairs_ref)), similarity_noise=noise,
                    nn_gap_median=float(np.median(gaps)),
                    nn_expected=expected_nn_agreement(gaps, noise),
                    rank_agreement=rank_agreement(pairs_ref, pairs_cand))
