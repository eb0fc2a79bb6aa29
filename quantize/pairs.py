"""8-bit weights whose AVX2 pair sums cannot saturate: the constraint on pairs, not on each weight.

AVX2's `vpmaddubsw` adds the u8 x s8 products of K positions 2j and 2j+1 into one saturating int16
lane (saturation.py); with u8 activations only same-sign weights can leave it, and only when their
magnitudes add up to more than 32767 // 255 = 128. `quantize_pairs` keeps each pair of each column
within that: the step set by the column's widest same-sign pair (no pair needs changing), or, with
`clip`, the least-squared-error choice among that step, smaller ones and the plain 8-bit step, with
the violating pairs shrunk onto the bound. How the pairs were found (MLAS's packing, probed under
emulation) and what the bound costs: docs/quantization.md, "8-bit weights that cannot saturate".
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .graph import F32

I8 = npt.NDArray[np.int8]
UINT8_MAX = 255
INT16_MAX = 32767  # a vpmaddubsw lane
# The largest same-sign |w1| + |w2| whose pair sum stays in int16 for any uint8 activations:
# 255 * 128 = 32640 <= 32767 (and >= -32768); 129 would give 32895.
PAIR_MAX = INT16_MAX // UINT8_MAX
# Each weight alone stays symmetric 8-bit: -128 is left out so that +w and -w mirror.
ELEMENT_MAX = 127
# Steps tried per column with `clip`, as shares of the pair step and of the plain 8-bit step:
# down to 0.7 as the 7-/8-bit ranges do (pertoken.CLIP_RATIOS).
PAIR_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _pairs(w: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
    """[K, N] -> [K/2 (rounded up), 2, N]: the K positions one vpmaddubsw lane adds."""
    k = w.shape[0]
    if k % 2:  # MLAS pads K with zeros: the last row pairs with nothing
        w = np.concatenate([w, np.zeros((1, *w.shape[1:]), dtype=w.dtype)])
    return w.reshape((k + 1) // 2, 2, *w.shape[1:])


def pair_peaks(w: npt.NDArray[np.number]) -> npt.NDArray[np.floating]:
    """Per column, the largest same-sign |w_2j| + |w_2j+1| (what a pair lane's sum scales by)."""
    p = _pairs(np.asarray(w, dtype=np.float64))
    positive = np.maximum(p, 0.0).sum(axis=1)
    negative = np.maximum(-p, 0.0).sum(axis=1)
    peaks: npt.NDArray[np.floating] = np.maximum(positive, negative).max(axis=0)
    return peaks


def pairs_fit(wq: npt.NDArray[np.integer], activation_max: float = UINT8_MAX) -> bool:
    """True where no pair of this int8 weight matrix [K, N] can saturate a vpmaddubsw lane
    for uint8 activations up to `activation_max` (255; 127 for 7-bit activations)."""
    return bool(wq.size == 0 or pair_peaks(wq).max() * activation_max <= INT16_MAX)


def _round_onto_bound(x: npt.NDArray[np.float64]) -> npt.NDArray[np.int16]:
    """Integers near x ([K, N], in units of the step) that meet both bounds: each |q| <= 127,
    each pair's same-sign magnitudes <= 128. A violating pair is moved onto the bound by
    taking the same amount off both magnitudes (the least-squares point on |q1| + |q2| = 128),
    then rounded so that the two add up to 128 exactly."""
    k = x.shape[0]
    p = _pairs(np.clip(x, -ELEMENT_MAX, ELEMENT_MAX))
    q = np.rint(p)
    first, second = p[:, 0], p[:, 1]
    same_sign = np.sign(first) * np.sign(second) > 0
    over = same_sign & (np.abs(q[:, 0]) + np.abs(q[:, 1]) > PAIR_MAX)
    if over.any():
        m1, m2 = np.abs(first), np.abs(second)
        # (m1 - m2 + 128) / 2 is in [0.5, 127.5] as both are <= 127: t1 in [1, 127], t2 too
        t1 = np.clip(np.rint((m1 - m2 + PAIR_MAX) / 2), PAIR_MAX - ELEMENT_MAX, ELEMENT_MAX)
        sign = np.sign(first)
        q[:, 0] = np.where(over, sign * t1, q[:, 0])
        q[:, 1] = np.where(over, sign * (PAIR_MAX - t1), q[:, 1])
    rounded: npt.NDArray[np.int16] = q.reshape(-1, *x.shape[1:])[:k].astype(np.int16)
    return rounded


def quantize_pairs(w: F32, clip: bool = False) -> tuple[I8, F32]:
    """Per-output-column symmetric 8-bit weights W ≈ Wq * scale[column] whose pairs fit int16
    (module docstring). Without `clip`: the step is the widest same-sign pair / 128 (or the
    widest weight / 127 where that is larger), so no pair needs changing beyond rounding. With
    `clip`: per column the least-squared-error one of PAIR_RATIOS x that step and x the plain
    8-bit step (widest weight / 127), violating pairs shrunk onto the bound."""
    w64 = np.asarray(w, dtype=np.float64)
    amax = np.abs(w64).max(axis=0)
    pair_step = np.maximum(pair_peaks(w64) / PAIR_MAX, amax / ELEMENT_MAX)
    steps = [pair_step]
    if clip:
        steps = [r * base for base in (pair_step, amax / ELEMENT_MAX) for r in PAIR_RATIOS]
    best_err = np.full(w64.shape[1], np.inf)
    best_q = np.zeros(w64.shape, dtype=np.int16)
    best_step = np.ones(w64.shape[1])
    for step in steps:
        safe = np.where(step > 0, step, 1.0)
        q = _round_onto_bound(w64 / safe)
        err = ((q * safe - w64) ** 2).sum(axis=0)
        better = err < best_err
        best_q = np.where(better, q, best_q)
        best_step = np.where(better, safe, best_step)
        best_err = np.where(better, err, best_err)
    return best_q.astype(np.int8), best_step.astype(np.float32)
