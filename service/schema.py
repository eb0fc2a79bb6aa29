"""The OpenAI embeddings schema: parse a request body into a typed object; encode a response.

Parsing here is model-independent (types, shapes, bounds); checks that need the model (token ids
in its vocabulary, `dimensions`, `input_type`) are in `check_for_model`. Every refusal is an
`InvalidRequest` naming the field (`param`) and, for inputs, the item.
"""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import orjson

from edge_embed.core.bundle import Manifest
from edge_embed.core.compact import COMPACT_TYPES, SCALED_TYPES, CompactType, to_base64
from edge_embed.core.encoder import CutSide
from edge_embed.core.feeds import I64
from edge_embed.core.pooling import F32

from .errors import InvalidRequest

# float and base64 (little-endian float32) are OpenAI's; the compact types are an extension
# (core/compact.py): each vector as a list of integers.
EncodingFormat = Literal["float", "base64", "int8", "uint8", "binary", "ubinary"]
ENCODING_FORMATS: tuple[EncodingFormat, ...] = ("float", "base64", *COMPACT_TYPES)
# `embedding_types` (the extension that asks for several types at once, as Cohere's embed does):
# base64 is the float vector as little-endian float32 bytes.
EMBEDDING_TYPES = ("float", "base64", *COMPACT_TYPES)
# Text, or the model's own token ids: a read-only int64 array (8 bytes an id, where a tuple of
# Python ints held ~40).
TextInput = str | I64
# Arrays of integers of at least this many bytes of JSON are parsed a chunk at a time into
# int64 arrays (`parse_body`): a 16 MB body of token ids as Python ints held the GIL in one
# orjson call for a third of a second and took ~160 MB.
BIG_ARRAY_BYTES = 64 * 1024
# One chunk: a few milliseconds of orjson, so the event loop gets the GIL between them.
CHUNK_BYTES = 64 * 1024
# What the text of an array of JSON integers is made of (whitespace, digits, '-', ',').
_INT_ARRAY_BYTES = np.zeros(256, dtype=bool)
_INT_ARRAY_BYTES[list(b" \t\r\n0123456789-,")] = True
INPUT_TYPES = ("query", "passage")
_TIKTOKEN_NOTE = (
    "Token ids must come from this model's own tokenizer (vocabulary size {vocab}), not from "
    "tiktoken; send text instead if unsure (LangChain: check_embedding_ctx_length=False).")


