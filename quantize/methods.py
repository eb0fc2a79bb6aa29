"""The quantization methods: each turns an fp32 graph into a smaller or faster one.

- pertoken (int8 default): per-channel int8 weights, a scale per activation row; batch-invariant.
- blockwise: onnxruntime's MatMulNBits, 8 bits, blocks of 32, accuracy level 4: near-lossless.
- dynamic: onnxruntime's quantize_dynamic per-channel, for comparison; its activation scale is
  taken over the whole batch, so it fails the default batch-invariance gate.
- fp16: onnxruntime's float16 conversion (inputs and outputs kept fp32), for GPU bundles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from .gather import quantize_gathers
from .graph import F32, weight_matmuls
from .pertoken import (
    A_ZERO_POINT,
    A_ZERO_POINT_7BIT,
    QMAX_7BIT,
    S8_OFFSET,
    UQMAX,
    UQMAX_7BIT,
    quantize_pertoken,
)
from .recipe import Recipe
from .saturation import saturation_free, widest_weight
from .variants import DEFAULT, get

METHODS = ("pertoken", "blockwise", "dynamic")
# `--method auto` (the default) tries these in order and keeps the first that passes every gate:
# per-token int8 is the fastest where it is good enough (MiniLM: 1.8x fp32 on 2 cores);
# blockwise 8-bit is near-lossless (cosine 0.9999 on random-weight decoders where per-token
# scored 0.94-0.96) but runs no faster than fp32 on 2 cores.
AUTO = "auto"
AUTO_ORDER = ("pertoken", "blockwise")
# MatMulNBits settings: 8 bits in blocks of 32 measured mean 0.9995 / min 0.998 on MiniLM
# against fp32; accuracy level 4 computes in int8 on the CPU (the fast path for 8-bit blocks).
BLOCK_BITS = 8
BLOCK_SIZE = 32
BLOCK_ACCURACY_LEVEL = 4


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's quantizers log every node at INFO and warn about pre-processing we do not
    want (quant_pre_process fails on opset-18 exports: its symbolic shape inference is
    incomplete there); the tool reports itself."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime"),
               logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass(frozen=True)
class Quantized:
    model: onnx.ModelProto
    params: dict[str, Any] = field(default_factory=dict)
    quantized_nodes: int = 0


def pertoken(model: onnx.ModelProto, exclude: list[str], variant: str = DEFAULT,
             recipe: Recipe | None = None, smooth: dict[str, F32] | None = None) -> Quantized:
    """Per-token int8 built as `variant` says (the kernel's integer types, where the row scale
    goes) with `recipe`'s levers (ranges, smoothing, the int8 table); `smooth`: the factors
    smooth.factors computed."""
    v = get(variant)
    recipe = recipe or Recipe()
    if not smooth:  # the factors are what smooths; the recipe records what was done
        recipe = dataclasses.replace(recipe, smooth_alpha=None)
    result = quantize_pertoken(model, exclude, variant=v, smooth=smooth,
                               weight_qmax=recipe.weight_qmax,
                               activation_bits=recipe.activation_bits,
                               weight_clip=recipe.weight_clip,
                               weight_pairs=recipe.pair_bound)
    out = result.model
    blocks = 0
    if recipe.kept_as == "blocks" and result.excluded:
        # the matmuls kept out of per-token int8 are the graph's only float MatMuls left: the
        # blockwise quantizer, run over the whole graph, turns exactly those into 8-bit blocks
        blocked = blockwise(out, [])
        out, blocks = blocked.model, blocked.quantized_nodes
    tables: tuple[str, ...] = ()
    if recipe.int8_embeddings:
        gathered = quantize_gathers(out)
        out, tables = gathered.model, gathered.tables
    seven = recipe.activation_bits == 7
    zero_point = ((A_ZERO_POINT_7BIT if seven else A_ZERO_POINT)
                  - (S8_OFFSET if v.activations == "s8" else 0))
    return Quantized(out, {
        "weights": (f"int{recipe.weight_bits} values as {v.weights}, symmetric, one scale per "
                    "output column"
                    + (", each AVX2 lane pair's same-sign magnitudes <= 128"
                       if recipe.pair_bound else "")),
        "activations": (f"{recipe.activation_bits}-bit rows as {v.activations}, symmetric "
                        f"around {zero_point}, one scale per row (token) from its max |x|"),
        "kernel": "com.microsoft.MatMulIntegerToFloat",
        "variant": v.params(),
        "qmax": recipe.weight_qmax,
        "activation_qmax": QMAX_7BIT if seven else 127.0,
        "activation_zero_point": zero_point,
        "shared_quantizers": result.shared_inputs,
        # matmuls kept out of per-token int8 that run as MatMulNBits 8-bit blocks of 32
        "blockwise_matmuls": blocks,
        "recipe": recipe.to_json(),
        "smoothed_inputs": len(smooth or {}),
        "int8_tables": list(tables),
        "widest_weight": widest_weight(out),
        # no u8 x s8 pair sum can leave int16: every CPU's kernel computes the same sums.
        # Read off the written weights and the activations' range, not taken from the recipe,
        # so that a quantizer fault cannot be recorded as a guarantee. (Not claimed with
        # MatMulNBits blocks: their int8 kernels were not checked for it.)
        "saturation_free": (saturation_free(out, UQMAX_7BIT if seven else UQMAX)
                            and not blocks),
    }, len(result.quantized))


def blockwise(model: onnx.ModelProto, exclude: list[str]) -> Quantized:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True,
                                          accuracy_level=BLOCK_ACCURACY_LEVEL, bits=BLOCK_BITS)
    quantizer = MatMulNBitsQuantizer(model, bits=BLOCK_BITS, block_size=BLOCK_SIZE,
                                     is_symmetric=True, accuracy_level=BLOCK_ACCURACY_LEVEL,
                                     nodes_to_exclude=list(exclude), algo_config=config)
    with _quiet_onnxruntime():
        quantizer.process()
    out: onnx.ModelProto = quantizer.model.model
    count = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    return Quantized(out, {"kernel": "com.microsoft.MatMulNBits", "bits": BLOCK_BITS,
                           "block_size": BLOCK_SIZE, "accuracy_level": BLOCK_ACCURACY_LEVEL,
                           "symmetric": True}, count)


def dynamic(model: onnx.ModelProto, exclude: list[str]) -> Quantized:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    candidates = {m.name for m in weight_matmuls(model)}
    with tempfile.TemporaryDirectory(prefix="edge-embed-dynamic-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        with _quiet_onnxruntime():
            quantize_dynamic(
                src, dst, per_channel=True, weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=sorted(candidates - set(exclude)),
                # A fused graph has tensors without a recorded type; without a default the
                # quantizer stops at "Unable to find data type for weight_name" (as it did on
                # the fused MiniLM).
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        out = onnx.load(str(dst))
    count = sum(1 for n in out.graph.node
                if n.op_type in ("DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat"))
    return Quantized(out, {"kernel": "onnxruntime quantize_dynamic", "per_channel": True,
                           "weights": "int8", "activations": "uint8, one scale per batch"},
                     count)


def float16(model: onnx.ModelProto) -> Quantized:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = convert_float_to_float16(onnx.ModelProto.FromString(model.SerializeToString()),
                                   keep_io_types=True)
    return Quantized(out, {"kernel": "onnxruntime.transformers.float16", "keep_io_types": True},
                     0)


def apply(method: str, model: onnx.ModelProto, exclude: list[str],
          variant: str = DEFAULT, recipe: Recipe | None = None,
          smooth: dict[str, F32] | None = None) -> Quantized:
    if method == "pertoken":
        return pertoken(model, exclude, variant, recipe, smooth)
    if method == "blockwise":
        return blockwise(model, exclude)
    if method == "dynamic":
        return dynamic(model, exclude)
    raise ValueError(f"unknown method {method}")
