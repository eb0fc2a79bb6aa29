"""/openapi.json: the HTTP contract, machine-readable (OpenAPI 3.0), errors included.

Written by hand so that it says exactly what the server does, and built per process (and per
API key) from the models the caller may use: `model` is an enum of their names, and what depends
on the model (token ids below its vocabulary size, `dimensions`, `input_type`) is declared for
each model, one request schema each, told apart by `model`. tests/test_openapi.py holds the
document to the app's routes (every route declared, nothing declared that is not served), and
tests/test_fuzz_schema.py holds the server to the document with schemathesis.

What no JSON schema can say is written in the descriptions: token counts, which only the
model's tokenizer knows (an input over the model's limit with `truncate: false`, or a request
over the per-request token limit, is a 400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from edge_embed.core.bundle import ACTIVATIONS, PAIR_TRUNCATIONS, TASKS
from edge_embed.core.compact import COMPACT_TYPES

from .. import __version__
from .auth import OPEN_PATHS
from .cohere import COHERE_INPUT_TYPES, TRUNCATE, UNSUPPORTED
from .docs import ASSETS, DOCS_ASSET_PATH, DOCS_PATH
from .models import ServedModel
from .schema import EMBEDDING_TYPES, ENCODING_FORMATS, INPUT_TYPES
from .settings import Settings
from .tokenize import MAX_TOKEN_ID

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _ok(description: str, ref: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_UNAVAILABLE = _err("Draining, engine stopped, or over the connection limit")
_COMMON_ERRORS = {
    "401": _err("Missing or wrong API key (WWW-Authenticate: Bearer)"),
    "404": _err("Unknown model (or one the API key may not use) or path"),
    "500": _err("A server fault; the message carries the request id"),
    "503": _UNAVAILABLE,
}
_NULL_ONLY = {"nullable": True, "enum": [None]}


_INPUT_ERRORS = {
    "400": _err("Invalid request (names the field and item)"),
    "413": _err("Body over the size limit"),
    "415": _err("Content-Type is not application/json"),
    "429": _err("Overloaded (Retry-After)"),
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def cohere_op(settings: Settings, version: str) -> dict[str, Any]:
    response = "CohereEmbedResponse" if version == "2" else "CohereEmbedResponseV1"
    return {
        "summary": f"Embed texts in Cohere's v{version} shape, with compact types",
        "requestBody": _body(_ref("CohereEmbedRequest")),
        "responses": {
            "200": {**_ok("Embeddings by type", response),
                    "headers": {"X-Edge-Embed-Truncated": {
                        "description": "How many texts were cut at the model's token limit",
                        "schema": {"type": "integer"}}}},
            "408": _err("The request did not finish within the request timeout"),
            **_INPUT_ERRORS, **_COMMON_ERRORS}}


def _model_field(served: ServedModel | None, optional: bool) -> dict[str, Any]:
    """`model`: the model's names (any name where the caller may use none); `optional`: it may
    be left out, the caller using this one model only."""
    if served is None:
        return {"type": "string", "minLength": 1, "nullable": optional}
    if optional:
        return {"type": "string", "nullable": True, "enum": [*served.names, None],
                "description": "the served model; may be left out"}
    return {"type": "string", "enum": list(served.names)}


def _input_types(served: ServedModel | None) -> list[str]:
    """The input types the embeddings checks take for this model (schema.check_for_model)."""
    return sorted({*INPUT_TYPES, *(served.model.manifest.prompts if served else ())})


def _dimensions(served: ServedModel | None) -> dict[str, Any]:
    """A vector cut (`dimensions`, Cohere's `output_dimension`): Matryoshka bundles only."""
    if served is None:
        return {"type": "integer", "minimum": 1, "nullable": True}
    manifest = served.model.manifest
    if not manifest.matryoshka_dimensions:
        return {**_NULL_ONLY, "description": "this model has no trained cuts: only null"}
    return {"type": "integer", "minimum": 1, "maximum": manifest.dimensions, "nullable": True,
            "description": "cut the vector to this many dimensions and renormalize; trained "
                           "cuts: " + ", ".join(map(str, manifest.matryoshka_dimensions))}


def _per_model(name: str, build: Callable[[ServedModel | None], dict[str, Any]],
               models: Sequence[ServedModel]) -> dict[str, Any]:
    """The schema `name` for the caller's one model (or any, where it may use none), or a
    `oneOf` of each model's, told apart by `model` (served names never overlap)."""
    if len(models) <= 1:
        return {name: build(models[0] if models else None)}
    names = {s.id: f"{name}.{re.sub(r'[^A-Za-z0-9._-]', '_', s.id)}" for s in models}
    mapping = {n: f"#/components/schemas/{names[s.id]}" for s in models for n in s.names}
    return {**{names[s.id]: build(s) for s in models},
            name: {"oneOf": [_ref(n) for n in names.values()],
                   "discriminator": {"propertyName": "model", "mapping": mapping}}}


def tokenize_schemas(settings: Settings, models: Sequence[ServedModel]) -> dict[str, Any]:
    limits = settings.requests
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_input_chars}
    # `model` may be left out where the caller may use one model only.
    one = len(models) <= 1
    needs = [] if one else ["model"]
    special = {"type": "boolean", "nullable": True}
    closed = {"type": "object", "additionalProperties": False}

    def ids(served: ServedModel | None) -> dict[str, Any]:
        top = served.model.tokenizer.vocab_size - 1 if served else MAX_TOKEN_ID
        return {"type": "array", "minItems": 1, "maxItems": limits.max_input_chars,
                "items": {"type": "integer", "minimum": 0, "maximum": top}}

    def prompt_name(served: ServedModel | None) -> dict[str, Any]:
        return {"type": "string", "nullable": True, "enum": [*_input_types(served), None],
                "description": "an input type: the model's prompt of that name"}

    def tei(served: ServedModel | None) -> dict[str, Any]:
        return {**closed, "required": ["inputs", *needs], "properties": {
            "inputs": {"oneOf": [text, {"type": "array", "minItems": 1,
                                        "maxItems": limits.max_inputs, "items": text}]},
            "add_special_tokens": special, "prompt_name": prompt_name(served),
            "model": _model_field(served, one)}}

    def vllm(field: str) -> Callable[[ServedModel | None], dict[str, Any]]:
        return lambda served: {**closed, "required": [field, *needs], "properties": {
            field: text, "model": _model_field(served, one), "add_special_tokens": special,
            "input_type": prompt_name(served)}}

    def detokenize(served: ServedModel | None) -> dict[str, Any]:
        return {**closed, "required": ["tokens", *needs], "properties": {
            "tokens": ids(served), "model": _model_field(served, one)}}

    def decode(served: ServedModel | None) -> dict[str, Any]:
        return {**closed, "required": ["ids", *needs], "properties": {
            "ids": {"oneOf": [ids(served), {"type": "array", "minItems": 1,
                                            "maxItems": limits.max_inputs,
                                            "items": ids(served)}]},
            "skip_special_tokens": special, "model": _model_field(served, one)}}

    return {
        **_per_model("TokenizeTEI", tei, models),
        **_per_model("TokenizeVLLM", vllm("prompt"), models),
        **_per_model("TokenizeVLLMInput", vllm("input"), models),
        "SimpleToken": {"type": "object", "required": ["id", "text", "special", "start", "stop"],
                        "properties": {"id": {"type": "integer"}, "text": {"type": "string"},
                                       "special": {"type": "boolean"},
                                       "start": {"type": "integer", "nullable": True},
                                       "stop": {"type": "integer", "nullable": True}}},
        "TokenizeResponse": {
            "type": "object",
            "required": ["count", "max_model_len", "tokens", "truncated", "used_tokens"],
            "properties": {
                "count": {"type": "integer",
                          "description": "tokens before any cut (count_exact false: at least)"},
                "max_model_len": {"type": "integer"},
                "tokens": {"type": "array", "items": {"type": "integer"},
                           "description": "the ids the model would see"},
                "model": {"type": "string"}, "truncated": {"type": "boolean"},
                "used_tokens": {"type": "integer"}, "count_exact": {"type": "boolean"}}},
        **_per_model("DetokenizeVLLM", detokenize, models),
        **_per_model("DecodeTEI", decode, models),
    }