@dataclass(frozen=True)
class CacheControl:
    no_cache: bool = False
    ttl: float | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[TextInput, ...]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    truncate: bool | None = None  # None: the server's default
    input_type: str | None = None
    cache_control: CacheControl = CacheControl()
    cut: CutSide = "end"  # which end of an over-long input is cut
    # compact types asked for beside the float vector (`embedding_types`), in the asked order
    compact: tuple[CompactType, ...] = ()
    field: str = "input"  # the body's name for the inputs, as errors name them
    embedding_types: tuple[str, ...] | None = None  # as sent (OpenAI route's extension)


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def is_json_int(value: Any) -> bool:
    """An integer as JSON Schema (and so /openapi.json) counts one: 7, or 7.0 as a client's
    encoder may write it; never a boolean."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "an array", np.ndarray: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_body(raw: bytes) -> Any:
    """JSON from the raw body; malformed JSON, non-UTF-8 bytes, deep nesting -> 400.

    Large arrays of integers (token ids) come back as read-only int64 arrays, parsed a chunk at
    a time (`_big_int_arrays`); everything else as orjson gives it.
    """
    if not raw.strip():
        raise _invalid("The request body is empty; send a JSON object with 'model' and 'input'.",
                       "body")
    try:
        if len(raw) >= BIG_ARRAY_BYTES:
            fast = _with_big_int_arrays(raw)
            if fast is not None:
                return fast[0]
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).split(":", 1)[0]
        raise _invalid(f"The request body is not valid JSON ({reason}).", "body") from None


def _with_big_int_arrays(raw: bytes) -> tuple[Any] | None:
    """The body with each large array of integers (outside strings, no nesting) parsed into an
    int64 array, the rest by orjson; None where that does not apply (nothing large, or an array
    orjson would read otherwise: a float, an integer past 64 bits), so that the caller parses
    the body whole and gives its usual answer or error."""
    spans = _int_array_spans(raw)
    if not spans:
        return None
    nonce = secrets.token_hex(8)
    arrays: dict[str, I64] = {}
    pieces: list[bytes] = []
    at = 0
    for k, (start, end) in enumerate(spans):  # raw[start] == b"[", raw[end] == b"]"
        array = _parse_int_array(raw, start + 1, end)
        if array is None:
            return None
        name = f"\u0000{nonce}:{k}"
        arrays[name] = array
        pieces += [raw[at:start], orjson.dumps(name)]
        at = end + 1
    pieces.append(raw[at:])
    return (_put_back(orjson.loads(b"".join(pieces)), arrays),)


def _int_array_spans(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of each '[' ... ']' of at least BIG_ARRAY_BYTES outside strings, with no
    bracket inside and only the bytes of integers between; numpy over the bytes, no array of
    the body's length but booleans."""
    b = np.frombuffer(raw, dtype=np.uint8)
    quotes = _real_quotes(b)
    if len(quotes) % 2:
        return []  # an unclosed string: orjson says so
    opens, closes = np.flatnonzero(b == ord("[")), np.flatnonzero(b == ord("]"))
    brackets = np.concatenate([opens, closes])
    is_open = np.concatenate([np.ones(len(opens), bool), np.zeros(len(closes), bool)])
    order = np.argsort(brackets, kind="stable")
    brackets, is_open = brackets[order], is_open[order]
    # Outside strings: an even number of real quotes before it.
    outside = np.searchsorted(quotes, brackets) % 2 == 0
    brackets, is_open = brackets[outside], is_open[outside]
    if len(brackets) < 2:
        return []
    pair = is_open[:-1] & ~is_open[1:]
    starts, ends = brackets[:-1][pair], brackets[1:][pair]
    big = ends - starts - 1 >= BIG_ARRAY_BYTES
    return [(int(s), int(e)) for s, e in zip(starts[big], ends[big], strict=True)
            if _INT_ARRAY_BYTES[b[s + 1:e]].all()]


