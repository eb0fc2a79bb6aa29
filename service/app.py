"""The aiohttp application: factory, routes, start-up and clean-up through aiohttp's own hooks.

State lives in `web.AppKey`s on the app (no globals), so tests build as many apps as they like.
`create_app(settings)` loads the bundles; pass `registry=` to reuse loaded ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from .. import __version__
from .auth import Authenticator, load_keys_file
from .cache import EmbeddingCache
from .cpus import plan_threads, usable_cpus
from .encoder import I64, TextTokenizer, Tokenized
from .engine import ModelEngine
from .errors import InvalidRequest, PayloadTooLarge, RequestTimeout
from .metrics import Metrics
from .middleware import (
    KEY_KEY,
    LOG_KEY,
    RequestLog,
    ServerState,
    make_gate_middleware,
    make_request_middleware,
)
from .models import Registry, ServedModel
from .openapi import openapi_spec
from .schema import TextInput, check_for_model, encode_response, parse_body, parse_request
from .settings import Settings

log = logging.getLogger("edge_embed.app")

TRUNCATED_HEADER = "X-Edge-Embed-Truncated"
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings", "/api/embeddings", "/api/v2/embeddings")
_JSON = "application/json"


@dataclass
class Runtime:
    """Threads and executors; sized so that intra-op threads x concurrent runs <= usable CPUs."""

    cpus: int
    intra_op_threads: int
    concurrent_runs: int
    tokenizer_threads: int
    model_executor: ThreadPoolExecutor | None = None
    tokenizer_executor: ThreadPoolExecutor | None = None
    started: float = field(default_factory=time.time)

    @classmethod
    def plan(cls, settings: Settings) -> Runtime:
        cpus = usable_cpus()
        threads, runs = plan_threads(cpus, settings.threads, settings.concurrent_runs)
        if threads * runs > cpus:
            log.warning("--threads %d x --concurrent-runs %d exceeds the %d usable CPUs; "
                        "runs will contend", threads, runs, cpus)
        return cls(cpus, threads, runs, settings.tokenizer_threads)

    def info(self) -> dict[str, Any]:
        return {"usable_cpus": self.cpus, "intra_op_threads": self.intra_op_threads,
                "concurrent_runs": self.concurrent_runs,
                "tokenizer_threads": self.tokenizer_threads}


SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", Metrics)
AUTH = web.AppKey("auth", Authenticator)
CACHE = web.AppKey("cache", EmbeddingCache)
STATE = web.AppKey("state", ServerState)
RUNTIME = web.AppKey("runtime", Runtime)


def build_authenticator(settings: Settings) -> Authenticator:
    keys: list[tuple[str, frozenset[str] | None]] = [(k, None) for k in settings.api_keys]
    if settings.api_keys_file is not None:
        keys += load_keys_file(settings.api_keys_file)
    return Authenticator(keys)


def create_app(settings: Settings, registry: Registry | None = None,
               runtime: Runtime | None = None,
               auth: Authenticator | None = None) -> web.Application:
    runtime = runtime or Runtime.plan(settings)
    if registry is None:
        options = settings.runtime_options(runtime.intra_op_threads)
        registry = Registry.load(settings.models, options)
    metrics = Metrics()
    state = ServerState()
    auth = auth or build_authenticator(settings)
    app = web.Application(
        middlewares=[make_request_middleware(metrics, state, settings.access_log),
                     make_gate_middleware(auth, state)],
        client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[AUTH] = auth
    app[CACHE] = EmbeddingCache(settings.cache_entries, settings.cache_bytes, settings.cache_ttl)
    app[STATE] = state
    app[RUNTIME] = runtime
    _cache_gauges(app)
    app.cleanup_ctx.append(_engines)
    for path in EMBEDDING_PATHS:
        app.router.add_post(path, embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/info", info)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi_view)
    return app


def _cache_gauges(app: web.Application) -> None:
    cache, registry = app[CACHE], app[METRICS].registry
    Gauge("edge_embed_cache_entries", "Vectors in the embedding cache",
          registry=registry).set_function(lambda: len(cache))
    Gauge("edge_embed_cache_bytes", "Bytes held by the embedding cache",
          registry=registry).set_function(lambda: cache.bytes)
    state = app[STATE]
    Gauge("edge_embed_inflight_requests", "HTTP requests being handled",
          registry=registry).set_function(lambda: state.inflight)


async def _engines(app: web.Application) -> AsyncIterator[None]:
    """Start-up: executors, one engine per model, warm-up. Clean-up: stop them in order."""
    settings, runtime, metrics = app[SETTINGS], app[RUNTIME], app[METRICS]
    idle = app[STATE].idle = asyncio.Event()
    idle.set()
    runtime.model_executor = ThreadPoolExecutor(runtime.concurrent_runs,
                                                thread_name_prefix="edge-embed-model")
    runtime.tokenizer_executor = ThreadPoolExecutor(runtime.tokenizer_threads,
                                                    thread_name_prefix="edge-embed-tokenize")
    engines: list[ModelEngine] = []
    for served in app[REGISTRY]:
        engine = ModelEngine(
            served.id, served.model, runtime.model_executor, metrics,
            batch_tokens=settings.batch_tokens, batch_inputs=settings.batch_inputs,
            queue_inputs=settings.queue_inputs, queue_tokens=settings.queue_tokens,
            workers=runtime.concurrent_runs, batch_delay_s=settings.batch_delay_ms / 1000,
            pad_multiple=settings.pad_multiple, arena_shrink=settings.arena_shrink,
            worker_restarts=settings.worker_restarts)
        served.engine = engine
        engine.start()
        engines.append(engine)
    try:
        for engine in engines:
            await engine.warmup()
        yield
    finally:
        for engine in engines:
            await engine.stop()
        runtime.model_executor.shutdown(wait=True)
        runtime.tokenizer_executor.shutdown(wait=True)


# ---- helpers ---------------------------------------------------------------------------------
def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (never read whole first)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is {limit}.",
                              param="body")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.",
                                  param="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _tokenize(tokenizer: TextTokenizer, items: Sequence[TextInput], prompt: str) -> list[Tokenized]:
    """Text with the input type's prompt, in one encode_batch; token ids as given, framed."""
    texts = [(i, prompt + item) for i, item in enumerate(items) if isinstance(item, str)]
    out: list[Tokenized | None] = [None] * len(items)
    if texts:
        for (i, _), tok in zip(texts, tokenizer.encode([t for _, t in texts]), strict=True):
            out[i] = tok
    for i, item in enumerate(items):
        if not isinstance(item, str):
            out[i] = tokenizer.wrap_ids(item)
    return [t for t in out if t is not None]


