"""`edge-embed quantize BUNDLE --out DIR`: an fp32 bundle -> int8 (CPU) or fp16 (GPU) bundle.

Exit codes: 0 written; 2 bad input (one line on stderr, nothing written); 3 a quality gate
failed (nothing written, unless --keep-failed, which writes the bundle and still exits 3).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from edge_embed.core.bundle import Precision
from edge_embed.core.tooling import ToolError, run_tool, tool_parser

from .gates import Gates
from .methods import AUTO, METHODS
from .recipe import BITS, KEPT_AS, Recipe
from .targets import AUTO as AUTO_TARGET
from .targets import TARGETS
from .variants import VARIANTS


def _unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _alpha(text: str) -> float | None:
    if text == "none":
        return None
    value = _unit(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive) or 'none', "
                                         f"got {value}")
    return value


def parser(prog: str) -> argparse.ArgumentParser:
    p = tool_parser(
        prog, "Quantize an edge-embed fp32 bundle to int8 (CPU) or fp16 (GPU), measure it "
        "against the fp32 bundle on the repo's evaluation set, and refuse it below the quality "
        "gates.", id_default="the input's id with the precision instead of -fp32")
    p.add_argument("bundle", metavar="BUNDLE", type=Path, help="an fp32 bundle folder "
                   "(from `edge-embed export`)")
    p.add_argument("--precision", choices=("int8", "fp16"), default="int8")
    p.add_argument("--method", choices=(AUTO, *METHODS), default=AUTO,
                   help="int8 scheme: auto (default: pertoken where it passes the gates, else "
                   "blockwise, else refuse), pertoken (a scale per token, batch-invariant), "
                   "blockwise (MatMulNBits 8-bit blocks of 32, near-lossless, slower), dynamic "
                   "(onnxruntime quantize_dynamic, not batch-invariant: fails the default gate)")
    p.add_argument("--gate-mean", type=_unit, default=0.99, help="minimum mean cosine vs fp32 "
                   "(default 0.99)")
    p.add_argument("--gate-nn", type=_unit, default=0.97, help="minimum nearest-neighbour "
                   "agreement with fp32 (default 0.97)")
    p.add_argument("--gate-rank", type=_unit, default=Gates.rank, help="minimum rank "
                   "agreement (Spearman) of pairwise similarities, the criterion where nearest "
                   f"neighbours are tied within the candidate's noise (default {Gates.rank})")
    p.add_argument("--gate-invariance", type=_unit, default=0.9999, help="minimum cosine between "
                   "an input alone and inside a padded batch (default 0.9999)")
    p.add_argument("--gate-min", type=_unit, default=None, help="minimum worst-case cosine vs "
                   "fp32 (default: not gated, but recorded)")
    p.add_argument("--exclude", default="auto", metavar="auto|none|NAMES",
                   help="matmuls to keep in fp32: auto (measured on the evaluation set, "
                   "default), none, or comma-separated MatMul node names")
    recipe = Recipe()
    p.add_argument("--smooth", type=_alpha, default=recipe.smooth_alpha, metavar="ALPHA|none",
                   help="per-token int8: SmoothQuant factors calibrated on the evaluation set, "
                   f"alpha the share of each channel's range moved into the weights (default "
                   f"{recipe.smooth_alpha}; none: no smoothing)")
    p.add_argument("--weight-bits", type=int, choices=BITS, default=recipe.weight_bits,
                   help="per-token int8 weight range: 8 (bounded by pairs, see --weight-pairs), "
                   "or 7 (|w| <= 63: no 16-bit pair sum can saturate on AVX2, so every CPU "
                   f"gives the same vectors; default {recipe.weight_bits})")
    p.add_argument("--weight-pairs", action=argparse.BooleanOptionalAction,
                   default=recipe.weight_pairs, help="per-token int8 with --weight-bits 8: "
                   "bound each pair of K positions that AVX2 adds in 16 bits (same-sign "
                   "|w1| + |w2| <= 128) instead of every weight, so 8-bit weights cannot "
                   "saturate either")
    p.add_argument("--kept-as", choices=KEPT_AS, default=recipe.kept_as,
                   help="per-token int8: how the matmuls --exclude keeps out of it run: fp32, or "
                   "blocks (MatMulNBits 8-bit blocks of 32, batch-invariant; default "
                   f"{recipe.kept_as})")
    p.add_argument("--activation-bits", type=int, choices=BITS,
                   default=recipe.activation_bits, help="per-token activation range: 8, or 7 "
                   f"(the other saturation-free choice; default {recipe.activation_bits})")
    p.add_argument("--weight-clip", action=argparse.BooleanOptionalAction,
                   default=recipe.weight_clip, help="per-token int8: each weight column's "
                   "range chosen for least squared error instead of its max |w|")
    p.add_argument("--embeddings", choices=("int8", "fp32"),
                   default="int8" if recipe.int8_embeddings else "fp32",
                   help="the word-embedding table: int8 with a scale per row (a quarter of "
                   "its size) or fp32")
    p.add_argument("--no-fuse", action="store_true", help="quantize the graph as exported, "
                   "without onnxruntime's transformer fusions")
    p.add_argument("--eval-set", type=Path, help="a JSONL evaluation set (default: the one "
                   "shipped in edge_embed/core/data/eval.jsonl)")
    p.add_argument("--external-data", action="store_true", help="write the weights to "
                   "model.onnx_data beside model.onnx (automatic past protobuf's 2 GB)")
    p.add_argument("--target", choices=TARGETS, default=AUTO_TARGET,
                   help="the CPU family the int8 graph is built for, which picks the integer "
                   "kernels it uses: auto (this machine, from /proc/cpuinfo; default), "
                   "avx512-vnni, avx2, arm64; openvino is refused (serve the fp32 bundle with "
                   "OpenVINO). Recorded in the manifest; the service warns on another CPU")
    p.add_argument("--variant", choices=tuple(VARIANTS), default=None,
                   help="build this int8 graph variant instead of the one --target picks (to "
                   "measure the variants against each other; quantize/variants.py)")
    p.add_argument("--keep-failed", action="store_true", help="write the bundle even when a "
                   "gate fails (the exit code is still 3)")
    return p


def main(argv: list[str] | None = None, prog: str = "edge-embed quantize") -> int:
    def body(args: argparse.Namespace) -> int:
        # onnx and the quantizers (the export extra): not for --help or a refused argument
        from .build import EXIT_GATE, GateFailed, QuantizeOptions, run
        from .rerank import is_rerank_bundle
        from .rerank import run as run_rerank

        if args.precision == "fp16" and args.method not in (AUTO, "pertoken"):
            raise ToolError("--method applies to int8 only; fp16 has one method")
        opts = QuantizeOptions(
            bundle=args.bundle, out=args.out, precision=cast(Precision, args.precision),
            method=args.method, bundle_id=args.bundle_id, aliases=tuple(args.alias),
            gates=Gates(mean=args.gate_mean, nn=args.gate_nn, invariance=args.gate_invariance,
                        min=args.gate_min, rank=args.gate_rank),
            exclude=args.exclude, fuse=not args.no_fuse, eval_set=args.eval_set,
            force=args.force, keep_failed=args.keep_failed, quiet=args.quiet,
            external_data=args.external_data, target=args.target, variant=args.variant,
            recipe=Recipe(smooth_alpha=args.smooth, weight_bits=args.weight_bits,
                          activation_bits=args.activation_bits, weight_clip=args.weight_clip,
                          int8_embeddings=args.embeddings == "int8",
                          weight_pairs=args.weight_pairs,
                          kept_as=args.kept_as))
        try:
            # a reranker is judged on ranking, not on vectors (quantize/rerank.py)
            return run_rerank(opts) if is_rerank_bundle(opts.bundle) else run(opts)
        except GateFailed as exc:
            what = (f"kept {args.out} anyway (--keep-failed)" if exc.kept
                    else "no bundle written (--keep-failed writes it anyway)")
            print(f"{prog}: quality gate failed: {exc}; {what}", file=sys.stderr)
            return EXIT_GATE

    return run_tool(parser(prog), argv, body)
