"""Token counts before sending: `POST /tokenize`, `/detokenize` and `/decode`, in the shapes of
text-embeddings-inference (TEI) and vLLM, for every served model.

Counted by the embeddings path's own `tokenize` (service/embeddings.py), with the prompt the
same `input_type` would add and the same cut at the model's limit: a count here is exactly what
/v1/embeddings would compute for the same input, and the answer says whether it would be cut.

- TEI `{inputs, add_special_tokens?, prompt_name?}`: per input a list of tokens `{id, text,
  special, start, stop}`; `text` is the input's characters from `start` to `stop` (a special
  token's own string, without offsets; a prompt token's string, without offsets: it is not in
  the input). An input over the limit lists the tokens the model would see, and the header
  X-Edge-Embed-Truncated counts such inputs.
- vLLM `{model, prompt | input, add_special_tokens?}`: `{count, max_model_len, tokens}`, where
  `count` is the input's tokens before any cut (`count_exact` false: a lower bound, past what
  the server counts) and `tokens` the ids the model would see; plus `truncated` and
  `used_tokens` (what /v1/embeddings reports as usage).
- `/detokenize` and `/decode`: vLLM `{model, tokens}` -> `{prompt}`; TEI `{ids,
  skip_special_tokens?}` -> a string (or one per list of ids).

`model` may be left out where the caller may use only one model (TEI's requests have none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from edge_embed.core.encoder import TextTokenizer, Tokenized

from .errors import InvalidRequest
from .models import Registry, ServedModel
from .schema import EmbeddingRequest, check_for_model, is_json_int

Shape = Literal["tei", "vllm"]
# Each shape's fields: anything else is refused by name (the OpenAPI document declares exactly
# these, so a generated client learns of a misspelt field).
TEI_FIELDS = frozenset({"inputs", "add_special_tokens", "prompt_name", "model"})
VLLM_FIELDS = frozenset({"prompt", "input", "add_special_tokens", "input_type", "model"})
# The largest token id read as an integer: a JSON integer past 64 bits arrives as a float
# (orjson), so the OpenAPI document bounds ids here too; the vocabulary bounds them later.
MAX_TOKEN_ID = 2**63 - 1
DETOKENIZE_FIELDS = {"tokens": frozenset({"tokens", "model"}),
                     "ids": frozenset({"ids", "skip_special_tokens", "model"})}


@dataclass(frozen=True)
class TokenizeRequest:
    model: str | None
    texts: tuple[str, ...]
    shape: Shape
    single: bool  # TEI's `inputs` as one string, vLLM's prompt: the answer is for one input
    add_special_tokens: bool = True
    input_type: str | None = None
    field: str = "inputs"  # the body's name for the inputs, as errors name them


@dataclass(frozen=True)
class DetokenizeRequest:
    model: str | None
    ids: tuple[tuple[int, ...], ...]
    shape: Shape
    single: bool
    skip_special_tokens: bool
    field: str  # "tokens" (vLLM) or "ids" (TEI)


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _model(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _invalid("'model' must be the id of a served model (GET /v1/models).", "model")
    return model


def _flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"'{key}' must be true or false.", key)
    return value


def _text(value: Any, where: str, param: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"'{where}' must be a non-empty string.", param)
    if len(value) > max_chars:
        raise _invalid(f"'{where}' has {len(value)} characters; at most {max_chars} are allowed "
                       "per input.", param)
    return value


def _only(data: dict[str, Any], fields: frozenset[str], shape: str) -> None:
    unknown = sorted(k for k in data if k not in fields)
    if unknown:
        raise _invalid(f"'{unknown[0][:60]}' is not a field of {shape}; it takes "
                       f"{', '.join(sorted(fields))}.", unknown[0][:60])


def parse_tokenize(data: Any, *, max_inputs: int, max_input_chars: int) -> TokenizeRequest:
    """Either shape, told apart by its fields: TEI's `inputs`, vLLM's `prompt` or `input`."""
    if not isinstance(data, dict):
        raise _invalid("The request body must be a JSON object with 'inputs' (TEI) or "
                       "'prompt' (vLLM).", "body")
    given = [k for k in ("inputs", "prompt", "input") if data.get(k) is not None]
    if len(given) != 1:
        raise _invalid("Send exactly one of 'inputs' (TEI: a string or strings), 'prompt' or "
                       f"'input' (vLLM: a string); got {', '.join(given) or 'none'}.",
                       given[1] if len(given) > 1 else "inputs")
    field = given[0]
    shape: Shape = "tei" if field == "inputs" else "vllm"
    _only(data, TEI_FIELDS if shape == "tei" else VLLM_FIELDS,
          "TEI's shape (inputs)" if shape == "tei" else "vLLM's shape (prompt or input)")
    name = "prompt_name" if shape == "tei" else "input_type"
    input_type = data.get(name)
    if input_type is not None and not isinstance(input_type, str):
        raise _invalid(f"'{name}' must be the name of one of the model's prompts.", name)
    value = data[field]
    if isinstance(value, str) or shape == "vllm":
        texts: tuple[str, ...] = (_text(value, field, field, max_input_chars),)
        single = True
    elif isinstance(value, list) and value:
        if len(value) > max_inputs:
            raise _invalid(f"'inputs' has {len(value)} items; at most {max_inputs} are allowed "
                           "per request.", "inputs")
        texts = tuple(_text(v, f"inputs[{i}]", "inputs", max_input_chars)
                      for i, v in enumerate(value))
        single = False
    else:
        raise _invalid("'inputs' must be a non-empty string or a non-empty array of them.",
                       "inputs")
    return TokenizeRequest(_model(data), texts, shape, single,
                           _flag(data, "add_special_tokens", True), input_type, field)


def parse_detokenize(data: Any, *, max_inputs: int, max_input_chars: int) -> DetokenizeRequest:
    """vLLM's `{model, tokens}` or TEI's `{ids, skip_special_tokens?}`; ids checked as integers
    here, against the model's vocabulary in `detokenize`."""
    if not isinstance(data, dict):
        raise _invalid("The request body must be a JSON object with 'tokens' (vLLM) or 'ids' "
                       "(TEI).", "body")
    given = [k for k in ("tokens", "ids") if data.get(k) is not None]
    if len(given) != 1:
        raise _invalid("Send exactly one of 'tokens' (vLLM) or 'ids' (TEI): arrays of token "
                       "ids.", given[1] if len(given) > 1 else "tokens")
    field = given[0]
    _only(data, DETOKENIZE_FIELDS[field], f"the shape with '{field}'")
    value = data[field]
    if not isinstance(value, list) or not value:
        raise _invalid(f"'{field}' must be a non-empty array of token ids.", field)
    single = not isinstance(value[0], list) or field == "tokens"
    rows = [value] if single else value
    if len(rows) > max_inputs:
        raise _invalid(f"'{field}' has {len(rows)} lists; at most {max_inputs} are allowed.",
                       field)
    out: list[tuple[int, ...]] = []
    for i, row in enumerate(rows):
        where = field if single else f"{field}[{i}]"
        if not isinstance(row, list) or not row:
            raise _invalid(f"'{where}' must be a non-empty array of token ids.", field)
        if len(row) > max_input_chars:
            raise _invalid(f"'{where}' has {len(row)} token ids; at most {max_input_chars} are "
                           "allowed.", field)
        for j, tok in enumerate(row):
            if not is_json_int(tok):
                raise _invalid(f"'{where}[{j}]' must be an integer token id.", field)
        out.append(tuple(int(tok) for tok in row))
    return DetokenizeRequest(_model(data), tuple(out), "vllm" if field == "tokens" else "tei",
                             single, _flag(data, "skip_special_tokens", True), field)