def _real_quotes(b: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Positions of the quotes that open or close strings: not after an odd run of backslashes."""
    quotes = np.flatnonzero(b == ord('"'))
    slashes = np.flatnonzero(b == ord("\\"))
    if not len(quotes) or not len(slashes):
        return quotes
    # Runs of consecutive backslashes: where each starts, for each backslash.
    new_run = np.concatenate([[True], np.diff(slashes) != 1])
    run_start = slashes[new_run][np.cumsum(new_run) - 1]
    at = np.searchsorted(slashes, quotes - 1)
    found = at < len(slashes)
    ends_before = np.zeros(len(quotes), dtype=bool)
    ends_before[found] = slashes[at[found]] == quotes[found] - 1
    run = np.zeros(len(quotes), dtype=np.intp)
    run[ends_before] = quotes[ends_before] - run_start[at[ends_before]]
    real: npt.NDArray[np.intp] = quotes[run % 2 == 0]
    return real


def _parse_int_array(raw: bytes, start: int, end: int) -> I64 | None:
    """raw[start:end], the inside of a JSON array of integers, a chunk at a time; orjson checks
    the grammar, numpy the range. None for anything else (an error, an empty element, a float,
    an integer past int64): the whole-body parse then gives its usual answer."""
    parts: list[I64] = []
    at = start
    while at < end:
        cut = end if end - at <= CHUNK_BYTES else raw.rfind(b",", at, at + CHUNK_BYTES)
        if cut <= at or (cut < end and cut + 1 >= end):  # no comma in a chunk; a trailing one
            return None
        try:
            values = orjson.loads(b"[" + raw[at:cut] + b"]")
        except orjson.JSONDecodeError:
            return None
        array = np.array(values)
        if not values or array.dtype != np.int64:
            return None
        parts.append(array)
        at = cut + 1
    if not parts:
        return None
    out = np.concatenate(parts)
    out.flags.writeable = False
    return out


def _put_back(data: Any, arrays: dict[str, I64]) -> Any:
    """Swap each placeholder string in `data` for its array (iteratively: no recursion limit)."""
    if isinstance(data, str):
        return arrays.get(data, data)
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        slots: Iterator[tuple[Any, Any]] = (iter(node.items()) if isinstance(node, dict)
                                            else enumerate(node) if isinstance(node, list)
                                            else iter(()))
        for key, value in list(slots):
            if isinstance(value, str) and value in arrays:
                node[key] = arrays[value]
            elif isinstance(value, dict | list):
                stack.append(value)
    return data


def _parse_inputs(value: Any, max_inputs: int, max_chars: int) -> tuple[TextInput, ...]:
    if value is None:
        raise _invalid("'input' is required: a string, an array of strings, an array of token "
                       "ids, or an array of arrays of token ids.", "input")
    if isinstance(value, str | np.ndarray):  # an array: one input of token ids (parse_body)
        items: list[Any] = [value]
        single = True
    elif isinstance(value, list):
        if not value:
            raise _invalid("'input' is an empty array; send at least one input.", "input")
        if is_json_int(value[0]):
            for j, tok in enumerate(value):
                if not is_json_int(tok):
                    raise _invalid(f"'input[{j}]' is {type_name(tok)}, but 'input' starts as "
                                   "an array of token ids: every item must be an integer.",
                                   "input")
            items, single = [value], True  # one input given as token ids
        else:
            items, single = value, False
    else:
        raise _invalid(f"'input' must be a string or an array, got {type_name(value)}.", "input")
    if len(items) > max_inputs:
        raise _invalid(f"'input' has {len(items)} items; at most {max_inputs} are allowed per "
                       "request.", "input")
    kind: type | None = None
    out: list[TextInput] = []
    for i, item in enumerate(items):
        where = "input" if single else f"input[{i}]"
        if isinstance(item, str):
            item_kind: type = str
            if not item:
                raise _invalid(f"'{where}' is an empty string; every input must contain text.",
                               "input")
            if len(item) > max_chars:
                raise _invalid(f"'{where}' has {len(item)} characters; at most {max_chars} are "
                               "allowed per input.", "input")
            parsed: TextInput = item
        elif isinstance(item, list | np.ndarray):
            item_kind = list
            if not len(item):
                raise _invalid(f"'{where}' is an empty array of token ids.", "input")
            if isinstance(item, list):
                for j, tok in enumerate(item):
                    if not is_json_int(tok):
                        raise _invalid(f"'{where}[{j}]' must be an integer token id, got "
                                       f"{type_name(tok)}.", "input")
            if len(item) > max_chars:
                raise _invalid(f"'{where}' has {len(item)} token ids; at most {max_chars} are "
                               "allowed per input.", "input")
            parsed = item if isinstance(item, np.ndarray) else _ids_array(item, where)
        else:
            raise _invalid(f"'{where}' must be a string or an array of token ids, got "
                           f"{type_name(item)}.", "input")
        if kind is not None and item_kind is not kind:
            raise _invalid(f"'{where}' is {type_name(item)} but earlier items are not: 'input' "
                           "must not mix strings and token-id arrays.", "input")
        kind = item_kind
        out.append(parsed)
    return tuple(out)


def _ids_array(ids: list[int], where: str) -> I64:
    """Token ids (integers, checked) as a read-only int64 array; past 64 bits -> 400."""
    try:
        out = np.array(ids, dtype=np.int64)
    except OverflowError:
        j, tok = next((j, t) for j, t in enumerate(ids) if not -(2**63) <= t < 2**63)
        raise _invalid(f"'{where}[{j}]' is token id {tok}, outside any model's vocabulary.",
                       "input") from None
    out.flags.writeable = False
    return out


def parse_request(data: Any, *, max_inputs: int, max_input_chars: int) -> EmbeddingRequest:
    if not isinstance(data, dict):
        raise _invalid(f"The request body must be a JSON object, got {type_name(data)}.", "body")
    extra = data.get("extra_body")
    if extra is not None:
        if not isinstance(extra, dict):
            raise _invalid("'extra_body' must be an object.", "extra_body")
        # The seed APIs pass `extra_body` through verbatim: its keys count as the request's own,
        # except the model: a gateway that checks the top-level `model` must see the one used.
        if "model" in extra and extra["model"] != data.get("model"):
            raise _invalid("'extra_body.model' differs from 'model': extra_body may not change "
                           "the model; send it in 'model' only.", "extra_body")
        if extra.keys() & data.keys() - {"model"}:
            # Each field is checked where it was sent (/openapi.json declares both places): a
            # value the merge hides must be valid too.
            top = {k: v for k, v in data.items() if k != "extra_body"}
            parse_request({**top, "input": top.get("input", extra.get("input"))},
                          max_inputs=max_inputs, max_input_chars=max_input_chars)
        data = {**data, **extra}
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' is required: the id of a served model (GET /v1/models).",
                       "model")
    inputs = _parse_inputs(data.get("input"), max_inputs, max_input_chars)
    fmt = data.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ENCODING_FORMATS:
        raise _invalid(f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, got "
                       f"{orjson.dumps(fmt).decode()[:40]}.", "encoding_format")
    types = parse_embedding_types(data.get("embedding_types"), "embedding_types")
    dims = data.get("dimensions")
    if dims is not None and (not is_json_int(dims) or dims <= 0):
        raise _invalid("'dimensions' must be a positive integer.", "dimensions")
    if dims is not None:
        dims = int(dims)
    for key in ("truncate",):
        if data.get(key) is not None and not isinstance(data[key], bool):
            raise _invalid(f"'{key}' must be true or false.", key)
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _invalid("'user' must be a string.", "user")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _invalid("'metadata' must be an object.", "metadata")
    input_type = data.get("input_type")
    if input_type is not None and not isinstance(input_type, str):
        raise _invalid("'input_type' must be a string such as 'query' or 'passage'.",
                       "input_type")
    compact = tuple(t for t in types or () if t in COMPACT_TYPES)
    if fmt in COMPACT_TYPES and fmt not in compact:
        compact = (*compact, fmt)
    return EmbeddingRequest(model=model, inputs=inputs, encoding_format=fmt, dimensions=dims,
                            truncate=data.get("truncate"), input_type=input_type,
                            cache_control=_cache_control(data.get("cache_control")),
                            compact=compact, embedding_types=types)


def parse_embedding_types(value: Any, param: str) -> tuple[str, ...] | None:
    """`embedding_types`: a non-empty array of distinct types of EMBEDDING_TYPES; None if
    absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise _invalid(f"'{param}' must be a non-empty array of {', '.join(EMBEDDING_TYPES)}.",
                       param)
    for j, kind in enumerate(value):
        if kind not in EMBEDDING_TYPES:
            shown = orjson.dumps(kind).decode()[:40] if isinstance(kind, str | int | float) \
                else type_name(kind)
            raise _invalid(f"'{param}[{j}]' must be one of {', '.join(EMBEDDING_TYPES)}, got "
                           f"{shown}.", param)
    if len(set(value)) != len(value):
        raise _invalid(f"'{param}' names a type twice.", param)
    return tuple(value)


def _cache_control(value: Any) -> CacheControl:
    if value is None:
        return CacheControl()
    if not isinstance(value, dict):
        raise _invalid("'cache_control' must be an object: {\"no_cache\": bool, \"ttl\": "
                       "seconds}.", "cache_control")
    no_cache = value.get("no_cache", False)
    if not isinstance(no_cache, bool):
        raise _invalid("'cache_control.no_cache' must be true or false.", "cache_control")
    ttl = value.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                            or not math.isfinite(ttl) or ttl < 0):
        raise _invalid("'cache_control.ttl' must be a number of seconds >= 0.", "cache_control")
    return CacheControl(no_cache=no_cache, ttl=None if ttl is None else float(ttl))


