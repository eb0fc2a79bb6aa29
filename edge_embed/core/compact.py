"""Compact vectors: int8, uint8 (a fixed per-bundle scale) and binary, ubinary (sign bits).

The types are Cohere's (`embedding_types`), and the conversion is a fixed function of one vector
and its bundle: never a range taken from the batch at hand, so a text's compact vector is the
same whatever it was sent with, on every request and from every route.

- int8: round(x * scale), clipped to [-128, 127]; `scale` is the bundle's, recorded in
  bundle.json's `compact` section (`CompactScale`), chosen by `calibrate` on the evaluation set:
  the CALIBRATION_QUANTILE of |x| over its vectors maps to 127, so that range goes to the bulk of
  the values, not to a few outliers, and what that clips is measured and recorded beside it.
- uint8: int8 + 128 (0..255).
- ubinary: one bit per dimension, 1 where x > 0, packed 8 to a byte, first dimension in the
  byte's highest bit (numpy's packbits, as Cohere and sentence-transformers pack them).
- binary: the same bytes as signed int8, ubinary - 128 (Cohere's definition).

A Matryoshka cut re-normalizes a shorter vector, whose values grow as sqrt(full / cut): the
scale used for a cut of `d` dimensions is scale * sqrt(d / full) (`scale_for`), still fixed per
bundle and cut. Pure numpy: the service imports it.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .bundle import COMPACT_SCHEME, CompactScale
from .pooling import F32

CompactType = Literal["int8", "uint8", "binary", "ubinary"]
COMPACT_TYPES: tuple[CompactType, ...] = ("int8", "uint8", "binary", "ubinary")
# Which types need the bundle's scale (the sign bits need none).
SCALED_TYPES: tuple[CompactType, ...] = ("int8", "uint8")
# |x| at this quantile of the evaluation set's values maps to 127: the range goes to the bulk of
# the values, not to the few largest (what it clips, per bundle: docs/compact.md).
CALIBRATION_QUANTILE = 0.9999
INT8_MAX = 127
# The scale is recorded to this many significant digits: enough that rounding it moves no value
# by a quarter step, few enough that two machines' last-bit differences give the same number.
SCALE_DIGITS = 6

I8 = npt.NDArray[np.int8]
U8 = npt.NDArray[np.uint8]


def calibrate(vectors: F32, eval_set: str, quantile: float = CALIBRATION_QUANTILE) -> CompactScale:
    """The scale for a bundle whose evaluation-set vectors (finished: normalized where the
    bundle normalizes) are `vectors`, with the clipping it implies measured on them."""
    values = np.abs(np.asarray(vectors, dtype=np.float64))
    top = float(np.quantile(values, quantile))
    if not math.isfinite(top) or top <= 0:
        top = float(values.max()) or 1.0
    scale = float(f"{INT8_MAX / top:.{SCALE_DIGITS}g}")
    return measure(vectors, scale, eval_set, quantile)


def measure(vectors: F32, scale: float, eval_set: str,
            quantile: float = CALIBRATION_QUANTILE) -> CompactScale:
    """`scale`'s clipping and int8 agreement on `vectors` (a bundle that inherits its source's
    scale measures it on its own vectors)."""
    values = np.abs(np.asarray(vectors, dtype=np.float64))
    clipped = values * scale > INT8_MAX + 0.5
    agreement = _cosines(np.asarray(vectors, dtype=np.float64),
                         to_int8(vectors, scale).astype(np.float64))
    return CompactScale(
        scheme=COMPACT_SCHEME, scale=scale, quantile=quantile, eval_set=eval_set,
        n_values=int(values.size), clipped_fraction=round(float(clipped.mean()), 7),
        inputs_clipped_fraction=round(float(clipped.any(axis=1).mean()), 6),
        max_abs=round(float(values.max()), 6), cosine_min=round(float(agreement.min()), 6),
        cosine_mean=round(float(agreement.mean()), 6))


def _cosines(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    out: npt.NDArray[np.float64] = (a * b).sum(axis=1) / norms
    return out


def scale_for(scale: float, full: int, dimensions: int) -> float:
    """The scale for vectors cut to `dimensions` of `full` and re-normalized."""
    return scale if dimensions == full else scale * math.sqrt(dimensions / full)


def to_int8(vectors: F32, scale: float) -> I8:
    scaled = np.rint(np.asarray(vectors, dtype=np.float32) * np.float32(scale))
    out: I8 = np.clip(scaled, -128, INT8_MAX).astype(np.int8)
    return out


def to_uint8(vectors: F32, scale: float) -> U8:
    return (to_int8(vectors, scale).astype(np.int16) + 128).astype(np.uint8)


def to_ubinary(vectors: F32) -> U8:
    """[n, d] -> [n, ceil(d / 8)]: 1 where x > 0; a last byte's unused low bits are 0."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def to_binary(vectors: F32) -> I8:
    return (to_ubinary(vectors).astype(np.int16) - 128).astype(np.int8)


def convert(vectors: F32, kind: CompactType, scale: float | None) -> I8 | U8:
    """`vectors` as `kind`; `scale` (already `scale_for` the vectors' width) for int8/uint8."""
    if kind in SCALED_TYPES:
        if scale is None:
            raise ValueError(f"{kind} needs the bundle's scale")
        return to_int8(vectors, scale) if kind == "int8" else to_uint8(vectors, scale)
    return to_binary(vectors) if kind == "binary" else to_ubinary(vectors)


def to_base64(row: npt.NDArray[Any]) -> str:
    """One converted vector's bytes (int8 and binary as two's complement), base64."""
    return base64.b64encode(np.ascontiguousarray(row).tobytes()).decode("ascii")