def pick_model(registry: Registry, name: str | None,
               visible: Callable[[Sequence[str]], bool]) -> ServedModel:
    """The named model, or the caller's only one where none is named."""
    if name is not None:
        return registry.get(name, visible)
    mine = [s for s in registry if visible(s.names)]
    if len(mine) != 1:
        raise _invalid("'model' is required: this server serves "
                       f"{', '.join(s.id for s in mine) or 'no model you may use'}.", "model")
    return mine[0]


def embedding_request(req: TokenizeRequest, model: str) -> EmbeddingRequest:
    """The /v1/embeddings request with the same inputs and input type (checked the same way)."""
    return EmbeddingRequest(model=model, inputs=req.texts, input_type=req.input_type,
                            field=req.field)


def check(req: TokenizeRequest, served: ServedModel) -> EmbeddingRequest:
    """The embeddings route's checks that need the model (the input type names a prompt)."""
    as_embeddings = embedding_request(req, served.id)
    try:
        check_for_model(as_embeddings, served.model.manifest, served.model.tokenizer.vocab_size)
    except InvalidRequest as exc:
        if exc.param == "input_type" and req.shape == "tei":
            exc.param = "prompt_name"
        raise
    return as_embeddings


def tokenize_body(req: TokenizeRequest, served: ServedModel, tokens: Sequence[Tokenized],
                  prompt: str) -> tuple[bytes, int]:
    """The answer in the request's shape, and how many of its inputs would be cut."""
    tokenizer = served.model.tokenizer
    cut = sum(t.truncated for t in tokens)
    frame = len(tokenizer.prefix), len(tokenizer.suffix)
    if req.shape == "vllm":
        (tok,) = tokens
        ids = tok.ids.tolist()
        count, used = tok.original_tokens, len(ids)
        if not req.add_special_tokens:
            ids = ids[frame[0]:len(ids) - frame[1]]
            count, used = count - sum(frame), used - sum(frame)
        body: Any = {"count": count, "max_model_len": served.model.manifest.max_tokens,
                     "tokens": ids, "model": served.id, "truncated": tok.truncated,
                     "used_tokens": used, "count_exact": tok.exact}
    else:
        lists = [_tei_tokens(tok, text, prompt, req.add_special_tokens)
                 for tok, text in zip(tokens, req.texts, strict=True)]
        body = lists
    return orjson.dumps(body), cut