def cohere_schemas(settings: Settings, models: Sequence[ServedModel]) -> dict[str, Any]:
    limits = settings.requests
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_input_chars}
    ints = {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
    floats = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    by_type: dict[str, Any] = {"type": "object", "properties": {
        "float": floats, "base64": {"type": "array", "items": {"type": "string",
                                                                "format": "byte"}},
        **{t: ints for t in COMPACT_TYPES}}}
    meta = {"type": "object", "properties": {
        "api_version": {"type": "object", "properties": {"version": {"type": "string"}}},
        "billed_units": {"type": "object", "properties": {"input_tokens": {"type": "integer"}}},
        "warnings": {"type": "array", "items": {"type": "string"}}}}
    common = {"id": {"type": "string"}, "texts": {"type": "array", "items": {"type": "string"}},
              "meta": meta, "response_type": {"type": "string"},
              "warnings": {"type": "array", "items": _ref("Warning")}}
    return {
        **_per_model("CohereEmbedRequest", lambda served: {
            "type": "object", "required": ["model", "texts"], "properties": {
                "model": _model_field(served, False),
                "texts": {"type": "array", "minItems": 1, "maxItems": limits.max_inputs,
                          "items": text},
                "input_type": {"type": "string", "enum": [*COHERE_INPUT_TYPES, None],
                               "nullable": True},
                "embedding_types": {"type": "array", "minItems": 1, "uniqueItems": True,
                                    "nullable": True, "items": {"type": "string", "enum": (
                                        served.embedding_types if served
                                        else list(EMBEDDING_TYPES))}},
                "truncate": {"type": "string", "enum": [*TRUNCATE, None], "nullable": True,
                             "description": "END: cut the end, START: the start, NONE: "
                                            "refuse an over-long text (400)"},
                "output_dimension": _dimensions(served),
                # other modalities: refused unless empty
                **{k: {"type": "array", "maxItems": 0, "nullable": True,
                       "description": "not supported: this server embeds text"}
                   for k in UNSUPPORTED}}}, models),
        "CohereEmbedResponse": {"type": "object", "required": ["id", "embeddings", "texts",
                                                               "meta"],
                                "properties": {**common, "embeddings": by_type}},
        "CohereEmbedResponseV1": {"type": "object", "required": ["id", "embeddings", "texts",
                                                                 "meta"],
                                  "properties": {**common, "embeddings": {"oneOf": [
                                      floats, by_type]}}},
    }
def _rerank_spec(settings: Settings, rerankers: Sequence[ServedModel],
                 embedders: Sequence[ServedModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rerank routes (service/rerank.py) and their schemas for a caller who may use
    `rerankers` and `embedders`: (paths, schemas). `model` is an enum of the rerankers' names;
    where the caller may use none, any name but an embedder's (which is a 400 naming its task;
    any other, the 404 of an unknown model). TEI's body may leave it out where the caller may
    use one reranker only."""
    limits = settings.requests
    text = {"type": "string", "pattern": "\\S", "maxLength": limits.max_input_chars}
    documents = {"type": "array", "minItems": 1, "maxItems": limits.max_rerank_documents,
                 "items": {"anyOf": [text, {"type": "object", "required": ["text"],
                                            "properties": {"text": text}}]}}
    flag = {"type": "boolean", "nullable": True}
    count = {"type": "integer", "minimum": 1, "nullable": True}
    common = {"query": text, "documents": documents,
              "top_n": {**count, "maximum": limits.max_rerank_documents,
                        "description": "at most the number of documents (a 400 otherwise)"},
              "truncate": {**flag, "description": "cut over-long pairs (warn) or refuse"},
              # a document holds at most one token a character
              "max_tokens_per_doc": {**count, "maximum": limits.max_input_chars,
                                     "description": "cut (or with truncate false, refuse) "
                                                    "longer documents"}}
    names = [n for r in rerankers for n in r.names]
    others = [n for e in embedders for n in e.names]
    model: dict[str, Any] = (
        {"type": "string", "enum": names} if names
        else {"type": "string", "minLength": 1, **({"not": {"enum": others}} if others else {})})
    one = len(rerankers) == 1
    schemas: dict[str, Any] = {
        "RerankRequest": {"type": "object", "required": ["model", "query", "documents"],
                          "properties": {"model": model, **common, "return_documents": {
                              **flag, "description": "default true"}}},
        "RerankRequestV2": {"type": "object", "required": ["model", "query", "documents"],
                            "properties": {"model": model, **common}},
        "TeiRerankRequest": {"type": "object", "required": [
            "query", "texts", *([] if one else ["model"])], "properties": {
            "model": ({"type": "string", "nullable": True, "enum": [*names, None],
                       "description": "the served reranker; may be left out"} if one
                      else model),
            "query": text, "texts": documents, "top_n": common["top_n"],
            "raw_scores": {**flag, "description": "the logits, before the activation"},
            "return_text": flag, "truncate": common["truncate"],
            "truncation_direction": {"type": "string", "enum": ["right", "Right"],
                                     "nullable": True}}},
        "RerankResult": {"type": "object", "required": ["index", "relevance_score"],
                         "properties": {"index": {"type": "integer", "minimum": 0},
                                        "relevance_score": {"type": "number"},
                                        "document": {"type": "object", "required": ["text"],
                                                     "properties": {"text": {
                                                         "type": "string"}}}}},
        "RerankResponse": {"type": "object", "required": ["id", "model", "results", "usage"],
                           "properties": {
                               "id": {"type": "string"}, "model": {"type": "string"},
                               "results": {"type": "array", "items": _ref("RerankResult")},
                               "usage": {"type": "object", "required": ["total_tokens"],
                                         "properties": {"total_tokens": {"type": "integer"}}},
                               "warnings": {"type": "array", "items": _ref("Warning")}}},
        "RerankResponseV2": {"type": "object", "required": ["id", "results", "meta"],
                             "properties": {
                                 "id": {"type": "string"},
                                 "results": {"type": "array", "items": _ref("RerankResult")},
                                 "meta": {"type": "object"},
                                 "warnings": {"type": "array", "items": _ref("Warning")}}},
        "TeiRerankResponse": {"type": "array", "items": {
            "type": "object", "required": ["index", "score"],
            "properties": {"index": {"type": "integer", "minimum": 0},
                           "score": {"type": "number"}, "text": {"type": "string"}}}},
    }

    def op(name: str, summary: str, request: dict[str, Any],
           response: dict[str, Any]) -> dict[str, Any]:
        return {"post": {
            "operationId": name, "summary": summary, "requestBody": _body(request),
            "responses": {
                "200": {"description": "Documents ranked by score, best first",
                        "content": {"application/json": {"schema": response}},
                        "headers": {"X-Edge-Embed-Truncated": {
                            "description": "How many pairs were cut at the model's limit",
                            "schema": {"type": "integer"}}}},
                **_INPUT_ERRORS,
                "400": _err("Invalid request (names the field and document), or a model "
                            "of another task"),
                "408": _err("The request did not finish within the request timeout"),
                **_COMMON_ERRORS}}}

    paths = {
        "/v1/rerank": op("rerank", "Rerank documents (Jina / Cohere v1 body)",
                         _ref("RerankRequest"), _ref("RerankResponse")),
        "/rerank": op("rerankTei", "Rerank: Jina / Cohere v1 body, or text-embeddings-"
                      "inference's (with texts; a bare array answers it)",
                      {"anyOf": [_ref("RerankRequest"), _ref("TeiRerankRequest")]},
                      {"anyOf": [_ref("RerankResponse"), _ref("TeiRerankResponse")]}),
        "/v2/rerank": op("rerankV2", "Rerank documents (Cohere v2 body)",
                         _ref("RerankRequestV2"), _ref("RerankResponseV2")),
    }
    return paths, schemas


def _token_ids(settings: Settings, vocab_size: int | None) -> dict[str, Any]:
    ids: dict[str, Any] = {"type": "integer", "minimum": 0}
    if vocab_size is not None:
        ids["maximum"] = vocab_size - 1
    return {"type": "array", "minItems": 1, "maxItems": settings.requests.max_input_chars,
            "items": ids, "description": "token ids of the model's own tokenizer (not "
                                         "tiktoken's); the model's special tokens are added"}


def _request_fields(settings: Settings, served: ServedModel | None) -> dict[str, Any]:
    """The request's fields other than `model`, for one model (None: any model)."""
    limits = settings.requests
    manifest = served.model.manifest if served is not None else None
    token_ids = _token_ids(settings, served.model.tokenizer.vocab_size if served else None)
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_input_chars}
    types = served.embedding_types if served is not None else list(EMBEDDING_TYPES)
    max_tokens = f" of {manifest.max_tokens}" if manifest is not None else ""
    return {
        "input": {"oneOf": [
            text, {"type": "array", "minItems": 1, "maxItems": limits.max_inputs, "items": text},
            token_ids, {"type": "array", "minItems": 1, "maxItems": limits.max_inputs,
                        "items": token_ids}],
            "description": "a text, texts, token ids or arrays of token ids; at most "
                           f"{limits.max_request_tokens} tokens in all (else 400)"},
        "encoding_format": {"type": "string", "nullable": True,
                            "enum": [*(f for f in ENCODING_FORMATS if f in types), None],
                            "description": "float, base64 (little-endian float32) or, an "
                                           "extension, a compact type as integers"},
        "embedding_types": {"type": "array", "minItems": 1, "uniqueItems": True,
                            "nullable": True, "items": {"type": "string", "enum": types},
                            "description": "extension: each item gets `embeddings` by type"},
        "dimensions": _dimensions(served),
        "user": {"type": "string", "nullable": True},
        "metadata": {"type": "object", "nullable": True},
        "truncate": {"type": "boolean", "nullable": True, "description": (
            f"cut inputs over the model's token limit{max_tokens} and warn (true), or refuse "
            f"them with 400 (false); null: the server's default "
            f"({'cut' if limits.truncate else 'refuse'})")},
        "input_type": {"type": "string", "nullable": True, "enum": [*_input_types(served), None],
                       "description": "the bundle's prompt put before each text"},
        "cache_control": {"type": "object", "nullable": True, "properties": {
            "no_cache": {"type": "boolean"},
            "ttl": {"type": "number", "minimum": 0, "nullable": True,
                    "description": f"seconds; cut to the server's {settings.cache.max_ttl_s:g} "
                                   "s at most"}}},
    }


def _request_schema(settings: Settings, served: ServedModel | None) -> dict[str, Any]:
    fields = _request_fields(settings, served)
    model = _model_field(served, False)
    example = {"model": served.id if served else "MODEL", "input": "The quick brown fox."}
    return {
        "type": "object", "required": ["model"], "example": example,
        # `input` at the top, or in extra_body
        "anyOf": [{"required": ["input"]}, {"required": ["extra_body"], "properties": {
            "extra_body": {"type": "object", "required": ["input"]}}}],
        "properties": {
            "model": model, **fields,
            "extra_body": {
                "type": "object", "nullable": True, "properties": {
                    # Declared absent: the server takes the top-level model repeated, which
                    # no schema can say, and refuses any other (400).
                    "model": {"not": {}}, **fields},
                "description": "its fields count as the request's own (as the OpenAI SDKs "
                               "send extra_body)"},
        },
    }


def _typed(value: Any) -> dict[str, str]:
    return {"type": "boolean" if isinstance(value, bool) else "integer" if isinstance(value, int)
            else "number" if isinstance(value, float) else "string"}


def _object_of(values: dict[str, Any]) -> dict[str, Any]:
    """An object schema of these fields, each typed as its value is (for /info's limits)."""
    return {"type": "object", "required": list(values),
            "properties": {k: _object_of(v) if isinstance(v, dict) else _typed(v)
                           for k, v in values.items()}}


def _open(op: dict[str, Any]) -> dict[str, Any]:
    """An operation anyone may call, keys or not (auth.OPEN_PATHS)."""
    return {**op, "security": []}


def _text(media: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def openapi_spec(settings: Settings, models: Sequence[ServedModel] = (),
                 docs: bool = False) -> dict[str, Any]:
    """The document for a caller who may use `models`; `docs`: the /docs page is served."""
    embeddings_op = {
        "summary": "Create embeddings (OpenAI-compatible)",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("EmbeddingRequest")}}},
        "responses": {
            "200": {**_ok("Embeddings", "EmbeddingResponse"),
                    "headers": {"X-Edge-Embed-Truncated": {
                        "description": "How many inputs were cut at the model's token limit",
                        "schema": {"type": "integer", "minimum": 0}}}},
            "400": _err("Invalid request (names the field and item)"),
            "408": _err("The request did not finish within the request timeout"),
            "413": _err("Body over the size limit"),
            "415": _err("Content-Type is not application/json"),
            "429": _err("Overloaded: queue full (Retry-After)"),
            **_COMMON_ERRORS,
        },
    }
    # A probe's 503: its own answer, or the connection limit's (service/connections.py).
    probe_503 = {"anyOf": [_ref("Health"), _ERROR]}
    probe = {"200": _ok("Status", "Health"), "503": {
        "description": "Not alive, or over the connection limit",
        "content": {"application/json": {"schema": probe_503}}}}
    paths: dict[str, Any] = {
        **{p: {"post": {**embeddings_op, "operationId": f"createEmbedding{i}"}}
           for i, p in enumerate(("/v1/embeddings", "/embeddings", "/api/embeddings",
                                  "/api/v2/embeddings"))},
        **{p: {"post": {**cohere_op(settings, v), "operationId": f"embedCohereV{v}"}}
           for p, v in (("/v2/embed", "2"), ("/v1/embed", "1"))},
        "/tokenize": {"post": {
            "operationId": "tokenize",
            "summary": "Tokenize as /v1/embeddings would (TEI or vLLM shape)",
            "requestBody": _body({"oneOf": [_ref("TokenizeTEI"), _ref("TokenizeVLLM"),
                                     _ref("TokenizeVLLMInput")]}),
            "responses": {
                "200": {"description": "TEI: per input its tokens; vLLM: count and ids",
                        "headers": {"X-Edge-Embed-Truncated": {
                            "description": "How many inputs /v1/embeddings would cut",
                            "schema": {"type": "integer"}}},
                        "content": {"application/json": {"schema": {"oneOf": [
                            {"type": "array", "items": {
                                "type": "array", "items": _ref("SimpleToken")}},
                            _ref("TokenizeResponse")]}}}},
                **_INPUT_ERRORS, **_COMMON_ERRORS}}},
        **{p: {"post": {
            "operationId": f"detokenize{i}",
            "summary": "Token ids back to text (vLLM or TEI shape)",
            "requestBody": _body({"oneOf": [_ref("DetokenizeVLLM"), _ref("DecodeTEI")]}),
            "responses": {
                "200": {"description": "vLLM: {prompt}; TEI: the text(s)",
                        "content": {"application/json": {"schema": {"oneOf": [
                            {"type": "object", "required": ["prompt"],
                             "properties": {"prompt": {"type": "string"}}},
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}}]}}}},
                **_INPUT_ERRORS, **_COMMON_ERRORS}}}
           for i, p in enumerate(("/detokenize", "/decode"))},
        "/v1/models": {"get": {"operationId": "listModels", "summary": "Served models",
                               "responses": {"200": _ok("Models", "ModelList"),
                                             **_COMMON_ERRORS}}},
        "/v1/models/{model}": {"get": {
            "operationId": "retrieveModel", "summary": "One served model",
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": [
                                n for s in models for n in s.names]} if models
                            else {"type": "string"}}],
            "responses": {"200": _ok("Model", "Model"), **_COMMON_ERRORS}}},
        "/health": {"get": {"operationId": "health", "summary": (
            "Liveness; with auth on, a caller without a valid key gets the status alone"),
            "responses": probe}},
        "/ready": {"get": {"operationId": "ready", "summary": "Readiness",
                           "responses": {"200": _ok("Ready", "Ready"), "503": {
                               "description": "Not ready (and why), or over the connection "
                                              "limit",
                               "content": {"application/json": {"schema": {
                                   "anyOf": [_ref("Ready"), _ERROR]}}}}}}},
        "/info": {"get": {"operationId": "info", "summary": "Version, limits, providers",
                          "responses": {"200": _ok("Info", "Info"), **_COMMON_ERRORS}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                             "responses": {"200": _text("text/plain", "Prometheus text format"),
                                           "503": _UNAVAILABLE}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3.0",
                                                        "content": {"application/json": {
                                                            "schema": {"type": "object"}}}},
                                                **_COMMON_ERRORS}}},
    }
    if docs:
        paths[DOCS_PATH] = {"get": {
            "operationId": "docs", "summary": "This API page (Swagger UI)", "tags": ["docs"],
            "responses": {"200": _text("text/html", "The page"), "503": _UNAVAILABLE}}}
        paths[DOCS_ASSET_PATH] = {"get": {
            "operationId": "docsAsset", "summary": "The page's files", "tags": ["docs"],
            "parameters": [{"name": "asset", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": sorted(ASSETS)}}],
            "responses": {
                "200": {"description": "The file", "content": {
                    media: {"schema": {"type": "string"}}
                    for media in sorted({m for m in ASSETS.values()})}},
                # another name is any unknown path: with keys on, 401 before 404
                "401": _COMMON_ERRORS["401"], "404": _err("No such file"),
                "503": _UNAVAILABLE}}}
    embedders = [s for s in models if s.task == "embed"]
    rerank_paths, rerank_schemas = _rerank_spec(
        settings, [s for s in models if s.task == "rerank"], embedders)
    paths.update(rerank_paths)
    if settings.api_keys or settings.api_keys_file:
        for path, item in paths.items():
            if path in OPEN_PATHS or path == DOCS_ASSET_PATH:
                for method, op in item.items():
                    item[method] = _open(op)
    canary = {"type": "object", "nullable": True, "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["pass", "failed-serving", "absent"]},
        "agreement": {"type": "number"}, "gate": {"type": "number"},
        "count": {"type": "integer"}, "build_agreement": {"type": "number", "nullable": True}}}
    strings = {"type": "array", "items": {"type": "string"}}
    nullable_string = {"type": "string", "nullable": True}
    number = {"type": "number"}
    ranking = {"type": "object", "nullable": True, "properties": {
        "reference": {"type": "string"}, "eval_set": {"type": "string"},
        "n_queries": {"type": "integer"}, "n_pairs": {"type": "integer"},
        "score_abs_max": number, "score_abs_mean": number, "kendall_tau_min": number,
        "kendall_tau_mean": number, "top1_agreement": number, "top3_agreement": number,
        "batch_invariance_max_abs_diff": {"type": "number", "nullable": True}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "edge-embed", "version": __version__,
                 "description": "OpenAI-compatible embeddings on onnxruntime."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["message", "type", "param", "code"],
                    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                   "param": nullable_string, "code": nullable_string,
                                   "request_id": {"type": "string"}}}}},
                **_per_model("EmbeddingRequest", partial(_request_schema, settings),
                             embedders),
                "Embedding": {"type": "object", "required": ["object", "index", "embedding"],
                              "properties": {"object": {"type": "string", "enum": ["embedding"]},
                                             "index": {"type": "integer", "minimum": 0},
                                             "embedding": {"oneOf": [
                                                 {"type": "array", "items": {"type": "number"}},
                                                 {"type": "string", "format": "byte"}]},
                                             "embeddings": {"type": "object", "properties": {
                                                 t: {"oneOf": [
                                                     {"type": "array",
                                                      "items": {"type": "number"}},
                                                     {"type": "string", "format": "byte"}]}
                                                 for t in EMBEDDING_TYPES}}}},
                "Warning": {"type": "object", "required": [
                    "index", "code", "message", "original_tokens", "original_tokens_exact",
                    "used_tokens"], "properties": {
                    "index": {"type": "integer"}, "code": {"type": "string"},
                    "message": {"type": "string"}, "original_tokens": {"type": "integer"},
                    "original_tokens_exact": {
                        "type": "boolean",
                        "description": "false: original_tokens is a lower bound (the server "
                                       "counts an input's tokens up to 4x the model's limit, "
                                       "1024 at least)"},
                    "used_tokens": {"type": "integer"}}},
                "EmbeddingResponse": {
                    "type": "object", "required": ["object", "data", "model", "usage", "id"],
                    "properties": {
                        "object": {"type": "string", "enum": ["list"]},
                        "data": {"type": "array", "items": _ref("Embedding")},
                        "model": {"type": "string"}, "id": {"type": "string"},
                        "usage": {"type": "object",
                                  "required": ["prompt_tokens", "total_tokens"],
                                  "properties": {"prompt_tokens": {"type": "integer"},
                                                 "total_tokens": {"type": "integer"}}},
                        "warnings": {"type": "array", "items": _ref("Warning")}}},
                "Canary": canary,
                **tokenize_schemas(settings, models),
                **cohere_schemas(settings, embedders),
                **rerank_schemas,
                "Model": {"type": "object", "required": [
                    "id", "object", "created", "owned_by", "aliases", "dimensions",
                    "matryoshka_dimensions", "max_tokens", "pooling", "normalized",
                    "precision", "input_types", "provider", "provider_requested",
                    "provider_fell_back", "provider_message", "quality", "source", "canary",
                    "embedding_types", "task", "rerank"],
                    "properties": {
                        "id": {"type": "string"}, "object": {"type": "string", "enum": ["model"]},
                        "created": {"type": "integer"}, "owned_by": {"type": "string"},
                        "aliases": strings, "dimensions": {"type": "integer"},
                        "matryoshka_dimensions": {"type": "array",
                                                  "items": {"type": "integer"}},
                        "max_tokens": {"type": "integer"}, "pooling": {"type": "string"},
                        "normalized": {"type": "boolean"}, "precision": {"type": "string"},
                        "input_types": strings, "provider": strings,
                        "provider_requested": strings, "provider_fell_back": {"type": "boolean"},
                        "provider_message": nullable_string,
                        "quality": {"type": "object", "nullable": True, "properties": {
                            "reference": {"type": "string"}, "eval_set": {"type": "string"},
                            "n_inputs": {"type": "integer"},
                            "cosine_min": {"type": "number"},
                            "cosine_mean": {"type": "number"},
                            "nn_agreement": {"type": "number", "nullable": True},
                            "batch_invariance_min": {"type": "number", "nullable": True}}},
                        "source": nullable_string,
                        # the start-up check of the bundle's canaries
                        "canary": _ref("Canary"),
                        "embedding_types": {"type": "array", "items": {
                            "type": "string", "enum": list(EMBEDDING_TYPES)}},
                        "task": {"type": "string", "enum": list(TASKS)},
                        # a reranker's scoring and its measured ranking agreement
                        "rerank": {"type": "object", "nullable": True,
                                   "required": ["activation", "truncation", "parity",
                                                "quality"], "properties": {
                                       "activation": {"type": "string",
                                                      "enum": list(ACTIVATIONS)},
                                       "truncation": {"type": "string",
                                                      "enum": list(PAIR_TRUNCATIONS)},
                                       "parity": ranking, "quality": ranking}}}},
                "ModelList": {"type": "object", "required": ["object", "data"],
                              "properties": {"object": {"type": "string", "enum": ["list"]},
                                             "data": {"type": "array",
                                                      "items": _ref("Model")}}},
                "ModelHealth": {"type": "object", "required": [
                    "alive", "provider", "provider_fell_back", "provider_message", "canary",
                    "warnings"], "properties": {
                    "alive": {"type": "boolean"}, "workers": {"type": "integer"},
                    "faults": {"type": "integer"}, "worker_deaths": {"type": "integer"},
                    "last_fault": {"type": "object", "nullable": True},
                    "queued_inputs": {"type": "integer"}, "queued_tokens": {"type": "integer"},
                    "running": {"type": "integer"},
                    "runs": {"type": "object", "properties": {
                        "lone": {"type": "integer"}, "side_by_side": {"type": "integer"},
                        "threads": {"type": "object",
                                    "additionalProperties": {"type": "integer"}}}},
                    "throughput_tokens_per_s": {"type": "integer"},
                    "work_ahead_s": {"type": "number"},
                    "provider": strings, "provider_fell_back": {"type": "boolean"},
                    "provider_message": nullable_string, "canary": _ref("Canary"),
                    "warnings": strings}},
                "Health": {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string",
                               "enum": ["ok", "degraded", "failed-serving", "dead"]},
                    "auth": {"type": "string", "enum": ["on", "off"]},
                    "models": {"type": "object", "additionalProperties": _ref("ModelHealth")},
                    "warnings": strings}},
                "Ready": {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string", "enum": ["ready", "not ready"]},
                    "reasons": strings}},
                "Info": {"type": "object", "required": [
                    "name", "version", "limits", "threads", "providers", "models", "auth",
                    "cache"], "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "limits": _object_of(settings.limits()),
                    "threads": {"type": "object",
                                "additionalProperties": {"type": "integer"}},
                    "providers": {"type": "object", "properties": {
                        "requested": strings, "fallback_allowed": {"type": "boolean"},
                        "models": {"type": "object", "additionalProperties": strings},
                        "fell_back": {"type": "object",
                                      "additionalProperties": {"type": "string"}}}},
                    "models": strings, "auth": {"type": "boolean"},
                    "cache": {"type": "object", "required": ["enabled", "entries", "bytes"],
                              "properties": {"enabled": {"type": "boolean"},
                                             "entries": {"type": "integer"},
                                             "bytes": {"type": "integer"}}}}},
            },
        },
        "security": [{"bearer": []}] if settings.api_keys or settings.api_keys_file else [],
    }
