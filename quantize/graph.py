"""Reading an ONNX graph for quantization: which matmuls multiply an activation by a weight.

Kept free of any architecture knowledge: a candidate is any `MatMul` whose second input is a 2-D
float initializer, whatever the node is called, so that the same code serves BERT, MPNet, XLM-R
or anything else the exporter produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

F32 = npt.NDArray[np.float32]
MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class WeightMatMul:
    """A `MatMul` of an activation (`activation`) by a constant weight [K, N]."""

    name: str  # the node's name (made unique if the graph left it empty)
    activation: str  # the input tensor that gets quantized
    weight: str  # the initializer's name
    output: str
    k: int
    n: int


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique name: the tool reports and excludes matmuls by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def weight_matmuls(model: onnx.ModelProto) -> list[WeightMatMul]:
    """Every MatMul by a 2-D float initializer, in graph order."""
    inits = initializers(model)
    found: list[WeightMatMul] = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        weight = inits.get(node.input[1])
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) != 2:
            continue
        if node.input[0] in inits:  # a constant times a constant: nothing to gain
            continue
        k, n = (int(d) for d in weight.dims)
        found.append(WeightMatMul(node.name, node.input[0], node.input[1], node.output[0], k, n))
    return found


def weight_array(model: onnx.ModelProto, name: str) -> F32:
    return np.asarray(numpy_helper.to_array(initializers(model)[name]), dtype=np.float32)


def has_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    """Declare `domain` at `version` unless the model already imports it."""
    for entry in model.opset_import:
        if entry.domain == domain:
            return
    model.opset_import.append(onnx.helper.make_opsetid(domain, version))


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ValueError("the model imports no default ONNX opset")


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
