"""/openapi.json: the HTTP contract, machine-readable (OpenAPI 3.0), errors included.

Written by hand so that it says exactly what the server does; tests and the fuzzer
(schemathesis) hold the server to it.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from .settings import Settings

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


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


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
            "operationId": name, "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": request}}},
            "responses": {
                "200": {"description": "Documents ranked by score, best first",
                        "content": {"application/json": {"schema": response}},
                        "headers": {"X-Edge-Embed-Truncated": {
                            "description": "How many pairs were cut at the model's limit",
                            "schema": {"type": "integer"}}}},
                "400": _err("Invalid request (names the field and document), or a model "
                            "of another task"),
                "408": _err("The request did not finish within the request timeout"),
                "413": _err("Body over the size limit"),
                "415": _err("Content-Type is not application/json"),
                "429": _err("Overloaded (Retry-After)"),
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
                        "encoding_format": {"type": "string", "enum": ["float", "base64"],
                                            "nullable": True},
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
                                                 {"type": "string", "format": "byte"}]}}},
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
                                         # the start-up check of the bundle's canaries
                                         "canary": {"type": "object", "nullable": True,
                                                    "required": ["status"], "properties": {
                                                        "status": {"type": "string", "enum": [
                                                            "pass", "failed-serving",
                                                            "absent"]},
                                                        "agreement": {"type": "number"},
                                                        "gate": {"type": "number"}}}}},
                **rerank_schemas,
                "ModelList": {"type": "object", "required": ["object", "data"],
                              "properties": {"object": {"type": "string"},
                                             "data": {"type": "array", "items": {
                                                 "$ref": "#/components/schemas/Model"}}}},
            },
        },
        "security": [{"bearer": []}] if settings.api_keys or settings.api_keys_file else [],
    }