def _truncation_warning(index: int, tok: Tokenized | None, original: int, used: int,
                        limit: int) -> dict[str, Any]:
    return {"index": index, "code": "input_truncated",
            "message": f"input {index} has {original} tokens; it was cut to the model's limit "
                       f"of {limit} tokens (send truncate: false to get an error instead).",
            "original_tokens": original, "used_tokens": used}


# ---- routes ----------------------------------------------------------------------------------
async def embeddings(request: web.Request) -> web.Response:
    app = request.app
    settings, cache, metrics = app[SETTINGS], app[CACHE], app[METRICS]
    rlog: RequestLog = request[LOG_KEY]
    raw = await read_body(request, settings.max_body_bytes)
    req = parse_request(parse_body(raw), max_inputs=settings.max_inputs,
                        max_input_chars=settings.max_input_chars)
    served = app[REGISTRY].get(req.model)
    Authenticator.allow(request.get(KEY_KEY), served.names)
    model, manifest = served.model, served.model.manifest
    rlog.model = served.id
    rlog.inputs = len(req.inputs)
    check_for_model(req, manifest, model.tokenizer.vocab_size)
    truncate = settings.truncate if req.truncate is None else req.truncate
    prompt = manifest.prompts.get(req.input_type, "") if req.input_type else ""
    dims = req.dimensions if req.dimensions is not None else manifest.dimensions
    n = len(req.inputs)
    out = np.empty((n, dims), dtype=np.float32)
    used = [0] * n
    original = [0] * n
    use_cache = cache.enabled and not req.cache_control.no_cache
    misses: list[int] = []
    if use_cache:
        hits = 0
        for i, item in enumerate(req.inputs):
            entry = cache.get((served.id, req.input_type, dims, item))
            if entry is None:
                misses.append(i)
            else:
                hits += 1
                out[i] = entry.vector
                used[i], original[i] = entry.used_tokens, entry.original_tokens
        if hits:
            metrics.cache.labels("hit").inc(hits)
        if misses:
            metrics.cache.labels("miss").inc(len(misses))
        rlog.cache_hits = hits
    else:
        misses = list(range(n))
    if misses:
        await _compute(request, served, req.inputs, misses, prompt, truncate, out, used, original,
                       req.dimensions)
        if use_cache:
            ttl = req.cache_control.ttl
            for i in misses:
                item = req.inputs[i]
                cache.put((served.id, req.input_type, dims, item), out[i], used[i], original[i],
                          ttl=ttl, key_size=len(item) * (1 if isinstance(item, str) else 8))
    total = sum(used)
    if total > settings.max_request_tokens:
        raise InvalidRequest(f"The request has {total} tokens; at most "
                             f"{settings.max_request_tokens} are allowed per request.",
                             param="input")
    warnings = [_truncation_warning(i, None, original[i], used[i], manifest.max_tokens)
                for i in range(n) if original[i] > used[i]]
    rlog.tokens = total
    rlog.truncated = len(warnings)
    metrics.inputs.labels(served.id).inc(n)
    metrics.tokens.labels(served.id).inc(total)
    if warnings:
        metrics.truncated.labels(served.id).inc(len(warnings))
    body = encode_response(out, req.encoding_format, served.id, total, rlog.request_id, warnings)
    headers = {TRUNCATED_HEADER: str(len(warnings))}
    return web.Response(body=body, content_type=_JSON, headers=headers)