def _tei_tokens(tok: Tokenized, text: str, prompt: str, specials: bool) -> list[dict[str, Any]]:
    enc = tok.encoding
    assert enc is not None  # tokenized with detail=True
    ids = tok.ids.tolist()
    out: list[dict[str, Any]] = []
    for j, token_id in enumerate(ids):
        special = bool(enc.special_tokens_mask[j])
        if special and not specials:
            continue
        start, stop = enc.offsets[j]
        if special or stop <= len(prompt):  # a special token, or one of the prompt's
            out.append({"id": token_id, "text": enc.tokens[j], "special": special,
                        "start": None, "stop": None})
            continue
        start, stop = max(start, len(prompt)) - len(prompt), stop - len(prompt)
        out.append({"id": token_id, "text": text[start:stop], "special": False,
                    "start": start, "stop": stop})
    return out


def detokenize(req: DetokenizeRequest, tokenizer: TextTokenizer) -> bytes:
    vocab = tokenizer.vocab_size
    for i, row in enumerate(req.ids):
        for j, tok in enumerate(row):
            if not 0 <= tok < vocab:
                where = req.field if req.single else f"{req.field}[{i}]"
                raise _invalid(f"'{where}[{j}]' is token id {tok}, outside this model's "
                               f"vocabulary (0..{vocab - 1}).", req.field)
    texts = [tokenizer.decode(row, skip_special_tokens=req.skip_special_tokens)
             for row in req.ids]
    if req.shape == "vllm":
        return orjson.dumps({"prompt": texts[0]})
    return orjson.dumps(texts[0] if req.single else texts)
