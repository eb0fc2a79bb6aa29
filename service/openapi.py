"""/openapi.json: the HTTP contract, machine-readable (OpenAPI 3.0), errors included.

Written by hand so that it says exactly what the server does; tests and the fuzzer
(schemathesis) hold the server to it.
"""

from __future__ import annotations

from typing import Any

from edge_embed.core.compact import COMPACT_TYPES

from .. import __version__
from .cohere import COHERE_INPUT_TYPES, MAX_OUTPUT_DIMENSION, TRUNCATE, UNSUPPORTED
from .schema import EMBEDDING_TYPES, ENCODING_FORMATS
from .settings import Settings
from .tokenize import MAX_TOKEN_ID

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _ok(description: str, ref: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_COMMON_ERRORS = {
    "401": _err("Missing or wrong API key (WWW-Authenticate: Bearer)"),
    "404": _err("Unknown model (or one the API key may not use) or path"),
    "405": _err("Method not allowed"),
    "500": _err("A server fault; the message carries the request id"),
    "503": _err("Not ready, draining or engine stopped"),
}


_INPUT_ERRORS = {
    "400": _err("Invalid request (names the field and item)"),
    "413": _err("Body over the size limit"),
    "415": _err("Content-Type is not application/json"),
    "429": _err("Overloaded (Retry-After)"),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


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


def tokenize_schemas(settings: Settings) -> dict[str, Any]:
    limits = settings.requests
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_input_chars}
    ids = {"type": "array", "minItems": 1, "maxItems": limits.max_input_chars,
           "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}}
    # `model` may be left out where the caller may use one model only: a server of several
    # declares it required (a key limited to one of them may still leave it out).
    several = len(settings.models) > 1
    model: dict[str, Any] = (
        {"type": "string", "minLength": 1} if several else
        {"type": "string", "minLength": 1, "nullable": True,
         "description": "the served model; may be left out"})
    needs = ["model"] if several else []
    special = {"type": "boolean", "nullable": True}
    closed = {"type": "object", "additionalProperties": False}
    prompt_name = {"type": "string", "nullable": True,
                   "description": "an input type: the model's prompt of that name"}
    return {
        "TokenizeTEI": {**closed, "required": ["inputs", *needs], "properties": {
            "inputs": {"oneOf": [text, {"type": "array", "minItems": 1,
                                        "maxItems": limits.max_inputs, "items": text}]},
            "add_special_tokens": special, "prompt_name": prompt_name, "model": model}},
        "TokenizeVLLM": {**closed, "required": ["prompt", *needs], "properties": {
            "prompt": text, "model": model, "add_special_tokens": special,
            "input_type": prompt_name}},
        "TokenizeVLLMInput": {**closed, "required": ["input", *needs], "properties": {
            "input": text, "model": model, "add_special_tokens": special,
            "input_type": prompt_name}},
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
        "DetokenizeVLLM": {**closed, "required": ["tokens", *needs], "properties": {
            "tokens": ids, "model": model}},
        "DecodeTEI": {**closed, "required": ["ids", *needs], "properties": {
            "ids": {"oneOf": [ids, {"type": "array", "minItems": 1,
                                    "maxItems": limits.max_inputs, "items": ids}]},
            "skip_special_tokens": special, "model": model}},
    }


def cohere_schemas(settings: Settings) -> dict[str, Any]:
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
        "CohereEmbedRequest": {"type": "object", "required": ["model", "texts"], "properties": {
            "model": {"type": "string", "minLength": 1},
            "texts": {"type": "array", "minItems": 1, "maxItems": limits.max_inputs,
                      "items": text},
            "input_type": {"type": "string", "enum": list(COHERE_INPUT_TYPES),
                           "nullable": True},
            "embedding_types": {"type": "array", "minItems": 1, "uniqueItems": True,
                                "nullable": True,
                                "items": {"type": "string", "enum": list(EMBEDDING_TYPES)}},
            "truncate": {"type": "string", "enum": list(TRUNCATE), "nullable": True},
            "output_dimension": {"type": "integer", "minimum": 1,
                                 "maximum": MAX_OUTPUT_DIMENSION, "nullable": True},
            # other modalities: refused unless empty
            **{k: {"type": "array", "maxItems": 0, "nullable": True,
                   "description": "not supported: this server embeds text"}
               for k in UNSUPPORTED}}},
        "CohereEmbedResponse": {"type": "object", "required": ["id", "embeddings", "texts",
                                                               "meta"],
                                "properties": {**common, "embeddings": by_type}},
        "CohereEmbedResponseV1": {"type": "object", "required": ["id", "embeddings", "texts",
                                                                 "meta"],
                                  "properties": {**common, "embeddings": {"oneOf": [
                                      floats, by_type]}}},
    }
def _rerank_spec(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rerank routes (service/rerank.py) and their schemas: (paths, schemas)."""
    limits = settings.requests
    text = {"type": "string", "pattern": "\\S", "maxLength": limits.max_input_chars}
    documents = {"type": "array", "minItems": 1, "maxItems": limits.max_rerank_documents,
                 "items": {"anyOf": [text, {"type": "object", "required": ["text"],
                                            "properties": {"text": text}}]}}
    flag = {"type": "boolean", "nullable": True}
    count = {"type": "integer", "minimum": 1, "nullable": True}
    common = {"query": text, "documents": documents,
              "top_n": {**count, "description": "at most the number of documents"},
              "truncate": {**flag, "description": "cut over-long pairs (warn) or refuse"},
              "max_tokens_per_doc": {**count, "description": "cut (or with truncate false, "
                                                             "refuse) longer documents"}}
    model = {"type": "string", "minLength": 1}
    schemas: dict[str, Any] = {
        "RerankRequest": {"type": "object", "required": ["model", "query", "documents"],
                          "properties": {"model": model, **common, "return_documents": {
                              **flag, "description": "default true"}}},
        "RerankRequestV2": {"type": "object", "required": ["model", "query", "documents"],
                            "properties": {"model": model, **common}},
        "TeiRerankRequest": {"type": "object", "required": ["query", "texts"], "properties": {
            "model": {**model, "nullable": True,
                      "description": "required where several rerankers are served"},
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


def openapi_spec(settings: Settings) -> dict[str, Any]:
    token_ids = {"type": "array", "minItems": 1, "maxItems": settings.requests.max_input_chars,
                 "items": {"type": "integer", "minimum": 0}}
    text = {"type": "string", "minLength": 1, "maxLength": settings.requests.max_input_chars}
    embeddings_op = {
        "summary": "Create embeddings (OpenAI-compatible)",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}}},
        "responses": {
            "200": {**_ok("Embeddings", "EmbeddingResponse"),
                    "headers": {"X-Edge-Embed-Truncated": {
                        "description": "How many inputs were cut at the model's token limit",
                        "schema": {"type": "integer"}}}},
            "400": _err("Invalid request (names the field and item)"),
            "408": _err("The request did not finish within the request timeout"),
            "413": _err("Body over the size limit"),
            "415": _err("Content-Type is not application/json"),
            "429": _err("Overloaded: queue full (Retry-After)"),
            **_COMMON_ERRORS,
        },
    }
    probe = {"description": "Status", "content": {"application/json": {
        "schema": {"type": "object"}}}}
    rerank_paths, rerank_schemas = _rerank_spec(settings)
    return {
        "openapi": "3.0.3",
        "info": {"title": "edge-embed", "version": __version__,
                 "description": "OpenAI-compatible embeddings on onnxruntime."},
        "paths": {
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
            **rerank_paths,
            "/v1/models": {"get": {"operationId": "listModels", "summary": "Served models",
                                   "responses": {"200": _ok("Models", "ModelList"),
                                                 **_COMMON_ERRORS}}},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel", "summary": "One served model",
                "parameters": [{"name": "model", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": _ok("Model", "Model"),
                              **_COMMON_ERRORS}}},
            "/health": {"get": {"operationId": "health", "summary": "Liveness",
                                "responses": {"200": probe, "503": probe}}},
            "/ready": {"get": {"operationId": "ready", "summary": "Readiness",
                               "responses": {"200": probe, "503": probe}}},
            "/info": {"get": {"operationId": "info", "summary": "Version, limits, providers",
                              "responses": {"200": probe, **_COMMON_ERRORS}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {
                                                           "schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": probe, **_COMMON_ERRORS}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["message", "type", "param", "code"],
                    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                   "param": {"type": "string", "nullable": True},
                                   "code": {"type": "string", "nullable": True},
                                   "request_id": {"type": "string"}}}}},
                "EmbeddingRequest": {
                    "type": "object", "required": ["model", "input"],
                    "properties": {
                        "model": {"type": "string", "minLength": 1},
                        "input": {"oneOf": [
                            text, {"type": "array", "minItems": 1,
                                   "maxItems": settings.requests.max_inputs, "items": text},
                            token_ids, {"type": "array", "minItems": 1,
                                        "maxItems": settings.requests.max_inputs,
                                        "items": token_ids}]},
                        "encoding_format": {"type": "string", "enum": list(ENCODING_FORMATS),
                                            "nullable": True,
                                            "description": "float, base64 (little-endian "
                                                           "float32) or, an extension, a "
                                                           "compact type as integers"},
                        "embedding_types": {"type": "array", "minItems": 1,
                                            "uniqueItems": True, "nullable": True,
                                            "items": {"type": "string",
                                                      "enum": list(EMBEDDING_TYPES)},
                                            "description": "extension: each item gets "
                                                           "`embeddings` by type"},
                        "dimensions": {"type": "integer", "minimum": 1, "nullable": True},
                        "user": {"type": "string", "nullable": True},
                        "metadata": {"type": "object", "nullable": True},
                        "extra_body": {"type": "object", "nullable": True},
                        "truncate": {"type": "boolean", "nullable": True,
                                     "description": "cut over-long inputs (warn) or refuse"},
                        "input_type": {"type": "string", "nullable": True,
                                       "description": "query or passage: the bundle's prompts"},
                        "cache_control": {"type": "object", "nullable": True, "properties": {
                            "no_cache": {"type": "boolean"},
                            "ttl": {"type": "number", "minimum": 0,
                                    "description": "seconds; cut to the server's "
                                                   f"{settings.cache.max_ttl_s:g} s at most"}}},
                    },
                },
                "Embedding": {"type": "object", "required": ["object", "index", "embedding"],
                              "properties": {"object": {"type": "string", "enum": ["embedding"]},
                                             "index": {"type": "integer"},
                                             "embedding": {"oneOf": [
                                                 {"type": "array", "items": {"type": "number"}},
                                                 {"type": "string", "format": "byte"}]},
                                             "embeddings": {"type": "object", "properties": {
                                                 t: {"oneOf": [
                                                     {"type": "array",
                                                      "items": {"type": "number"}},
                                                     {"type": "string", "format": "byte"}]}
                                                 for t in EMBEDDING_TYPES}}}},
                "Warning": {"type": "object", "properties": {
                    "index": {"type": "integer"}, "code": {"type": "string"},
                    "message": {"type": "string"}, "original_tokens": {"type": "integer"},
                    "original_tokens_exact": {
                        "type": "boolean",
                        "description": "false: original_tokens is a lower bound (the server "
                                       "counts an input's tokens up to 4x the model's limit, "
                                       "1024 at least)"},
                    "used_tokens": {"type": "integer"}}},
                "EmbeddingResponse": {
                    "type": "object", "required": ["object", "data", "model", "usage"],
                    "properties": {
                        "object": {"type": "string", "enum": ["list"]},
                        "data": {"type": "array",
                                 "items": {"$ref": "#/components/schemas/Embedding"}},
                        "model": {"type": "string"}, "id": {"type": "string"},
                        "usage": {"type": "object",
                                  "required": ["prompt_tokens", "total_tokens"],
                                  "properties": {"prompt_tokens": {"type": "integer"},
                                                 "total_tokens": {"type": "integer"}}},
                        "warnings": {"type": "array",
                                     "items": {"$ref": "#/components/schemas/Warning"}}}},
                "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"],
                          "properties": {"id": {"type": "string"}, "object": {"type": "string"},
                                         "created": {"type": "integer"},
                                         "owned_by": {"type": "string"},
                                         "dimensions": {"type": "integer"},
                                         "max_tokens": {"type": "integer"},
                                         "precision": {"type": "string"},
                                         "task": {"type": "string",
                                                  "enum": ["embed", "rerank"]},
                                         # a reranker's activation, cut and ranking figures
                                         "rerank": {"type": "object", "nullable": True},
                                         "provider": {"type": "array",
                                                      "items": {"type": "string"}},
                                         "embedding_types": {
                                             "type": "array", "items": {
                                                 "type": "string",
                                                 "enum": list(EMBEDDING_TYPES)}},
                                         # the start-up check of the bundle's canaries
                                         "canary": {"type": "object", "nullable": True,
                                                    "required": ["status"], "properties": {
                                                        "status": {"type": "string", "enum": [
                                                            "pass", "failed-serving",
                                                            "absent"]},
                                                        "agreement": {"type": "number"},
                                                        "gate": {"type": "number"}}}}},
                **tokenize_schemas(settings),
                **cohere_schemas(settings),
                **rerank_schemas,
                "ModelList": {"type": "object", "required": ["object", "data"],
                              "properties": {"object": {"type": "string"},
                                             "data": {"type": "array", "items": {
                                                 "$ref": "#/components/schemas/Model"}}}},
            },
        },
        "security": [{"bearer": []}] if settings.api_keys or settings.api_keys_file else [],
    }
