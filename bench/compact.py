"""`edge-embed bench compact`: how well each compact type (core/compact.py) keeps float search.

On the evaluation set (edge_embed/core/data/eval.jsonl), every input is a query against all the
others, searched once with the float vectors (cosine: the reference) and once with each type,
compared as a vector store compares it:
- int8: dot product of the integers; uint8: squared L2 distance of the bytes (the +128 offset
  cancels in a distance, where a dot product would not); binary, ubinary: Hamming distance.
Per type: nearest-neighbour agreement (the type's nearest other input is float's), recall@10
(the share of float's top 10 in the type's top 10) and the same after rescoring (the type's
top 100, re-ranked by float cosine, as a store that keeps the float vectors beside the compact
ones does). Ties (Hamming distances are integers) break by input order, so a run is repeatable.
The method and figures: docs/compact.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from edge_embed.core import compact
from edge_embed.core.compact import COMPACT_TYPES, CompactType
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from edge_embed.core.pooling import F32
from edge_embed.core.tooling import ToolError, check_bundles, run_cli

RESULT_JSON = "compact.json"
RESULT_TABLE = "compact.txt"
# recall@K, the depth a search returns; RESCORE candidates re-ranked by float cosine.
K = 10
RESCORE = 100

Scores = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TypeFigures:
    kind: str
    bytes_per_vector: int
    nn_agreement: float
    recall_at_10: float
    recall_at_10_rescored: float


def similarities(vectors: F32, kind: str, scale: float | None) -> Scores:
    """[n, n] scores (higher: nearer) as a store compares `kind` vectors; the diagonal -inf."""
    if kind == "float":
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        sims = np.asarray(unit, dtype=np.float64) @ np.asarray(unit, dtype=np.float64).T
    else:
        coded = compact.convert(vectors, cast(CompactType, kind), scale)
        if kind == "int8":
            x = coded.astype(np.float64)
            sims = x @ x.T
        elif kind == "uint8":
            x = coded.astype(np.float64)
            sq = (x * x).sum(axis=1)
            sims = -(sq[:, None] + sq[None, :] - 2 * x @ x.T)
        else:  # Hamming distance over the packed bits
            bits = np.unpackbits(coded.view(np.uint8), axis=1).astype(np.float64)
            sims = -(bits @ (1 - bits).T + (1 - bits) @ bits.T)
    np.fill_diagonal(sims, -np.inf)
    return sims


def top(sims: Scores, k: int) -> npt.NDArray[np.intp]:
    """Each row's k best columns, best first; ties by column order (a stable sort)."""
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def figures(vectors: F32, kind: str, scale: float | None, reference: Scores) -> TypeFigures:
    exact = top(reference, K)
    sims = similarities(vectors, kind, scale)
    found = top(sims, max(K, RESCORE))
    rescored = np.take_along_axis(found, np.argsort(
        -np.take_along_axis(reference, found, axis=1), axis=1, kind="stable"), axis=1)[:, :K]

    def recall(got: npt.NDArray[np.intp]) -> float:
        return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(got, exact, strict=True)]))

    width = vectors.shape[1]
    size = width * 4 if kind == "float" else (
        width if kind in ("int8", "uint8") else (width + 7) // 8)
    return TypeFigures(kind, size, round(float((found[:, 0] == exact[:, 0]).mean()), 4),
                       round(recall(found[:, :K]), 4), round(recall(rescored), 4))


def measure(bundle: Path) -> dict[str, Any]:
    model = BundleModel(bundle)
    manifest = model.manifest
    eval_set = load_eval_set()
    vectors = model.embed(eval_set.texts)
    scale = manifest.compact.scale if manifest.compact is not None else None
    reference = similarities(vectors, "float", None)
    kinds: list[str] = ["float", *(t for t in COMPACT_TYPES
                                   if scale is not None or t not in compact.SCALED_TYPES)]
    return {"bundle": manifest.id, "eval_set": eval_set.name, "inputs": len(eval_set.texts),
            "scale": scale, "k": K, "rescore": RESCORE,
            "types": [asdict(figures(vectors, kind, scale, reference)) for kind in kinds]}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['bundle']} on {result['eval_set']} ({result['inputs']} inputs, each a "
             f"query against the rest; int8 scale {result['scale']})",
             f"{'type':<8} {'bytes':>6} {'NN agr.':>8} {'recall@10':>10} "
             f"{'rescored top-100':>17}"]
    for row in result["types"]:
        lines.append(f"{row['kind']:<8} {row['bytes_per_vector']:>6} {row['nn_agreement']:>8.4f} "
                     f"{row['recall_at_10']:>10.4f} {row['recall_at_10_rescored']:>17.4f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "edge-embed bench compact") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the bundle to measure")
    p.add_argument("--out", type=Path, help=f"folder for {RESULT_JSON} and {RESULT_TABLE}")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        check_bundles({"--model": args.model})
        result = measure(args.model)
        text = table(result)
        sys.stdout.write(text)
        if args.out is not None:
            try:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / RESULT_JSON).write_text(json.dumps(result, indent=2) + "\n",
                                                    encoding="utf-8")
                (args.out / RESULT_TABLE).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise ToolError(f"--out {args.out}: {exc.strerror}") from None
        return 0

    return run_cli(prog, body)
