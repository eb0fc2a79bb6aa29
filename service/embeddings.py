"""The embeddings request path, in one place: parse → authorize → validate → cache → tokenize →
admit → engine → pool → encode.

`EmbeddingsPath.parse` turns a raw body into an `EmbeddingRequest` (a large one off the event
loop); the path returns an `EmbeddingResult` or raises an `ApiError`. Every check, token counts
included, runs before anything reaches the model, on cached or fresh counts alike, so the cache
only makes an answer faster; admission (on an estimate of the tokens) comes before tokenizing, so
a flood is refused before it costs tokenizer time. More: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from edge_embed.core.bundle import Manifest
from edge_embed.core.compact import CompactType, convert, scale_for
from edge_embed.core.encoder import CutSide, TextTokenizer, Tokenized
from edge_embed.core.feeds import I64
from edge_embed.core.pooling import F32

from .admission import estimate_tokens
from .auth import ApiKey, Authenticator
from .cache import CacheKey, EmbeddingCache
from .engine import Engines, Job
from .errors import InvalidRequest, Overloaded, RequestTimeout
from .limits import LARGE_BODY_BYTES, RequestLimits
from .metrics import Metrics
from .middleware import Phase, RequestLog
from .models import Registry, ServedModel
from .schema import (
    EmbeddingRequest,
    EncodingFormat,
    TextInput,
    check_for_model,
    encode_response,
    parse_body,
)

T = TypeVar("T")
# Requests up to this many characters are tokenized on the event loop: a sentence or two
# encodes in ~20-40 us, less than the round trip through the tokenizer thread (executor future,
# call_soon_threadsafe, loop wake-up) that one-sentence requests at concurrency 1 would pay.
# Anything longer goes to the thread, so the loop never stalls on a big request.
INLINE_TOKENIZE_CHARS = 512
# Requests up to this many characters go to their own tokenizer thread: a sentence or a page is
# never queued behind the long documents of other requests (~10 ms of tokenizing at most).
SHORT_TOKENIZE_CHARS = 16_384
# Bodies up to this size are parsed on the event loop (well under a millisecond); larger ones
# on the parse thread, so that the loop keeps answering (/health, /ready) while a 16 MB body
# is parsed and checked.
INLINE_PARSE_BYTES = 64 * 1024
# A client refused for want of a body slot may retry this soon: a 16 MB body parses in ~1 s.
BODY_RETRY_AFTER_S = 1


class BodySlots:
    """At most `limit` large bodies (LARGE_BODY_BYTES, or of unknown length) read and parsed at
    once; the next gets 429 before its body is read, as a request the queue has no room for.
    Event loop only: a plain count."""

    def __init__(self, limit: int, on_refuse: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.held = 0
        self.on_refuse = on_refuse

    @contextlib.contextmanager
    def hold(self, length: int | None) -> Iterator[None]:
        if length is not None and length < LARGE_BODY_BYTES:
            yield
            return
        if self.held >= self.limit:
            self.on_refuse()
            raise Overloaded(f"The server is reading {self.held} large request bodies, its "
                              f"limit; retry in {BODY_RETRY_AFTER_S} s.", param="body",
                              headers={"Retry-After": str(BODY_RETRY_AFTER_S),
                                       "Connection": "close"})
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


@dataclass(frozen=True)
class Caller:
    """What the HTTP layer knows about who is asking, and since when."""

    key: ApiKey | None
    log: RequestLog
    started: float  # event-loop time the request arrived; its deadline counts from here
    is_gone: Callable[[], bool] = lambda: False  # the client closed its connection


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    vectors: F32  # [inputs, dimensions], in input order
    encoding_format: EncodingFormat
    prompt_tokens: int
    warnings: tuple[dict[str, Any], ...]  # one per input that was cut
    compact_types: tuple[CompactType, ...] = ()
    scale: float | None = None  # the bundle's int8 scale for this width (None: it has none)
    embedding_types: tuple[str, ...] | None = None

    def compact(self) -> dict[CompactType, npt.NDArray[Any]]:
        """Each asked compact type of every vector: row by row, with the bundle's fixed scale."""
        return {t: convert(self.vectors, t, self.scale) for t in self.compact_types}

    def body(self, request_id: str) -> bytes:
        return encode_response(self.vectors, self.encoding_format, self.model,
                               self.prompt_tokens, request_id, list(self.warnings),
                               self.compact(), self.embedding_types)