def check_for_model(req: EmbeddingRequest, manifest: Manifest, vocab_size: int) -> None:
    """The checks that need the model: dimensions, input_type, token ids in its vocabulary."""
    if req.dimensions is not None:
        if not manifest.matryoshka_dimensions:
            raise _invalid("This model does not support specifying dimensions.", "dimensions")
        if req.dimensions > manifest.dimensions:
            cuts = ", ".join(map(str, manifest.matryoshka_dimensions))
            raise _invalid(f"'dimensions' must be at most {manifest.dimensions} for this model "
                           f"(trained cuts: {cuts}).", "dimensions")
    scaled = [t for t in req.compact if t in SCALED_TYPES]
    if scaled and manifest.compact is None:
        param = ("encoding_format" if req.encoding_format in SCALED_TYPES
                 else "embedding_types")
        raise _invalid(f"'{param}' asks for {scaled[0]}, but this model's bundle has no int8 "
                       "scale (bundle.json 'compact', written by edge-embed export and quantize "
                       "since compact vectors exist): rebuild the bundle, or ask for binary or "
                       "ubinary, which need none.", param)
    if req.input_type is not None and req.input_type not in (*INPUT_TYPES, *manifest.prompts):
        choices = sorted({*INPUT_TYPES, *manifest.prompts})
        raise _invalid(f"'input_type' must be one of {', '.join(choices)}.", "input_type")
    single = len(req.inputs) == 1
    for i, item in enumerate(req.inputs):
        if isinstance(item, str):
            continue
        outside = np.flatnonzero((item < 0) | (item >= vocab_size))
        if len(outside):
            j = int(outside[0])
            where = "input" if single else f"input[{i}]"
            raise _invalid(f"'{where}[{j}]' is token id {int(item[j])}, outside this model's "
                           f"vocabulary (0..{vocab_size - 1}). "
                           + _TIKTOKEN_NOTE.format(vocab=vocab_size), "input")