# English text averages 4-5 characters per WordPiece/BPE token; 4 errs towards counting more
# tokens, so a flood is refused early rather than late.
CHARS_PER_TOKEN_ESTIMATE = 4


def _estimate_tokens(items: Sequence[TextInput], limit: int) -> int:
    """Tokens the items will cost once tokenized and cut, estimated before tokenizing."""
    return sum(min(limit, (len(item) if not isinstance(item, str)
                           else len(item) // CHARS_PER_TOKEN_ESTIMATE) + 2) for item in items)


# Requests up to this many characters are tokenized on the event loop: a sentence or two
# encodes in ~20-40 us, less than the round trip through the tokenizer thread (executor future,
# call_soon_threadsafe, loop wake-up) that one-sentence requests at concurrency 1 would pay.
# Anything longer goes to the thread, so the loop never stalls on a big request.
INLINE_TOKENIZE_CHARS = 512


def _input_chars(items: Sequence[TextInput]) -> int:
    return sum(len(item) for item in items)


async def _compute(request: web.Request, served: ServedModel, inputs: Sequence[TextInput],
                   misses: list[int], prompt: str, truncate: bool, out: np.ndarray[Any, Any],
                   used: list[int], original: list[int], dimensions: int | None) -> None:
    """Tokenize (off the loop), queue on the engine, wait within the request's deadline."""
    app = request.app
    settings, runtime, rlog = app[SETTINGS], app[RUNTIME], request[LOG_KEY]
    engine = served.engine
    assert engine is not None and runtime.tokenizer_executor is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout
    items = [inputs[i] for i in misses]
    limit = served.model.manifest.max_tokens
    try:
        with engine.reserve(len(items), _estimate_tokens(items, limit)):
            if _input_chars(items) <= INLINE_TOKENIZE_CHARS:
                tokens = _tokenize(served.model.tokenizer, items, prompt)
            else:
                tokens = await asyncio.wait_for(loop.run_in_executor(
                    runtime.tokenizer_executor, _tokenize, served.model.tokenizer, items, prompt),
                    settings.request_timeout)
    except TimeoutError:
        raise RequestTimeout(f"The request did not finish within {settings.request_timeout:g} s."
                             ) from None
    single = len(inputs) == 1
    rows: list[I64] = []
    total = 0
    for i, tok in zip(misses, tokens, strict=True):
        if tok.truncated and not truncate:
            where = "input" if single else f"input[{i}]"
            raise InvalidRequest(
                f"'{where}' has {tok.original_tokens} tokens, over this model's limit of {limit}; "
                "shorten it or send truncate: true to have it cut.", param="input",
                code="context_length_exceeded")
        used[i], original[i] = len(tok.ids), tok.original_tokens
        total += len(tok.ids)
        rows.append(tok.ids)
    if total > settings.max_request_tokens:
        raise InvalidRequest(f"The request has {total} tokens; at most "
                             f"{settings.max_request_tokens} are allowed per request.",
                             param="input")
    transport = request.transport
    job = engine.submit(rows, request_id=rlog.request_id,
                        is_gone=lambda: transport is None or transport.is_closing())
    try:
        pooled = await asyncio.wait_for(asyncio.shield(job.future),
                                        max(0.0, deadline - loop.time()))
    except TimeoutError:
        engine.drop(job, "timeout")
        app[METRICS].rejected.labels("timeout").inc()
        raise RequestTimeout(f"The request did not finish within {settings.request_timeout:g} s."
                             ) from None
    except asyncio.CancelledError:
        engine.drop(job, "cancelled")
        raise
    rlog.queue_ms = job.queue_s * 1000
    rlog.inference_ms = job.inference_s * 1000
    out[misses] = served.model.finish(pooled, dimensions)


async def list_models(request: web.Request) -> web.Response:
    key = request.get(KEY_KEY)
    created = int(request.app[RUNTIME].started)
    data = [s.info(created) for s in request.app[REGISTRY]
            if Authenticator.may_use(key, s.names)]
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    served = request.app[REGISTRY].get(request.match_info["model"])
    Authenticator.allow(request.get(KEY_KEY), served.names)
    return _json(served.info(int(request.app[RUNTIME].started)))


def _model_health(served: ServedModel) -> dict[str, Any]:
    engine = served.engine
    status: dict[str, Any] = engine.health() if engine is not None else {"alive": False}
    p = served.model.providers
    status.update(provider=list(p.used), provider_fell_back=p.fell_back,
                  provider_message=p.message or None)
    return status


async def health(request: web.Request) -> web.Response:
    """Liveness: every engine's workers are running (a dead one means: restart the process)."""
    models = {s.id: _model_health(s) for s in request.app[REGISTRY]}
    alive = all(m["alive"] for m in models.values())
    faults = sum(int(m.get("faults", 0)) for m in models.values())
    status = "ok" if alive and not faults else ("degraded" if alive else "dead")
    return _json({"status": status, "models": models}, 200 if alive else 503)


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reasons: list[str] = []
    if state.draining:
        reasons.append("draining")
    for s in request.app[REGISTRY]:
        if s.engine is None or not s.engine.warmed:
            reasons.append(f"{s.id}: not warmed up")
        elif not s.engine.alive:
            reasons.append(f"{s.id}: engine dead")
    if reasons:
        return _json({"status": "not ready", "reasons": reasons}, 503)
    return _json({"status": "ready"})


async def info(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    return _json({
        "name": "edge-embed", "version": __version__, "limits": settings.limits(),
        "threads": app[RUNTIME].info(),
        "providers": {"requested": list(settings.providers),
                      "fallback_allowed": settings.provider_fallback,
                      "models": {s.id: _model_health(s)["provider"] for s in app[REGISTRY]},
                      "fell_back": {s.id: s.model.providers.message
                                    for s in app[REGISTRY] if s.model.providers.fell_back}},
        "models": [s.id for s in app[REGISTRY]],
        "auth": app[AUTH].enabled,
        "cache": {"enabled": app[CACHE].enabled, "entries": len(app[CACHE]),
                  "bytes": app[CACHE].bytes},
    })


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_view(request: web.Request) -> web.Response:
    return _json(openapi_spec(request.app[SETTINGS]))
