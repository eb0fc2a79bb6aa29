"""The one cosine and nearest-neighbour agreement that export, quantize and the canaries share."""

from __future__ import annotations

import numpy as np

from edge_embed.core.agreement import cosines, nn_agreement

RNG_SEED = 7


def vectors(rows: int = 40, dims: int = 16) -> np.ndarray:
    return np.random.default_rng(RNG_SEED).normal(size=(rows, dims)).astype(np.float32)


def test_float64_reads_a_copy_as_exactly_one_and_never_more() -> None:
    a = vectors()
    same = cosines(a, a.copy())
    assert same.dtype == np.float64 and same.max() <= 1.0 and same.min() > 1 - 1e-15
    assert np.allclose(cosines(a, -a), -1.0)
    assert float(cosines(np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32))[0]) == 0.0


def test_float32_is_what_export_records_unrounded_in_float32() -> None:
    a = vectors()
    got = cosines(a, a, np.float32)
    assert got.dtype == np.float32
    # float32 rounding: a copy reads 1 +- a few ulps, some above 1 (left as computed)
    assert np.abs(got - 1).max() < 1e-6 and (got > 1).any()


def test_nn_agreement_counts_rows_whose_nearest_other_row_is_kept() -> None:
    a = vectors()
    assert nn_agreement(a, a) == 1.0
    shuffled = a[np.random.default_rng(RNG_SEED + 1).permutation(len(a))]
    assert nn_agreement(a, shuffled) < 0.5
    assert nn_agreement(a[:2], shuffled[:2]) == 1.0  # two rows: each one's nearest is forced
