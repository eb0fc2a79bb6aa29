"""Pre-fusing the fp32 graph with onnxruntime's transformer optimizer, before quantization.

Fused: attention becomes one `MultiHeadAttention` kernel per layer (no Transpose/Softmax chain),
residual + bias + LayerNorm one `SkipLayerNormalization`, bias + GELU one `BiasGelu`. The
optimizer is asked for `MultiHeadAttention` rather than `Attention` on purpose: `Attention` packs
the Q/K/V weights inside the fused node, where no int8 scheme of ours can reach them, while
`MultiHeadAttention` leaves the three projections as plain MatMuls (their biases move into the
attention node), so they are quantized like every other matmul. `skip_layer_norm=False` keeps
residual + LayerNorm as two plain nodes (faster on CPU, see build.py).

A graph the optimizer cannot fuse (an architecture it does not know) is used unfused.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
from dataclasses import dataclass

import onnx

from .graph import MS_DOMAIN, has_opset

# The operators whose presence means the graph is pre-fused: onnxruntime's session optimizer is
# slower at level ALL than BASIC there (docs/measurements.md, "onnxruntime sessions on 2
# cores"), so the service picks BASIC for such bundles.
FUSED_OPS = ("MultiHeadAttention", "Attention", "SkipLayerNormalization",
             "EmbedLayerNormalization", "BiasGelu", "FastGelu")


@dataclass(frozen=True)
class FusionResult:
    model: onnx.ModelProto
    fused: bool
    ops: dict[str, int]  # count of each fused operator


def fuse(model: onnx.ModelProto, model_type: str = "bert", *, attention: bool = True,
         skip_layer_norm: bool = True, embed_layer_norm: bool = True) -> FusionResult:
    """The optimizer's fusions; on any failure, the model unchanged and fused=False.

    `embed_layer_norm=False` keeps the embedding lookups as plain `Gather`s, which the int8
    word-embedding table (gather.py) needs: the fused node reads a float table."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    options.use_multi_head_attention = True
    options.enable_attention = attention
    options.enable_skip_layer_norm = skip_layer_norm
    options.enable_bias_skip_layer_norm = skip_layer_norm
    options.enable_embed_layer_norm = embed_layer_norm
    # The optimizer logs every pattern it looks for; a user needs only our summary.
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            optimized = optimize_model(
                onnx.ModelProto.FromString(model.SerializeToString()), model_type=model_type,
                num_heads=0, hidden_size=0, optimization_options=options, opt_level=0,
                use_gpu=False)
    except Exception:  # an unknown architecture: quantize the graph as exported
        return FusionResult(model, False, {})
    finally:
        quiet.setLevel(level)
    fused_model: onnx.ModelProto = optimized.model
    # The optimizer writes com.microsoft nodes without always importing the domain; ONNX's
    # checker and shape inference (quantize_dynamic, float16) then refuse the graph.
    has_opset(fused_model, MS_DOMAIN, 1)
    counts = collections.Counter(n.op_type for n in fused_model.graph.node)
    ops = {op: counts[op] for op in FUSED_OPS if counts[op]}
    if not ops:
        return FusionResult(model, False, {})
    return FusionResult(fused_model, True, ops)
