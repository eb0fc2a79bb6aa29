"""The rerank request path: the bodies rerank clients send, one handler behind them.

Shapes, told apart by route and body (as vLLM does):
- `cohere`: POST /v1/rerank and /rerank, Jina's and Cohere v1's body `{model, query, documents:
  [str | {"text": str}], top_n?, return_documents?}` -> `{id, model, results: [{index,
  relevance_score, document?}], usage: {total_tokens}}`. `return_documents` defaults to true
  (Jina's and vLLM's default on this route);
- `cohere_v2`: POST /v2/rerank, Cohere v2's body (`max_tokens_per_doc` too) -> `{id, results:
  [{index, relevance_score}], meta}`;
- `tei`: text-embeddings-inference's body on /rerank, told by its `texts` field: `{query, texts,
  raw_scores?, return_text?, truncate?}` -> a bare array `[{index, score, text?}]`. It names no
  model: the one reranker the caller may use answers it (with several, `model` is required).

Results are sorted by score, best first, and cut to `top_n`. A pair is an input of the model's
engine like any text (core/rerank.py packs its token types into the row): admission by time,
batching across requests, the token budgets, metrics and the request's trace all apply as for
embeddings. No cache: a score depends on the pair, and rerank queries rarely repeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import orjson

from edge_embed.core.encoder import Tokenized
from edge_embed.core.pooling import F32
from edge_embed.core.rerank import RerankModel

from .admission import estimate_tokens
from .auth import Authenticator
from .embeddings import Caller, RequestPath
from .errors import InvalidRequest
from .middleware import Phase
from .models import ServedModel
from .schema import is_json_int, type_name

Shape = Literal["cohere", "cohere_v2", "tei"]
V2_PATH = "/v2/rerank"
RERANK_PATHS = ("/v1/rerank", "/rerank", V2_PATH)


@dataclass(frozen=True)
class RerankRequest:
    shape: Shape
    model: str | None  # None: TEI's body, which names none
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    return_documents: bool = False
    truncate: bool | None = None  # None: the server's default
    max_tokens_per_doc: int | None = None
    raw_scores: bool = False  # TEI: the logits, before the activation

    @property
    def field(self) -> str:
        return "texts" if self.shape == "tei" else "documents"


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _flag(data: dict[str, Any], key: str, default: bool | None) -> bool | None:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"'{key}' must be true or false, got {type_name(value)}.", key)
    return value


def _positive(data: dict[str, Any], key: str, most: int) -> int | None:
    """A positive integer (7.0 counts, as JSON Schema counts it) of at most `most`."""
    value = data.get(key)
    if value is None:
        return None
    if not is_json_int(value) or not 1 <= value <= most:
        raise _invalid(f"'{key}' must be an integer from 1 to {most}, got "
                       f"{orjson.dumps(value).decode()[:40]}.", key)
    return int(value)


def _documents(value: Any, name: str, max_documents: int, max_chars: int) -> tuple[str, ...]:
    if value is None:
        raise _invalid(f"'{name}' is required: the documents to rank, an array of strings.", name)
    if not isinstance(value, list):
        raise _invalid(f"'{name}' must be an array of strings, got {type_name(value)}.", name)
    if not value:
        raise _invalid(f"'{name}' is an empty array; send at least one document.", name)
    if len(value) > max_documents:
        raise _invalid(f"'{name}' has {len(value)} documents; at most {max_documents} are "
                       "allowed per request.", name)
    out: list[str] = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        # Jina's and Cohere v1's document objects carry their text under "text"
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            shown = ("an object without a string 'text'" if isinstance(item, dict)
                     else type_name(item))
            raise _invalid(f"'{where}' must be a string (or {{\"text\": string}}), got "
                           f"{shown}.", name)
        if not text.strip():
            raise _invalid(f"'{where}' is empty; every document must contain text.", name)
        if len(text) > max_chars:
            raise _invalid(f"'{where}' has {len(text)} characters; at most {max_chars} are "
                           "allowed per document.", name)
        out.append(text)
    return tuple(out)


def parse_rerank(data: Any, path: str, *, max_documents: int, max_chars: int) -> RerankRequest:
    """The request in a decoded body posted to `path`; every refusal names the field."""
    if not isinstance(data, dict):
        raise _invalid(f"The request body must be a JSON object, got {type_name(data)}.",
                       "body")
    shape: Shape = ("cohere_v2" if path == V2_PATH
                    else "tei" if "texts" in data and "documents" not in data else "cohere")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _invalid("'model' must be the id of a served reranker (GET /v1/models).", "model")
    if model is None and shape != "tei":
        raise _invalid("'model' is required: the id of a served reranker (GET /v1/models).",
                       "model")
    query = data.get("query")
    if not isinstance(query, str) or not query.strip():
        got = "empty" if isinstance(query, str) else (
            "missing" if query is None else type_name(query))
        raise _invalid(f"'query' must be a non-empty string, got {got}.", "query")
    if len(query) > max_chars:
        raise _invalid(f"'query' has {len(query)} characters; at most {max_chars} are allowed.",
                       "query")
    field = "texts" if shape == "tei" else "documents"
    documents = _documents(data.get(field), field, max_documents, max_chars)
    top_n = _positive(data, "top_n", max_documents)
    if shape == "tei":
        direction = data.get("truncation_direction")
        if direction not in (None, "right", "Right"):
            raise _invalid("'truncation_direction' must be 'right': a pair is cut as "
                           "sentence-transformers cuts it (longest side first, at its end).",
                           "truncation_direction")
        return RerankRequest(shape, model, query, documents, top_n=top_n,
                             return_documents=bool(_flag(data, "return_text", False)),
                             truncate=_flag(data, "truncate", None),
                             raw_scores=bool(_flag(data, "raw_scores", False)))
    return RerankRequest(shape, model, query, documents, top_n=top_n,
                         return_documents=bool(_flag(data, "return_documents",
                                                     shape == "cohere")),
                         truncate=_flag(data, "truncate", None),
                         max_tokens_per_doc=_positive(data, "max_tokens_per_doc", max_chars))


@dataclass(frozen=True)
class RerankResult:
    req: RerankRequest
    model: str
    scores: F32  # per document, in document order
    tokens: int
    warnings: tuple[dict[str, Any], ...]  # one per document whose pair was cut

    def order(self) -> list[int]:
        # stable: equal scores keep the documents' order
        ranked = sorted(range(len(self.scores)), key=lambda i: -float(self.scores[i]))
        return ranked[:self.req.top_n] if self.req.top_n is not None else ranked

    def body(self, request_id: str) -> bytes:
        req, order = self.req, self.order()
        if req.shape == "tei":
            return orjson.dumps([
                {"index": i, "score": float(self.scores[i]),
                 **({"text": req.documents[i]} if req.return_documents else {})}
                for i in order])
        results: list[dict[str, Any]] = [
            {"index": i, "relevance_score": float(self.scores[i]),
             **({"document": {"text": req.documents[i]}} if req.return_documents else {})}
            for i in order]
        body: dict[str, Any] = {"id": request_id, "results": results}
        if req.shape == "cohere":
            body.update(model=self.model, usage={"total_tokens": self.tokens})
        else:
            body["meta"] = {"api_version": {"version": "2"},
                            "billed_units": {"search_units": 1},
                            "tokens": {"input_tokens": self.tokens, "output_tokens": 0},
                            # Cohere's meta.warnings are strings; the figures are below
                            **({"warnings": [w["message"] for w in self.warnings]}
                               if self.warnings else {})}
        if self.warnings:
            body["warnings"] = list(self.warnings)
        return orjson.dumps(body)


class RerankPath(RequestPath):
    def _served(self, req: RerankRequest, caller: Caller) -> ServedModel:
        visible = partial(Authenticator.may_use, caller.key)
        if req.model is not None:
            served = self.registry.get(req.model, visible)
            served.require("rerank")
            return served
        rerankers = [s for s in self.registry if s.task == "rerank" and visible(s.names)]
        if len(rerankers) != 1:
            names = ", ".join(s.id for s in rerankers) or "none"
            raise _invalid(f"'model' is required here: this server serves {len(rerankers)} "
                           f"rerankers you may use ({names}); name one in 'model'.", "model")
        return rerankers[0]

    async def __call__(self, req: RerankRequest, caller: Caller) -> RerankResult:
        served = self._served(req, caller)
        # after the model: the body's shape is checked first, then (as for the embeddings'
        # model-dependent checks) what the document cannot say, behind the model's 404
        if req.top_n is not None and req.top_n > len(req.documents):
            raise _invalid(f"'top_n' is {req.top_n}, more than the {len(req.documents)} "
                           "documents sent.", "top_n")
        model = served.model
        assert isinstance(model, RerankModel)  # a task "rerank" bundle loads as one
        caller.log.model, caller.log.inputs = served.id, len(req.documents)
        loop = asyncio.get_running_loop()
        timeout = self.limits.timeout_s
        deadline = caller.started + timeout
        engine = self.engines[served.id]
        limit = model.manifest.max_tokens
        lengths = [len(req.query) + len(d) for d in req.documents]
        estimate = sum(estimate_tokens(n, True, limit, model.tokenizer.scan_bound(n))
                       for n in lengths)
        with engine.admitted(len(req.documents), estimate, time_left_s=deadline - loop.time(),
                             timeout_s=timeout) as ticket:
            started = time.perf_counter()
            tokens = await self.tokens(
                sum(lengths), partial(model.pairs.encode, req.query, req.documents,
                                      req.max_tokens_per_doc), deadline, caller.is_gone)
            caller.log.phases.append(Phase(
                "tokenize", started, time.perf_counter(),
                {"edge_embed.inputs": len(tokens),
                 "edge_embed.tokens": sum(len(t.ids) for t in tokens)}))
            self._check_tokens(req, tokens, limit)
            job = engine.submit([t.ids for t in tokens], ticket,
                                request_id=caller.log.request_id, is_gone=caller.is_gone)
        logits = await self.outcome(engine, job, deadline, caller.log)
        scores = (np.asarray(logits, dtype=np.float32).reshape(-1) if req.raw_scores
                  else model.scores(logits))
        return self._result(req, served.id, scores, tokens, limit, caller)

    def _check_tokens(self, req: RerankRequest, tokens: Sequence[Tokenized], limit: int) -> None:
        truncate = self.limits.truncate if req.truncate is None else req.truncate
        if not truncate:
            for i, tok in enumerate(tokens):
                if tok.truncated:
                    per_doc = (f" or max_tokens_per_doc {req.max_tokens_per_doc}"
                               if req.max_tokens_per_doc is not None else "")
                    raise InvalidRequest(
                        f"'{req.field}[{i}]' with the query makes {_count(tok)} tokens, over "
                        f"this model's limit of {limit} per pair{per_doc}; shorten it or send "
                        "truncate: true to have it cut.", param=req.field,
                        code="context_length_exceeded")
        total = sum(len(t.ids) for t in tokens)
        if total > self.limits.max_request_tokens:
            raise InvalidRequest(f"The request's pairs have {total} tokens; at most "
                                 f"{self.limits.max_request_tokens} are allowed per request.",
                                 param=req.field)

    def _result(self, req: RerankRequest, model_id: str, scores: F32,
                tokens: Sequence[Tokenized], limit: int, caller: Caller) -> RerankResult:
        warnings = tuple(_truncation_warning(i, t, limit) for i, t in enumerate(tokens)
                         if t.truncated)
        total = sum(len(t.ids) for t in tokens)
        caller.log.tokens, caller.log.truncated = total, len(warnings)
        self.metrics.inputs.labels(model_id).inc(len(tokens))
        self.metrics.tokens.labels(model_id).inc(total)
        if warnings:
            self.metrics.truncated.labels(model_id).inc(len(warnings))
        return RerankResult(req, model_id, scores, total, warnings)


def _count(tok: Tokenized) -> str:
    return str(tok.original_tokens) if tok.exact else f"at least {tok.original_tokens}"


def _truncation_warning(index: int, tok: Tokenized, limit: int) -> dict[str, Any]:
    return {"index": index, "code": "document_truncated",
            "message": f"document {index} with the query has {_count(tok)} tokens; the pair was "
                       f"cut to {len(tok.ids)} (this model's limit is {limit} tokens a pair; "
                       "the longer side gives way first; send truncate: false to get an error "
                       "instead).",
            "original_tokens": tok.original_tokens, "original_tokens_exact": tok.exact,
            "used_tokens": len(tok.ids)}
