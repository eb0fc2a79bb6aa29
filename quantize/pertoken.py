"""Per-token int8: a scale per activation row, so a vector never depends on its batch-mates
(onnxruntime's `quantize_dynamic` takes one scale over the whole padded batch: docs/measurements.md,
Quantization). Every row (token) gets its own scale from its own max |x|, built from standard
operators plus onnxruntime's `MatMulIntegerToFloat`:

    x2 = Reshape(x, [-1, K]);  s = max(ReduceMax(|x2|, axis 1) / 127, eps)        [N, 1]
    q  = QuantizeLinear(x2, s, 128, axis 0)   (uint8 around 128: the u8 x s8 VNNI path)
    y  = MatMulIntegerToFloat(q, W8, a_scale=s, b_scale=w_scale, a_zp=128) + bias

`MatMulIntegerToFloat` rescales its output row by row for an A scale of shape [..., 1]
(onnxruntime contrib_ops/cpu/quantization/dynamic_quantize_matmul.cc, `ScaleOutput`); the bias
stays in the graph's own `Add`, after it. One quantized input is shared by every matmul that reads
the same tensor (Q, K and V). Weights: int8, symmetric, one scale per output column; the other
variants: quantize/variants.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import (
    F32,
    MS_DOMAIN,
    WeightMatMul,
    default_opset,
    drop_unused_initializers,
    ensure_node_names,
    has_opset,
    weight_array,
    weight_matmuls,
)
from .pairs import quantize_pairs
from .variants import DEFAULT, Variant, get

I8 = npt.NDArray[np.int8]
# Symmetric int8 range; -128 is left out so that +x and -x round to mirror images.
QMAX = 127.0
# Activation zero point for uint8 rows: MLAS's fast VNNI kernels multiply u8 by s8.
A_ZERO_POINT = 128
# Weight ranges tried per column by `quantize_weight(clip=True)`, as shares of its max |w|: down
# to 0.7 (below that the clipped outliers' error outweighs the finer step on every matrix tried).
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
# Floor for a row's scale: an all-zero row must not divide by zero (1e-8 is far below any real
# activation's max/127 and far above float32's smallest normal number).
MIN_SCALE = 1e-8
SWITCH_PREFIX = "edge_embed_fp32__"
# Unsigned range for shifted (one-sided) activations.
UQMAX = 255.0
# s8 activations: the u8 codes moved down by 128, zero point too (8-bit: symmetric around 0,
# one-sided from -128), so that both kinds stand for the same real values.
S8_OFFSET = 128
# u8 weights: the s8 values moved up by 128, so that the kernel sees unsigned bytes.
W_U8_ZERO_POINT = 128
# 7-bit activations, the other way to keep u8 x s8 pair sums inside int16 (see saturation.py):
# rows in [1, 127] around 64 (shifted ones in [0, 127]), so 127 * 127 * 2 = 32258 < 32767.
QMAX_7BIT = 63.0
A_ZERO_POINT_7BIT = 64
UQMAX_7BIT = 127.0
# Operators whose output never falls below -GELU_SHIFT: GELU's minimum is -0.16997 (at
# x = -0.7518), the tanh approximation's -0.1700; a hair of margin on top.
ONE_SIDED_OPS = {"Gelu": 0.1701, "BiasGelu": 0.1701, "FastGelu": 0.1701, "Relu": 0.0}


@dataclass(frozen=True)
class PerTokenResult:
    model: onnx.ModelProto
    quantized: tuple[str, ...]  # MatMul node names now in int8
    excluded: tuple[str, ...]  # candidate MatMuls left in fp32
    shared_inputs: int  # quantizer blocks (activation tensors quantized once, read by several)
    switches: dict[str, str] = field(default_factory=dict)  # node name -> bool input name


def quantize_weight(w: F32, qmax: float = QMAX, clip: bool = False) -> tuple[I8, F32]:
    """Per-output-column symmetric int8: W ≈ Wq * scale[column], |Wq| <= qmax.

    With `clip`, each column's range is the one of CLIP_RATIOS x its max |w| that gives the
    least squared error: a column's single largest weight no longer sets the step for all."""
    amax = np.abs(w).max(axis=0)
    ratios = CLIP_RATIOS if clip else (1.0,)
    best_err = np.full(w.shape[1], np.inf)
    scale = np.ones(w.shape[1], dtype=np.float32)
    for ratio in ratios:
        trial = np.where(amax > 0, ratio * amax / qmax, 1.0).astype(np.float32)
        err = ((np.clip(np.rint(w / trial), -qmax, qmax) * trial - w) ** 2).sum(axis=0)
        better = err < best_err
        scale = np.where(better, trial, scale)
        best_err = np.where(better, err, best_err)
    wq = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    return wq, scale


