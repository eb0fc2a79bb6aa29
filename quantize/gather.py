"""The word-embedding table in int8: one scale per row, dequantized only for the rows looked up.

A BERT-size vocabulary is most of a small model's bytes (MiniLM: 30522 x 384 floats, 47 of its
90 MB). A `Gather` from a float table becomes

    rows = Cast(Gather(table_int8, ids), float) * Gather(row_scales, ids)

so only the looked-up rows are ever converted; the table is a quarter of its size, and each row
keeps its own range (symmetric, 127 levels: a row's error is at most half a step of its own
max |value| / 127).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import drop_unused_initializers, initializers
from .pertoken import QMAX

# Tables below this many elements stay float: position and token-type tables are a few hundred
# rows, too small to matter for size, and the extra lookups would only cost time.
MIN_TABLE_ELEMENTS = 1_000_000


@dataclass(frozen=True)
class GatherResult:
    model: onnx.ModelProto
    tables: tuple[str, ...]  # the initializers now stored in int8


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and their scales [rows, 1]: table ≈ q * scale."""
    amax = np.abs(table).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scale), -QMAX, QMAX).astype(np.int8)
    return q, scale


def quantize_gathers(model: onnx.ModelProto,
                     min_elements: int = MIN_TABLE_ELEMENTS) -> GatherResult:
    """`model` with every Gather from a large 2-D float initializer (axis 0) reading int8 rows."""
    inits = initializers(model)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    done: dict[str, tuple[str, str]] = {}
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (table is None or node.domain not in ("", "ai.onnx") or axis != 0
                or table.data_type != TensorProto.FLOAT or len(table.dims) != 2
                or int(np.prod(table.dims)) < min_elements):
            new_nodes.append(node)
            continue
        if table.name not in done:
            q, scale = quantize_rows(np.asarray(numpy_helper.to_array(table), np.float32))
            names = (f"{table.name}_int8", f"{table.name}_row_scale")
            new_inits += [numpy_helper.from_array(q, names[0]),
                          numpy_helper.from_array(scale, names[1])]
            done[table.name] = names
        q_name, s_name = done[table.name]
        ids, out = node.input[1], node.output[0]
        base = node.name or out
        rows_q, rows_f, scales = f"{base}/int8_rows", f"{base}/rows", f"{base}/row_scales"
        new_nodes += [
            helper.make_node("Gather", [q_name, ids], [rows_q], name=f"{base}/gather_int8"),
            helper.make_node("Cast", [rows_q], [rows_f], name=f"{base}/cast",
                             to=TensorProto.FLOAT),
            helper.make_node("Gather", [s_name, ids], [scales], name=f"{base}/gather_scale"),
            helper.make_node("Mul", [rows_f, scales], [out], name=f"{base}/dequantize"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(new_inits)
    drop_unused_initializers(model)
    return GatherResult(model, tuple(done))
