"""Cohere's embed API (`POST /v2/embed`, `/v1/embed`): its body and response shapes around the
embeddings request path (service/embeddings.py), which does the work as for /v1/embeddings.

- `input_type` (search_query, search_document, classification, clustering) picks the bundle's
  prompt by name: the first of INPUT_TYPE_PROMPTS[input_type] the bundle has, else none (as
  /v1/embeddings does for a type the bundle has no prompt for).
- `truncate`: END (the default) cuts an over-long text's end, START its start (the prompt
  stays), NONE refuses it with a 400 naming the text.
- `embedding_types`: float, base64 (little-endian float32), int8, uint8, binary, ubinary
  (core/compact.py), each from the one float vector; `output_dimension`: the Matryoshka cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import orjson

from edge_embed.core.compact import COMPACT_TYPES, CompactType
from edge_embed.core.encoder import CutSide

from .embeddings import EmbeddingResult
from .errors import InvalidRequest
from .schema import EmbeddingRequest, encode_vector, is_json_int, parse_embedding_types

ApiVersion = Literal["1", "2"]
COHERE_INPUT_TYPES = ("search_query", "search_document", "classification", "clustering")
# Cohere's input types, each with the prompt names a bundle may use for it, in order of
# preference (sentence-transformers models name theirs freely: "query", "document", ...).
INPUT_TYPE_PROMPTS: Mapping[str, tuple[str, ...]] = {
    "search_query": ("search_query", "query"),
    "search_document": ("search_document", "document", "passage"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}
TRUNCATE: Mapping[str, CutSide | None] = {"END": "end", "START": "start", "NONE": None}
# The largest `output_dimension` read as an integer: a JSON integer past 64 bits arrives as a
# float (orjson), so the OpenAPI document bounds it here too.
MAX_OUTPUT_DIMENSION = 2**63 - 1
# The embeddings path's names for fields that Cohere's body names otherwise.
COHERE_NAMES = {"dimensions": "output_dimension"}
# Fields of Cohere's API for other modalities or models: refused by name, never ignored.
UNSUPPORTED = ("images", "inputs")


@dataclass(frozen=True)
class CohereRequest:
    request: EmbeddingRequest  # input_type as Cohere names it, until `for_prompts`
    types: tuple[str, ...]  # embedding_types in the asked order; ("float",) by default
    by_type: bool  # the response's embeddings by type (v2 always; v1 when types are asked)
    texts: tuple[str, ...]
    version: ApiVersion

    def for_prompts(self, prompts: Mapping[str, str]) -> EmbeddingRequest:
        """The request with `input_type` as the name of the bundle's prompt for it (or none)."""
        kind = self.request.input_type
        names = INPUT_TYPE_PROMPTS.get(kind, ()) if kind is not None else ()
        name = next((n for n in names if n in prompts), None)
        return replace(self.request, input_type=name)


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _shown(value: Any) -> str:
    return orjson.dumps(value).decode()[:40] if isinstance(value, str | int | float) else (
        type(value).__name__)


def parse_cohere(data: Any, *, max_inputs: int, max_input_chars: int,
                 version: ApiVersion) -> CohereRequest:
    """Cohere's embed body; every refusal names the field."""
    if not isinstance(data, dict):
        raise _invalid("The request body must be a JSON object with 'model' and 'texts'.", "body")
    for key in UNSUPPORTED:
        if data.get(key) not in (None, []):  # absent, null or empty: nothing asked
            raise _invalid(f"'{key}' is not supported: this server embeds text; send 'texts' "
                           f"(or '{key}': [], or null).", key)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' is required: the id of a served model (GET /v1/models).",
                       "model")
    texts = data.get("texts")
    if not isinstance(texts, list) or not texts:
        raise _invalid("'texts' is required: a non-empty array of strings.", "texts")
    if len(texts) > max_inputs:
        raise _invalid(f"'texts' has {len(texts)} items; at most {max_inputs} are allowed per "
                       "request.", "texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            raise _invalid(f"'texts[{i}]' must be a non-empty string.", "texts")
        if len(text) > max_input_chars:
            raise _invalid(f"'texts[{i}]' has {len(text)} characters; at most "
                           f"{max_input_chars} are allowed per text.", "texts")
    input_type = data.get("input_type")
    if input_type is not None and input_type not in COHERE_INPUT_TYPES:
        raise _invalid(f"'input_type' must be one of {', '.join(COHERE_INPUT_TYPES)}, got "
                       f"{_shown(input_type)}.", "input_type")
    truncate = data.get("truncate", "END")
    if truncate is None:
        truncate = "END"
    if not isinstance(truncate, str) or truncate not in TRUNCATE:
        raise _invalid(f"'truncate' must be one of {', '.join(TRUNCATE)}, got "
                       f"{_shown(truncate)}.", "truncate")
    cut = TRUNCATE[truncate]
    dims = data.get("output_dimension")
    if dims is not None and (not is_json_int(dims) or dims <= 0
                             or dims > MAX_OUTPUT_DIMENSION):
        raise _invalid(f"'output_dimension' must be an integer in 1..{MAX_OUTPUT_DIMENSION}.",
                       "output_dimension")
    if dims is not None:
        dims = int(dims)
    asked = parse_embedding_types(data.get("embedding_types"), "embedding_types")
    types = asked or ("float",)
    compact: tuple[CompactType, ...] = tuple(t for t in COMPACT_TYPES if t in types)
    request = EmbeddingRequest(
        model=model, inputs=tuple(texts), dimensions=dims, truncate=cut is not None,
        input_type=input_type, cut=cut or "end", compact=compact, field="texts")
    return CohereRequest(request, types, by_type=version == "2" or asked is not None,
                         texts=tuple(texts), version=version)


def cohere_error(exc: InvalidRequest) -> InvalidRequest:
    """An error of the embeddings path, naming the field as Cohere's body calls it."""
    name = COHERE_NAMES.get(exc.param or "")
    if name is not None:
        exc.message = exc.message.replace(f"'{exc.param}'", f"'{name}'")
        exc.args = (exc.message,)
        exc.param = name
    return exc


def cohere_body(req: CohereRequest, result: EmbeddingResult, request_id: str) -> bytes:
    """Cohere's response: `embeddings` by type (or a list of floats: v1 without types), the
    texts, and `meta` with the tokens billed and each cut text's warning."""
    compact = result.compact()
    embeddings: Any
    if req.by_type:
        embeddings = {t: (result.vectors if t == "float"
                          else [encode_vector(row, "base64") for row in result.vectors]
                          if t == "base64" else compact[cast(CompactType, t)])
                      for t in req.types}
    else:
        embeddings = result.vectors
    meta: dict[str, Any] = {"api_version": {"version": req.version},
                            "billed_units": {"input_tokens": result.prompt_tokens}}
    if result.warnings:
        meta["warnings"] = [w["message"] for w in result.warnings]
    body: dict[str, Any] = {
        "id": request_id,
        "response_type": "embeddings_by_type" if req.by_type else "embeddings_floats",
        "embeddings": embeddings, "texts": list(req.texts), "meta": meta}
    if result.warnings:
        body["warnings"] = list(result.warnings)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