@dataclass
class _Work:
    """One request on its way: the vectors and token counts filled in as they are known."""

    req: EmbeddingRequest
    served: ServedModel
    prompt: str
    truncate: bool
    vectors: F32
    used: list[int]
    original: list[int]
    exact: list[bool]  # False: original is a lower bound (the tokenizer stopped counting)

    @property
    def single(self) -> bool:
        return len(self.req.inputs) == 1

    def where(self, i: int) -> str:
        name = self.req.field
        return name if self.single and name == "input" else f"{name}[{i}]"


class EmbeddingsPath:
    def __init__(self, registry: Registry, engines: Engines, cache: EmbeddingCache,
                 metrics: Metrics, limits: RequestLimits, tokenizer_executor: Executor,
                 short_tokenizer_executor: Executor | None = None,
                 parse_executor: Executor | None = None) -> None:
        self.registry = registry
        self.engines = engines
        self.cache = cache
        self.metrics = metrics
        self.limits = limits
        self.tokenizer_executor = tokenizer_executor
        self.short_tokenizer_executor = short_tokenizer_executor or tokenizer_executor
        self.parse_executor = parse_executor or tokenizer_executor
        self.bodies = BodySlots(limits.max_large_bodies,
                                metrics.rejected.labels("overloaded").inc)

    async def parse(self, raw: bytes, shape: Callable[[Any], T]) -> T:
        """`shape` (the route's parser: `parse_request`, Cohere's, the token routes') of the
        JSON in `raw`; a large body on the parse thread, off the event loop."""
        if len(raw) <= INLINE_PARSE_BYTES:
            return shape(parse_body(raw))
        return await asyncio.get_running_loop().run_in_executor(
            self.parse_executor, lambda: shape(parse_body(raw)))

    async def __call__(self, req: EmbeddingRequest, caller: Caller) -> EmbeddingResult:
        limits = self.limits
        served = self.registry.get(req.model, partial(Authenticator.may_use, caller.key))
        caller.log.model, caller.log.inputs = served.id, len(req.inputs)
        manifest = served.model.manifest
        vocab = served.model.tokenizer.vocab_size
        ids = sum(len(item) for item in req.inputs if not isinstance(item, str))
        if ids * 8 <= INLINE_PARSE_BYTES:
            check_for_model(req, manifest, vocab)
        else:  # millions of token ids: ~15 ms of numpy, off the loop as their parse was
            await asyncio.get_running_loop().run_in_executor(
                self.parse_executor, check_for_model, req, manifest, vocab)
        n = len(req.inputs)
        work = _Work(req, served,
                     prompt=prompt_for(req, manifest),
                     truncate=limits.truncate if req.truncate is None else req.truncate,
                     vectors=np.empty((n, req.dimensions or manifest.dimensions),
                                      dtype=np.float32),
                     used=[0] * n, original=[0] * n, exact=[True] * n)
        keys = self._keys(work) if self._caching(req) else None
        misses = self._lookup(work, keys, caller.log) if keys is not None else list(range(n))
        if misses:
            await self._compute(work, misses, caller)
            if keys is not None:
                self._store(work, keys, misses)
        else:
            self._check_tokens(work)
        return self._result(work, caller.log)

    # ---- cache -------------------------------------------------------------------------------
    def _caching(self, req: EmbeddingRequest) -> bool:
        return self.cache.enabled and not req.cache_control.no_cache

    def _keys(self, work: _Work) -> list[CacheKey]:
        manifest = work.served.model.manifest
        # A prompt is put before text only; token ids go to the model as sent.
        return [CacheKey(work.served.id, item, work.prompt, manifest.max_tokens,
                         work.req.dimensions, work.req.cut) if isinstance(item, str) else
                CacheKey(work.served.id, item.tobytes(), "", manifest.max_tokens,
                         work.req.dimensions, work.req.cut)
                for item in work.req.inputs]

    def _lookup(self, work: _Work, keys: list[CacheKey], log: RequestLog) -> list[int]:
        misses: list[int] = []
        for i, key in enumerate(keys):
            entry = self.cache.get(key)
            if entry is None:
                misses.append(i)
            else:
                work.vectors[i] = entry.vector
                work.used[i], work.original[i] = entry.used_tokens, entry.original_tokens
                work.exact[i] = entry.exact
        hits = len(keys) - len(misses)
        if hits:
            self.metrics.cache.labels("hit").inc(hits)
        if misses:
            self.metrics.cache.labels("miss").inc(len(misses))
        log.cache_hits = hits
        return misses

    def _store(self, work: _Work, keys: list[CacheKey], computed: list[int]) -> None:
        ttl = work.req.cache_control.ttl
        for i in computed:
            self.cache.put(keys[i], work.vectors[i], work.used[i], work.original[i], ttl=ttl,
                           key_size=keys[i].size(), exact=work.exact[i])

    # ---- tokenize, admit, run ----------------------------------------------------------------
    async def _compute(self, work: _Work, misses: list[int], caller: Caller) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.limits.timeout_s
        deadline = caller.started + timeout
        engine = self.engines[work.served.id]
        model = work.served.model
        items = [work.req.inputs[i] for i in misses]
        limit = model.manifest.max_tokens
        estimate = sum(estimate_tokens(len(item), isinstance(item, str), limit,
                                       model.tokenizer.scan_bound(len(item))
                                       if isinstance(item, str) else 0)
                       for item in items)
        chars = sum(len(item) for item in items)
        with engine.admitted(len(items), estimate, time_left_s=deadline - loop.time(),
                             timeout_s=timeout) as ticket:
            tokenize_start = time.perf_counter()
            if chars <= INLINE_TOKENIZE_CHARS:
                tokens = tokenize(model.tokenizer, items, work.prompt, work.req.cut)
            else:
                executor = (self.short_tokenizer_executor if chars <= SHORT_TOKENIZE_CHARS
                            else self.tokenizer_executor)
                late: list[Tokenized] | None = None
                # A timeout cancels the work if it has not started; if it has, the thread
                # still skips it once the request's deadline passed or its client left.
                with contextlib.suppress(TimeoutError):
                    late = await asyncio.wait_for(loop.run_in_executor(
                        executor, _tokenize_unless_late, model.tokenizer, items, work.prompt,
                        work.req.cut, deadline, caller.is_gone), max(0.0, deadline - loop.time()))
                if late is None:
                    self.metrics.rejected.labels("timeout").inc()
                    raise self._timeout()
                tokens = late
            for i, tok in zip(misses, tokens, strict=True):
                work.used[i], work.original[i] = len(tok.ids), tok.original_tokens
                work.exact[i] = tok.exact
            caller.log.phases.append(Phase(
                "tokenize", tokenize_start, time.perf_counter(),
                {"edge_embed.inputs": len(items),
                 "edge_embed.tokens": sum(len(t.ids) for t in tokens)}))
            self._check_tokens(work)
            rows: list[I64] = [tok.ids for tok in tokens]
            job = engine.submit(rows, ticket, request_id=caller.log.request_id,
                                is_gone=caller.is_gone)
        try:
            pooled = await asyncio.wait_for(asyncio.shield(job.future),
                                            max(0.0, deadline - loop.time()))
        except TimeoutError:
            engine.drop(job, "timeout")
            self.metrics.rejected.labels("timeout").inc()
            raise self._timeout() from None
        except asyncio.CancelledError:
            engine.drop(job, "cancelled")
            raise
        caller.log.queue_ms = job.queue_s * 1000
        caller.log.inference_ms = job.inference_s * 1000
        _record_engine_phases(caller.log, job)
        work.vectors[misses] = model.finish(pooled, work.req.dimensions)

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(f"The request did not finish within {self.limits.timeout_s:g} s.")

    def _check_tokens(self, work: _Work) -> None:
        """The checks on token counts, over every input in order, cached or computed."""
        limit = work.served.model.manifest.max_tokens
        if not work.truncate:
            for i, (used, original) in enumerate(zip(work.used, work.original, strict=True)):
                if original > used:
                    raise InvalidRequest(
                        f"'{work.where(i)}' has {_count(original, work.exact[i])} tokens, over "
                        f"this model's limit of {limit}; shorten it or send "
                        f"{_CUT_HINT.get(work.req.field, 'truncate: true')} to have it cut.",
                        param=work.req.field, code="context_length_exceeded")
        total = sum(work.used)
        if total > self.limits.max_request_tokens:
            raise InvalidRequest(f"The request has {total} tokens; at most "
                                 f"{self.limits.max_request_tokens} are allowed per request.",
                                 param="input")

    # ---- the answer --------------------------------------------------------------------------
    def _result(self, work: _Work, log: RequestLog) -> EmbeddingResult:
        limit = work.served.model.manifest.max_tokens
        warnings = tuple(_truncation_warning(i, original, used, limit, exact)
                         for i, (used, original, exact) in enumerate(zip(
                             work.used, work.original, work.exact, strict=True))
                         if original > used)
        total = sum(work.used)
        model_id = work.served.id
        log.tokens, log.truncated = total, len(warnings)
        self.metrics.inputs.labels(model_id).inc(len(work.used))
        self.metrics.tokens.labels(model_id).inc(total)
        if warnings:
            self.metrics.truncated.labels(model_id).inc(len(warnings))
        manifest = work.served.model.manifest
        scale = (None if manifest.compact is None else
                 scale_for(manifest.compact.scale, manifest.dimensions, work.vectors.shape[1]))
        return EmbeddingResult(model_id, work.vectors, work.req.encoding_format, total, warnings,
                               work.req.compact, scale, work.req.embedding_types)


