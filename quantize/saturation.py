"""Int8 arithmetic that cannot saturate on any CPU kernel, so every CPU computes the same sums.

x86 without VNNI (AVX2, AVX-512 BW) multiplies u8 activations by s8 weights with `vpmaddubsw`,
which adds each pair of neighbouring products into a saturating 16-bit lane (255 * 127 * 2 =
64770 > 32767), so its sums, and the bundle's vectors, differ from VNNI's and ARM's 32-bit ones
(figures: docs/measurements.md#saturationpy). With |w| <= 63 (7 bits) a pair is at most
255 * 63 * 2 = 32130: every kernel's int32 accumulator is the exact dot product. 8-bit weights
can be exact too where each lane's same-sign magnitudes stay within 128 (pairs.py);
`saturation_free` checks exactly that on a graph.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from .graph import MS_DOMAIN, initializers
from .pairs import INT16_MAX, UINT8_MAX, pairs_fit

# 32767 // (2 * 255) = 64; 63 keeps the range symmetric (+w and -w round to mirror images, as
# the 8-bit weights leave out -128).
SATURATION_FREE_QMAX = 63.0
# Each integer matmul's weight zero-point input (onnxruntime's contrib operator schemas).
B_ZERO_POINT_INPUT = {"MatMulIntegerToFloat": 5, "MatMulInteger": 3, "DynamicQuantizeMatMul": 4}
INT8_MATMULS = tuple(B_ZERO_POINT_INPUT)


def int8_weights(model: onnx.ModelProto) -> Iterator[npt.NDArray[np.int16]]:
    """The signed weight values [K, N] of every integer matmul (u8 ones less their zero point)."""
    inits = initializers(model)
    for node in model.graph.node:
        if node.op_type not in INT8_MATMULS or node.domain not in ("", MS_DOMAIN):
            continue
        weight = inits.get(node.input[1])
        if weight is None:
            continue
        w = np.asarray(numpy_helper.to_array(weight)).astype(np.int16)
        if weight.data_type == onnx.TensorProto.UINT8:  # u8 weights: centred on their zero point
            zp_index = B_ZERO_POINT_INPUT[node.op_type]
            zp = inits.get(node.input[zp_index]) if len(node.input) > zp_index else None
            if zp is None:
                continue
            w = w - np.asarray(numpy_helper.to_array(zp)).astype(np.int16)
        elif weight.data_type != onnx.TensorProto.INT8:
            continue
        yield w


def widest_weight(model: onnx.ModelProto) -> int | None:
    """Largest |w| over the int8 weights of every integer matmul; None without any."""
    widths = [int(np.abs(w).max()) for w in int8_weights(model) if w.size]
    return max(widths) if widths else None


def pair_sums_fit(weight_max: float, activation_max: float = UINT8_MAX) -> bool:
    """True where a u8 x s8 pair of products (AVX2's `vpmaddubsw` lane) cannot leave int16."""
    return 2 * activation_max * weight_max <= INT16_MAX


def saturation_free(model: onnx.ModelProto, activation_max: float = UINT8_MAX) -> bool:
    """True where no u8 x s8 pair sum of any integer matmul can leave int16 for activations up
    to `activation_max`: every weight matrix's lane pairs checked (pairs.py), which 7-bit
    weights, pair-bounded 8-bit ones, and any weights under 7-bit activations meet."""
    weights = list(int8_weights(model))
    return bool(weights) and all(pairs_fit(w, activation_max) for w in weights)
