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
from collections.abc import Sequence
from typing import Any

from .. import __version__
from .auth import OPEN_PATHS
from .docs import ASSETS, DOCS_ASSET_PATH, DOCS_PATH
from .models import ServedModel
from .schema import INPUT_TYPES
from .settings import Settings

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


def _schema_name(model_id: str) -> str:
    return "EmbeddingRequest." + re.sub(r"[^A-Za-z0-9._-]", "_", model_id)


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
    dimensions: dict[str, Any] = {"type": "integer", "minimum": 1, "nullable": True}
    input_types = sorted({*INPUT_TYPES, *(manifest.prompts if manifest else ())})
    if manifest is not None and not manifest.matryoshka_dimensions:
        dimensions = {**_NULL_ONLY, "description": "this model has no trained cuts: only null"}
    elif manifest is not None:
        dimensions.update(maximum=manifest.dimensions, description=(
            "cut the vector to this many dimensions and renormalize; trained cuts: "
            + ", ".join(map(str, manifest.matryoshka_dimensions))))
    max_tokens = f" of {manifest.max_tokens}" if manifest is not None else ""
    return {
        "input": {"oneOf": [
            text, {"type": "array", "minItems": 1, "maxItems": limits.max_inputs, "items": text},
            token_ids, {"type": "array", "minItems": 1, "maxItems": limits.max_inputs,
                        "items": token_ids}],
            "description": "a text, texts, token ids or arrays of token ids; at most "
                           f"{limits.max_request_tokens} tokens in all (else 400)"},
        "encoding_format": {"type": "string", "enum": ["float", "base64", None],
                            "nullable": True},
        "dimensions": dimensions,
        "user": {"type": "string", "nullable": True},
        "metadata": {"type": "object", "nullable": True},
        "truncate": {"type": "boolean", "nullable": True, "description": (
            f"cut inputs over the model's token limit{max_tokens} and warn (true), or refuse "
            f"them with 400 (false); null: the server's default "
            f"({'cut' if limits.truncate else 'refuse'})")},
        "input_type": {"type": "string", "nullable": True, "enum": [*input_types, None],
                       "description": "the bundle's prompt put before each text"},
        "cache_control": {"type": "object", "nullable": True, "properties": {
            "no_cache": {"type": "boolean"},
            "ttl": {"type": "number", "minimum": 0, "nullable": True,
                    "description": f"seconds; cut to the server's {settings.cache.max_ttl_s:g} "
                                   "s at most"}}},
    }


def _request_schema(settings: Settings, served: ServedModel | None) -> dict[str, Any]:
    fields = _request_fields(settings, served)
    model: dict[str, Any] = {"type": "string", "minLength": 1}
    if served is not None:
        model = {"type": "string", "enum": list(served.names)}
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


def _request_schemas(settings: Settings, models: Sequence[ServedModel]) -> dict[str, Any]:
    """EmbeddingRequest: one model's schema, or a `oneOf` of each model's, told apart by
    `model` (the names of served models never overlap)."""
    if len(models) <= 1:
        return {"EmbeddingRequest": _request_schema(settings, models[0] if models else None)}
    schemas = {_schema_name(s.id): _request_schema(settings, s) for s in models}
    refs = [_ref(name) for name in schemas]
    mapping = {n: f"#/components/schemas/{_schema_name(s.id)}" for s in models for n in s.names}
    return {**schemas, "EmbeddingRequest": {
        "oneOf": refs, "discriminator": {"propertyName": "model", "mapping": mapping}}}


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
                **_request_schemas(settings, models),
                "Embedding": {"type": "object", "required": ["object", "index", "embedding"],
                              "properties": {"object": {"type": "string", "enum": ["embedding"]},
                                             "index": {"type": "integer", "minimum": 0},
                                             "embedding": {"oneOf": [
                                                 {"type": "array", "items": {"type": "number"}},
                                                 {"type": "string", "format": "byte"}]}}},
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
                "Model": {"type": "object", "required": [
                    "id", "object", "created", "owned_by", "aliases", "dimensions",
                    "matryoshka_dimensions", "max_tokens", "pooling", "normalized",
                    "precision", "input_types", "provider", "provider_requested",
                    "provider_fell_back", "provider_message", "quality", "source", "canary"],
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
                        "canary": _ref("Canary")}},
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