# How a request asks for over-long inputs to be cut, by the field its inputs come in.
_CUT_HINT = {"input": "truncate: true", "texts": "truncate: END or START"}


def prompt_for(req: EmbeddingRequest, manifest: Manifest) -> str:
    """What the request's input type puts before each text ("" for none)."""
    return manifest.prompts.get(req.input_type, "") if req.input_type else ""


def _record_engine_phases(log: RequestLog, job: Job) -> None:
    """The job's wait in the queue and each model run it took part in (a run may carry other
    requests' rows too: its batch size says so)."""
    if job.started is not None:
        log.phases.append(Phase("queue", job.submitted, job.started,
                                {"edge_embed.inputs": len(job.rows)}))
    for start, end, batch in job.runs:
        log.phases.append(Phase("inference", start, end, {"edge_embed.batch_size": batch}))


def tokenize(tokenizer: TextTokenizer, items: Sequence[TextInput], prompt: str,
             cut: CutSide = "end", *, detail: bool = False) -> list[Tokenized]:
    """Text with the input type's prompt, in one encode_batch; token ids as given, framed.
    The one tokenizing of a request: /tokenize counts with it too (`detail`: the encodings)."""
    texts = [(i, prompt + item) for i, item in enumerate(items) if isinstance(item, str)]
    out: list[Tokenized | None] = [None] * len(items)
    if texts:
        encoded = tokenizer.encode([t for _, t in texts], detail=detail, cut=cut,
                                   keep=len(prompt))
        for (i, _), tok in zip(texts, encoded, strict=True):
            out[i] = tok
    for i, item in enumerate(items):
        if not isinstance(item, str):
            out[i] = tokenizer.wrap_ids(item, cut)
    return [t for t in out if t is not None]


def _count(tokens: int, exact: bool) -> str:
    return str(tokens) if exact else f"at least {tokens}"


def _tokenize_unless_late(tokenizer: TextTokenizer, items: Sequence[TextInput], prompt: str,
                          cut: CutSide, deadline: float,
                          is_gone: Callable[[], bool]) -> list[Tokenized] | None:
    """`tokenize` in the tokenizer thread; None, at no cost, for a request already timed out
    (`deadline`: the event loop's clock, time.monotonic) or whose client went away."""
    if time.monotonic() >= deadline or is_gone():
        return None
    return tokenize(tokenizer, items, prompt, cut)


def _truncation_warning(index: int, original: int, used: int, limit: int,
                        exact: bool = True) -> dict[str, Any]:
    """`original_tokens` is exact up to the tokenizer's `count_cap`; past it, a lower bound and
    `original_tokens_exact` is false."""
    return {"index": index, "code": "input_truncated",
            "message": f"input {index} has {_count(original, exact)} tokens; it was cut to the "
                       f"model's limit of {limit} tokens (send truncate: false to get an error "
                       "instead).",
            "original_tokens": original, "original_tokens_exact": exact, "used_tokens": used}
