"""The evaluation set (edge_embed/core/data/eval.jsonl): the texts export checks its graph on and
quantize judges its candidates on, so that both measure on the same inputs and name them alike.

One JSON object per line: {"id", "kind": para|word|long|multi, "text", "pair"}. Kinds matter
because int8 fails unevenly: one-word inputs are the usual worst case, long inputs the slowest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from .tooling import ToolError

# Shipped as package data beside this module (pyproject's package-data).
DEFAULT_EVAL_SET = Path(str(resources.files("edge_embed.core") / "data" / "eval.jsonl"))
# How much of the file's sha256 names the set in manifests: enough to tell versions apart.
_HASH_PREFIX = 12
T = TypeVar("T")
_ARTICLE = {"evaluation": "an", "rerank": "a"}


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


def _read_jsonl(path: Path, what: str, item: Callable[[Any], T]) -> tuple[str, list[T]]:
    """("<file name>@<sha256 prefix>", `item` of each non-empty line's JSON object); a file
    that cannot be read, or a line `item` cannot make an item of, is refused by file and line
    (`what`: the set's kind, "evaluation" or "rerank")."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read the {what} set {path}: {exc.strerror}") from None
    out: list[T] = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(item(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ToolError(f"{path}:{number}: not {_ARTICLE[what]} {what} item ({exc})") from None
    return f"{path.name}@{hashlib.sha256(raw).hexdigest()[:_HASH_PREFIX]}", out


def load_eval_set(path: Path | None = None) -> EvalSet:
    """The evaluation set at `path` (default: the shipped one), every non-empty item in file
    order; a file that cannot be read or a line that is not an item is refused by name."""
    path = path or DEFAULT_EVAL_SET
    name, rows = _read_jsonl(path, "evaluation", lambda row: EvalItem(
        str(row["id"]), str(row.get("kind", "para")), str(row["text"])))
    items = [item for item in rows if item.text.strip()]
    if len(items) < 2:
        raise ToolError(f"{path}: needs at least two non-empty items")
    return EvalSet(name, tuple(items))


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
    name, queries = _read_jsonl(path, "rerank", lambda row: RerankQuery(
        str(row["id"]), str(row["query"]), tuple(str(d) for d in row["documents"])))
    for number, q in enumerate(queries, start=1):
        if (not q.query.strip() or len(q.documents) < _MIN_CANDIDATES
                or not all(d.strip() for d in q.documents)):
            raise ToolError(f"{path}: query {number} ({q.id}) needs a query and at least "
                            f"{_MIN_CANDIDATES} non-empty documents")
    if not queries:
        raise ToolError(f"{path}: holds no queries")
    return RerankSet(name, tuple(queries))