def encode_vector(row: F32, fmt: EncodingFormat) -> Any:
    if fmt == "base64":
        # Little-endian float32 bytes, what the official clients decode with numpy/Float32Array.
        return base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii")
    return row  # orjson writes numpy arrays itself (OPT_SERIALIZE_NUMPY), no Python floats


def encode_compact(row: npt.NDArray[Any], base64_bytes: bool) -> Any:
    """A compact vector: its integers, or base64 of its bytes (int8 and binary as signed)."""
    return to_base64(row) if base64_bytes else row


def encode_response(vectors: F32, fmt: EncodingFormat, model: str, prompt_tokens: int,
                    request_id: str, warnings: list[dict[str, Any]],
                    compact: dict[CompactType, npt.NDArray[Any]] | None = None,
                    embedding_types: tuple[str, ...] | None = None) -> bytes:
    """OpenAI's response; a compact `fmt` puts that type in `embedding`, `embedding_types`
    adds `embeddings: {type: vector}` to each item (base64 where `fmt` is base64)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    compact = compact or {}
    as_base64 = fmt == "base64"

    def item(i: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": "embedding", "index": i,
            "embedding": (encode_compact(compact[fmt][i], False)
                          if fmt in COMPACT_TYPES
                          else encode_vector(vectors[i], "base64" if as_base64 else "float"))}
        if embedding_types is not None:
            out["embeddings"] = {
                t: (encode_vector(vectors[i], "base64" if as_base64 or t == "base64"
                                  else "float")
                    if t in ("float", "base64")
                    else encode_compact(compact[cast(CompactType, t)][i], as_base64))
                for t in embedding_types}
        return out

    body: dict[str, Any] = {
        "object": "list",
        "data": [item(i) for i in range(vectors.shape[0])],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "id": request_id,
    }
    if warnings:
        body["warnings"] = warnings
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
