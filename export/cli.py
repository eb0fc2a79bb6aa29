"""`edge-embed export SRC --out DIR`: a HF / sentence-transformers model -> fp32 bundle."""

from __future__ import annotations

import argparse
from typing import cast

from edge_embed.core.bundle import POOLINGS, Pooling
from edge_embed.core.tooling import Reporter, run_tool, tool_parser

# Below this a model cannot hold even its special tokens and one word (core/bundle.py's floor).
_MIN_TOKENS = 2


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 256,128, got '{text}'") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return dims


def _max_tokens(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value < _MIN_TOKENS:
        raise argparse.ArgumentTypeError(f"must be at least {_MIN_TOKENS}")
    return value


def parser(prog: str) -> argparse.ArgumentParser:
    p = tool_parser(
        prog, "Export a sentence-transformers or Hugging Face encoder, or a cross-encoder "
        "(a reranker), to an edge-embed fp32 bundle (model.onnx, tokenizer.json, bundle.json), "
        "checked against torch.",
        id_default="the source's name, lowercased")
    p.add_argument("src", metavar="SRC", help="a local model folder, or a hub id "
                   "(owner/name) where the network allows")
    p.add_argument("--max-tokens", type=_max_tokens, help="token limit (default: "
                   "sentence-transformers' max_seq_length, else the position embeddings)")
    p.add_argument("--pooling", choices=POOLINGS, help="pooling (default: the model's "
                   "sentence-transformers Pooling module, else mean)")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalize vectors "
                   "even where the model has a Normalize module")
    p.add_argument("--matryoshka", type=_positive_ints, default=(), metavar="D,D",
                   help="dimensions the model was trained to be cut to (Matryoshka), e.g. 256,128")
    p.add_argument("--opset", type=int, help="ONNX opset (default: optimum's choice)")
    p.add_argument("--revision", help="hub revision to download, or the revision to record for "
                   "a local folder")
    p.add_argument("--trust-remote-code", action="store_true", help="run the Python code a "
                   "model folder names in its config's auto_map (nomic-bert, jina-bert, ...); "
                   "refused without this flag")
    p.add_argument("--external-data", action="store_true", help="write the weights to "
                   "model.onnx_data beside model.onnx (automatic past protobuf's 2 GB)")
    return p


def main(argv: list[str] | None = None, prog: str = "edge-embed export") -> int:
    def body(args: argparse.Namespace) -> int:
        # torch and transformers, seconds to import: not for --help or a refused argument
        from .pipeline import ExportOptions, run

        opts = ExportOptions(
            src=args.src, out=args.out, bundle_id=args.bundle_id, aliases=tuple(args.alias),
            max_tokens=args.max_tokens, pooling=cast("Pooling | None", args.pooling),
            normalize=False if args.no_normalize else None, matryoshka=args.matryoshka,
            opset=args.opset, revision=args.revision, force=args.force,
            trust_remote_code=args.trust_remote_code, external_data=args.external_data)
        run(opts, Reporter(args.quiet, prog))
        return 0

    return run_tool(parser(prog), argv, body)
