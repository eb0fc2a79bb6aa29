"""Activation smoothing (SmoothQuant) for per-token int8: calibration statistics and factors.

A per-token scale is set by a row's largest |x|. Transformer activations carry a few outlier
channels that are large in every token, so that one channel sets every row's scale and the
other channels get a few of the 255 levels. SmoothQuant divides channel j of the activation by

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

and multiplies row j of the weight by s_j (the product X W is unchanged), moving part of the
outliers' range into the weights, which are quantized per output column and tolerate it better.
max|X_j| comes from the evaluation set, run through an instrumented copy of the fp32 graph that
returns every quantized matmul's input; padded positions are left out of the maxima. The scale
per token stays: smoothing is a fixed per-channel factor, so a vector still depends on nothing
but its own text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edge_embed.core.encoder import TextTokenizer
from edge_embed.core.feeds import I64, PaddingSide, build_feeds, check_inputs

from .graph import F32, WeightMatMul, weight_array, weight_matmuls

# Rows per calibration call: one padded batch of the evaluation set at a time.
CALIBRATION_BATCH = 32
# Floor for a channel's max |x| and max |w| before the power: a channel that is zero in every
# calibration token (or a zero weight row) must not give a zero or infinite factor.
MIN_RANGE = 1e-5
# Bounds on a factor: a channel never seen large in calibration must not be blown up (or
# squeezed) by orders of magnitude on inputs calibration did not cover.
MIN_FACTOR = 1e-2
MAX_FACTOR = 1e2


@dataclass(frozen=True)
class Calibration:
    """max |x| per channel (last axis) of each matmul input tensor, over real tokens."""

    amax: dict[str, F32]


def calibrate(model: onnx.ModelProto, activations: Sequence[str], rows: Sequence[I64],
              pad_id: int, padding_side: PaddingSide) -> Calibration:
    """Run `rows` (token ids) through a copy of `model` that also outputs `activations`."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    for name in activations:
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                    None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    check_inputs(inputs)
    amax = {name: np.zeros(0, dtype=np.float32) for name in activations}
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), CALIBRATION_BATCH):
        chunk = [rows[i] for i in order[start:start + CALIBRATION_BATCH]]
        feed = build_feeds(chunk, inputs, pad_id=pad_id, side=padding_side)
        outs = session.run(list(activations), feed.arrays)
        real = feed.mask.astype(bool).reshape(-1)
        for name, value in zip(activations, outs, strict=True):
            flat = np.abs(np.asarray(value, dtype=np.float32))
            flat = flat.reshape(-1, flat.shape[-1])
            if flat.shape[0] == real.shape[0]:  # [batch, seq, K]: drop the padding
                flat = flat[real]
            m = flat.max(axis=0)
            amax[name] = m if amax[name].size == 0 else np.maximum(amax[name], m)
    return Calibration(amax)


def calibrate_texts(model: onnx.ModelProto, activations: Sequence[str], texts: Sequence[str],
                    tokenizer: TextTokenizer) -> Calibration:
    rows = [t.ids for t in tokenizer.encode(list(texts))]
    return calibrate(model, activations, rows, tokenizer.pad_id, tokenizer.padding_side)


def smoothing(model: onnx.ModelProto, tokenizer_file: Path, max_tokens: int,
              texts: Sequence[str], alpha: float) -> dict[str, F32]:
    """Factors for every weight matmul's input of `model`, calibrated on `texts`."""
    matmuls = weight_matmuls(model)
    tokenizer = TextTokenizer(tokenizer_file, max_tokens)
    calibration = calibrate_texts(model, sorted({m.activation for m in matmuls}), texts,
                                  tokenizer)
    return factors(model, matmuls, calibration, alpha)


def factors(model: onnx.ModelProto, matmuls: Sequence[WeightMatMul], calibration: Calibration,
            alpha: float) -> dict[str, F32]:
    """s per activation tensor, from the activation's range and the largest of the weight rows
    of every matmul that reads it (Q, K and V share one quantized input, so one factor)."""
    out: dict[str, F32] = {}
    weights: dict[str, list[F32]] = {}
    for mm in matmuls:
        weights.setdefault(mm.activation, []).append(weight_array(model, mm.weight))
    for activation, ws in weights.items():
        x = calibration.amax.get(activation)
        if x is None or x.size == 0:
            continue
        w = np.max([np.abs(a).max(axis=1) for a in ws], axis=0)
        s = (np.maximum(x, MIN_RANGE) ** alpha) / (np.maximum(w, MIN_RANGE) ** (1.0 - alpha))
        # normalized to a geometric mean of 1: only the ratios between channels matter, and
        # this keeps the smoothed activation's magnitude near the original's
        s = s / np.exp(np.log(s).mean())
        out[activation] = np.clip(s, MIN_FACTOR, MAX_FACTOR).astype(np.float32)
    return out
