"""The evaluation set (edge_embed/core/data/eval.jsonl): the texts export checks its graph on and
quantize judges its candidates on, so that both measure on the same inputs and name them alike.

One JSON object per line: {"id", "kind": para|word|long|multi, "text", "pair"}. Kinds matter
because int8 fails unevenly: one-word inputs are the usual worst case, long inputs the slowest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .tooling import ToolError

# Shipped as package data beside this module (pyproject's package-data).
DEFAULT_EVAL_SET = Path(str(resources.files("edge_embed.core") / "data" / "eval.jsonl"))
# How much of the file's sha256 names the set in manifests: enough to tell versions apart.
_HASH_PREFIX = 12


@dataclass(frozen=True)
class EvalItem:
    id: str
    kind: str
    text: str


@dataclass(frozen=True)
class EvalSet:
    name: str  # "<file name>@<sha256 prefix>", recorded in the manifest's quality and parity
    items: tuple[EvalItem, ...]

    @property
    def texts(self) -> list[str]:
        return [item.text for item in self.items]

    def kinds(self) -> list[str]:
        return sorted({item.kind for item in self.items})


def load_eval_set(path: Path | None = None) -> EvalSet:
    """The evaluation set at `path` (default: the shipped one), every non-empty item in file
    order; a file that cannot be read or a line that is not an item is refused by name."""
    path = path or DEFAULT_EVAL_SET
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read the evaluation set {path}: {exc.strerror}") from None
    items: list[EvalItem] = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = EvalItem(str(row["id"]), str(row.get("kind", "para")), str(row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ToolError(f"{path}:{number}: not an evaluation item ({exc})") from None
        if item.text.strip():
            items.append(item)
    if len(items) < 2:
        raise ToolError(f"{path}: needs at least two non-empty items")
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_PREFIX]
    return EvalSet(f"{path.name}@{digest}", tuple(items))


# ---- the rerank evaluation set ---------------------------------------------------------------
# edge_embed/core/data/rerank_eval.jsonl: one JSON object per line, {"id", "query",
# "documents": [...]}: each query's candidates as a retriever would hand them to a reranker (its
# paraphrase, unrelated questions, a long text, a word, another language), on which export checks
# a reranker's scores against torch and quantize judges its int8 ranking.
DEFAULT_RERANK_SET = Path(str(resources.files("edge_embed.core") / "data" / "rerank_eval.jsonl"))
# Fewer candidates than this cannot show an order (top-3 agreement needs more than 3).
_MIN_CANDIDATES = 4


@dataclass(frozen=True)
class RerankQuery:
    id: str
    query: str
    documents: tuple[str, ...]


@dataclass(frozen=True)
class RerankSet:
    name: str  # "<file name>@<sha256 prefix>"
    queries: tuple[RerankQuery, ...]

    @property
    def n_pairs(self) -> int:
        return sum(len(q.documents) for q in self.queries)


def load_rerank_set(path: Path | None = None) -> RerankSet:
    """The rerank evaluation set at `path` (default: the shipped one); a line that is not a
    query with at least _MIN_CANDIDATES non-empty documents is refused by file and line."""
    path = path or DEFAULT_RERANK_SET
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read the rerank evaluation set {path}: {exc.strerror}") from None
    queries: list[RerankQuery] = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            docs = tuple(str(d) for d in row["documents"])
            item = RerankQuery(str(row["id"]), str(row["query"]), docs)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ToolError(f"{path}:{number}: not a rerank item ({exc})") from None
        if (not item.query.strip() or len(docs) < _MIN_CANDIDATES
                or not all(d.strip() for d in docs)):
            raise ToolError(f"{path}:{number}: needs a query and at least {_MIN_CANDIDATES} "
                            "non-empty documents")
        queries.append(item)
    if not queries:
        raise ToolError(f"{path}: holds no queries")
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_PREFIX]
    return RerankSet(f"{path.name}@{digest}", tuple(queries))