def _zero_point_type(kind: str) -> tuple[int, type[np.integer[Any]]]:
    return (TensorProto.INT8, np.int8) if kind == "s8" else (TensorProto.UINT8, np.uint8)


class _Builder:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opset = default_opset(model)
        self.nodes: list[onnx.NodeProto] = []
        # symmetric qmax, its zero point, and the unsigned qmax of shifted rows
        self.ranges = (QMAX, A_ZERO_POINT, UQMAX)
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, base: str) -> str:
        self._count += 1
        return f"edge_embed_q/{base}_{self._count}"

    def const(self, base: str, value: npt.NDArray[np.generic]) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], base: str, domain: str = "",
             **attrs: Any) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "/node",
                                           domain=domain, **attrs))
        return out

    def row_max(self, x: str) -> str:
        if self.opset >= 18:
            axes = self.const("axes", np.array([1], dtype=np.int64))
            return self.node("ReduceMax", [x, axes], "rowmax", keepdims=1)
        return self.node("ReduceMax", [x], "rowmax", axes=[1], keepdims=1)

    def quantize_rows(self, x: str, k: int, shift: float | None = None,
                      kind: str = "u8", smooth: F32 | None = None) -> tuple[str, str, str]:
        """Integer rows of `x` (same shape as x; uint8 or int8 as `kind` says), their scales
        (x's shape with last dim 1), and the zero point to give the matmul.

        With `shift` (an activation known to stay above -shift, like GELU's output), rows are
        quantized as x + shift over the whole unsigned range [0, 255] instead of a symmetric
        [-127, 127] half of which such an activation never uses: twice the resolution. The
        matmul then computes (x + shift) W; the caller subtracts shift * colsum(W).
        With `smooth` (per-channel factors s), the rows quantized are x / s (the caller
        multiplies the weight's rows by s).
        """
        shape = self.node("Shape", [x], "shape")
        lead = self.node("Slice", [shape, self.const("zero", np.array([0], dtype=np.int64)),
                                   self.const("minus1", np.array([-1], dtype=np.int64))], "lead")
        flat = self.node("Reshape", [x, self.const("rows", np.array([-1, k], dtype=np.int64))],
                         "flat")
        if shift is not None:
            flat = self.node("Add", [flat, self.const("shift", np.array(shift, np.float32))],
                             "shifted")
        if smooth is not None:
            flat = self.node("Mul", [flat, self.const("inv_smooth", (1.0 / smooth).astype(
                np.float32))], "smoothed")
        if shift is None:
            amax = self.row_max(self.node("Abs", [flat], "abs"))
            qmax, zp_int = self.ranges[0], self.ranges[1]
        else:
            amax = self.row_max(flat)
            qmax, zp_int = self.ranges[2], 0
        if kind == "s8":
            zp_int -= S8_OFFSET
        scaled = self.node("Mul", [amax, self.const("inv_qmax",
                                                    np.array(1.0 / qmax, dtype=np.float32))],
                           "scale_raw")
        scale = self.node("Max", [scaled, self.const("min_scale",
                                                     np.array(MIN_SCALE, dtype=np.float32))],
                          "scale")
        scale_1d = self.node("Reshape", [scale, self.const("flat1", np.array([-1], np.int64))],
                             "scale_1d")
        zp_proto, zp_dtype = _zero_point_type(kind)
        zp_value = helper.make_tensor("zp", zp_proto, [1], [zp_int])
        zero_points = self.node("ConstantOfShape", [self.node("Shape", [scale_1d], "nrows")],
                                "zp", value=zp_value)
        q_flat = self.node("QuantizeLinear", [flat, scale_1d, zero_points], "q", axis=0)
        q = self.node("Reshape", [q_flat, shape], "q_rows")
        scale_shape = self.node("Concat", [lead, self.const("one", np.array([1], np.int64))],
                                "scale_shape", axis=0)
        row_scale = self.node("Reshape", [scale, scale_shape], "row_scale")
        return q, row_scale, self.const("a_zp", np.array(zp_int, dtype=zp_dtype))


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Tensor shapes: onnxruntime's symbolic inference knows its fused contrib ops; ONNX's own
    is the fallback (the symbolic one gives up on some opset-18 exports, MiniLM's among them)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if inferred is not None:
            return cast(onnx.ModelProto, inferred)
    except Exception:  # any failure there just means: use ONNX's inference
        pass
    return onnx.shape_inference.infer_shapes(model)


def quantize_pertoken(model: onnx.ModelProto, exclude: Iterable[str] = (),
                      switches: bool = False, shapes_info: bool = True,
                      one_sided: bool = True, variant: Variant | str = DEFAULT,
                      smooth: Mapping[str, F32] | None = None, weight_qmax: float = QMAX,
                      activation_bits: int = 8, weight_clip: bool = False,
                      weight_pairs: bool = False) -> PerTokenResult:
    """A copy of `model` with every weight MatMul not in `exclude` in per-token int8, built as
    `variant` (quantize/variants.py: the integer types, where the row scale goes) says.

    With `switches`, each quantized MatMul also keeps its fp32 twin and a bool graph input
    chooses between them: one session then measures any subset of nodes left in fp32, which is
    what the sensitivity search needs (building a session per subset would cost minutes).
    `smooth` maps an activation tensor to its per-channel smoothing factors (smooth.py);
    `weight_qmax` below 127 narrows the weights (63: 7 bits, see saturation.py);
    `activation_bits=7` narrows the activation rows instead; `weight_pairs` keeps 8-bit
    weights whose AVX2 lane pairs cannot saturate (pairs.py) in place of `weight_qmax`.
    """
    smooth = smooth or {}
    # Shapes of the fp32 graph's tensors, inferred while every operator is still a standard one
    # (ONNX cannot infer through com.microsoft ops): onnxruntime's own fusions (SkipLayerNorm,
    # BiasGelu) check ranks and refuse tensors of unknown shape.
    v = get(variant) if isinstance(variant, str) else variant
    model = infer_shapes(model)
    ensure_node_names(model)
    shapes = {v.name: v for v in model.graph.value_info}
    excluded = set(exclude)
    candidates = weight_matmuls(model)
    unknown = excluded - {c.name for c in candidates}
    if unknown:
        raise ValueError(f"not a weight MatMul of this graph: {', '.join(sorted(unknown))}")
    chosen = [c for c in candidates if c.name not in excluded]
    by_node = {c.name: c for c in chosen}
    b = _Builder(model)
    if activation_bits == 7:
        b.ranges = (QMAX_7BIT, A_ZERO_POINT_7BIT, UQMAX_7BIT)
    elif activation_bits != 8:
        raise ValueError(f"activation_bits must be 7 or 8, not {activation_bits}")
    has_opset(model, MS_DOMAIN, 1)
    rows: dict[str, tuple[str, str, str]] = {}
    shifts: dict[str, float | None] = {}
    switch_inputs: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    inits = {i.name: i for i in model.graph.initializer}
    skip: set[str] = set()  # bias Adds merged into an unshift Add
    for node in model.graph.node:
        if node.name in skip:
            continue
        mm: WeightMatMul | None = by_node.get(node.name)
        if mm is None:
            new_nodes.append(node)
            continue
        if mm.activation not in rows:
            start = len(b.nodes)
            shift = ONE_SIDED_OPS.get(producers.get(mm.activation, "")) if one_sided else None
            rows[mm.activation] = b.quantize_rows(mm.activation, mm.k, shift, v.activations,
                                                  smooth.get(mm.activation))
            shifts[mm.activation] = shift
            if shapes_info:
                _describe(model, shapes.get(mm.activation), *rows[mm.activation][:2],
                          v.activations)
            new_nodes.extend(b.nodes[start:])
        q, row_scale, zp = rows[mm.activation]
        factors = smooth.get(mm.activation)
        weight = weight_array(model, mm.weight)
        if factors is not None:
            weight = weight * factors[:, None]
        wq, w_scale = (quantize_pairs(weight, weight_clip) if weight_pairs
                       else quantize_weight(weight, weight_qmax, weight_clip))
        shift = shifts[mm.activation]
        if v.weights == "u8":
            wq_name = b.const("w_uint8", (wq.astype(np.int16) + W_U8_ZERO_POINT).astype(np.uint8))
        else:
            wq_name = b.const("w_int8", wq)
        ws_name = b.const("w_scale", w_scale)
        target = mm.output
        bias: F32 | None = None
        if shift:
            # (x + shift) W - shift * colsum(W), with W as the kernel sees it (dequantized)
            # (with smoothing the kernel sees (x + shift) / s and diag(s) W: divide s back out)
            rows_deq = wq.astype(np.float64) * w_scale
            if factors is not None:
                rows_deq = rows_deq / factors[:, None]
            colsum = rows_deq.sum(axis=0).astype(np.float32)
            bias = (-shift * colsum).astype(np.float32)
        if switches:
            node.output[0] = b.name("fp32_out")  # names are unique across the branches too
            fp32_node = node
            target = b.name("int8_out")
        elif bias is not None:
            # The model's own bias Add after the matmul joins the unshift: one pass over the
            # output instead of two. (Not into the kernel's bias input: with a per-row A scale
            # onnxruntime rescales the output after adding the bias, so the bias would be scaled
            # too; measured: mean cosine 0.81.)
            folded = _bias_add(mm, consumers, inits)
            if folded is not None:
                add, add_bias = folded
                skip.add(add.name)
                target = add.output[0]
                bias = (bias + add_bias).astype(np.float32)
        mm_out = target if bias is None else b.name("mm_out")
        kernel_out = mm_out if v.row_scale == "kernel" else b.name("mm_unscaled")
        a_scale = row_scale if v.row_scale == "kernel" else b.const(
            "unit_scale", np.array(1.0, dtype=np.float32))
        mm_inputs = [q, wq_name, a_scale, ws_name, zp]
        if v.weights == "u8":
            mm_inputs.append(b.const("w_zp", np.array(W_U8_ZERO_POINT, dtype=np.uint8)))
        int8_nodes = [helper.make_node(
            "MatMulIntegerToFloat", mm_inputs, [kernel_out],
            name=b.name("mm") + "/" + mm.name, domain=MS_DOMAIN)]
        if v.row_scale == "rowmul":
            int8_nodes.append(helper.make_node("Mul", [kernel_out, row_scale], [mm_out],
                                               name=b.name("row_scale_node")))
        if bias is not None:
            int8_nodes.append(helper.make_node("Add", [mm_out, b.const("bias", bias)], [target],
                                               name=b.name("bias_node")))
        if switches:
            flag = SWITCH_PREFIX + str(len(switch_inputs))
            switch_inputs[mm.name] = flag
            model.graph.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
            new_nodes.append(_switch(flag, fp32_node, int8_nodes, target, mm.output,
                                     b.name("switch")))
        else:
            new_nodes.extend(int8_nodes)
        b.nodes = []
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(b.inits)
    if not switches:
        drop_unused_initializers(model)
    return PerTokenResult(model=model, quantized=tuple(c.name for c in chosen),
                          excluded=tuple(c.name for c in candidates if c.name in excluded),
                          shared_inputs=len(rows), switches=switch_inputs)


def _switch(flag: str, fp32_node: onnx.NodeProto, int8_nodes: list[onnx.NodeProto],
            int8_out: str, output: str, name: str) -> onnx.NodeProto:
    """`output` = flag ? the fp32 MatMul : its int8 version, as an `If`: onnxruntime runs only
    the branch taken, where a `Where` of both computed both (twice the search's cost)."""
    fp32_out = fp32_node.output[0]

    def branch(label: str, nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
        # the branches read the outer graph's tensors and initializers by name
        return helper.make_graph(nodes, f"{name}/{label}", [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    return helper.make_node("If", [flag], [output], name=name,
                            then_branch=branch("fp32", [fp32_node], fp32_out),
                            else_branch=branch("int8", int8_nodes, int8_out))


def _bias_add(mm: WeightMatMul, consumers: dict[str, list[onnx.NodeProto]],
              inits: dict[str, onnx.TensorProto]) -> tuple[onnx.NodeProto, F32] | None:
    """The `Add` of a constant [N] bias that alone reads the matmul's output, and that bias."""
    readers = consumers.get(mm.output, [])
    if len(readers) != 1 or readers[0].op_type != "Add" or readers[0].domain not in ("", "ai.onnx"):
        return None
    add = readers[0]
    others = [name for name in add.input if name != mm.output]
    if len(others) != 1 or others[0] not in inits:
        return None
    bias = np.asarray(numpy_helper.to_array(inits[others[0]]), dtype=np.float32)
    if bias.shape != (mm.n,):
        return None
    return add, bias


def _describe(model: onnx.ModelProto, source: onnx.ValueInfoProto | None, q: str,
              row_scale: str, kind: str) -> None:
    """Value info for a quantizer's outputs, copied from the activation's inferred shape."""
    if source is None or not source.type.tensor_type.HasField("shape"):
        return
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in source.type.tensor_type.shape.dim]
    model.graph.value_info.append(helper.make_tensor_value_info(q, _zero_point_type(kind)[0],
                                                                dims))
    model.graph.value_info.append(
        helper.make_tensor_value_info(row_scale, TensorProto.FLOAT, [*dims[:-1], 1]))
