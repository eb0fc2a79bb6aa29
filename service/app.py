"""The aiohttp application: factory, routes, start-up and clean-up through aiohttp's own hooks.

The wiring and HTTP only: the embeddings request flow is service/embeddings.py (this module
reads the body and writes its result). State lives in `web.AppKey`s on the app (no globals), so
tests build as many apps as they like; the clean-up context `_engines` creates, owns and stops
the executors, the engines and the request path. `create_app(settings)` loads the bundles; pass
`registry=` to reuse loaded ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from edge_embed.core import canary, memory
from edge_embed.core.cpus import plan_lone_threads, plan_threads, usable_cpus

from .. import __version__
from .address import is_loopback
from .auth import Authenticator, check_flag_keys, load_keys_file
from .cache import EmbeddingCache
from .cohere import ApiVersion, cohere_body, cohere_error, parse_cohere
from .connections import ConnectionGuard
from .docs import add_routes as add_docs_routes
from .embeddings import INLINE_TOKENIZE_CHARS, Caller, EmbeddingsPath, prompt_for, tokenize
from .engine import Engines, InFlight, ModelEngine
from .errors import (
    ClientGone,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    TracingUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from .metrics import Metrics
from .middleware import (
    API_KEY,
    LOG_KEY,
    ServerState,
    authenticate,
    make_gate_middleware,
    make_request_middleware,
)
from .models import Registry, ServedModel
from .openapi import openapi_spec
from .rerank import RERANK_PATHS, RerankPath, parse_rerank
from .schema import parse_request
from .settings import Settings
from .tokenize import check as check_tokenize
from .tokenize import detokenize, parse_detokenize, parse_tokenize, pick_model, tokenize_body

if TYPE_CHECKING:  # imported at run time only when --otlp-endpoint is given
    from .tracing import Tracing

log = logging.getLogger("edge_embed.app")
T = TypeVar("T")

TRUNCATED_HEADER = "X-Edge-Embed-Truncated"
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings", "/api/embeddings", "/api/v2/embeddings")
# vLLM's and llama.cpp's name, and text-embeddings-inference's
DETOKENIZE_PATHS = ("/detokenize", "/decode")
_JSON = "application/json"


@dataclass(frozen=True)
class Runtime:
    """The thread plan; sized so that intra-op threads x concurrent runs <= usable CPUs."""

    cpus: int
    intra_op_threads: int
    concurrent_runs: int
    tokenizer_threads: int
    # Threads of the session a run alone in flight takes; None: every run on the one session.
    lone_threads: int | None = None
    started: float = field(default_factory=time.time)

    @classmethod
    def plan(cls, settings: Settings) -> Runtime:
        cpus = usable_cpus()
        threads, runs = plan_threads(cpus, settings.threads, settings.concurrent_runs)
        if threads * runs > cpus:
            log.warning("--threads %d x --concurrent-runs %d exceeds the %d usable CPUs; "
                        "runs will contend", threads, runs, cpus)
        lone = plan_lone_threads(cpus, threads, settings.lone_threads)
        return cls(cpus, threads, runs, settings.tokenizer_threads, lone)

    def info(self) -> dict[str, Any]:
        return {"usable_cpus": self.cpus, "intra_op_threads": self.intra_op_threads,
                "concurrent_runs": self.concurrent_runs,
                "lone_run_threads": self.lone_threads or self.intra_op_threads,
                "tokenizer_threads": self.tokenizer_threads}


SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", Metrics)
AUTH = web.AppKey("auth", Authenticator)
CACHE = web.AppKey("cache", EmbeddingCache)
STATE = web.AppKey("state", ServerState)
RUNTIME = web.AppKey("runtime", Runtime)
# What serve.py's listener wraps aiohttp's protocol in (service/connections.py).
CONNECTIONS = web.AppKey("connections", ConnectionGuard)
# Set by the `_engines` clean-up context, which owns them: present while the app runs.
ENGINES = web.AppKey("engines", Engines)
EMBEDDINGS = web.AppKey("embeddings", EmbeddingsPath)
RERANK = web.AppKey("rerank", RerankPath)
# Each model's canary check (core/canary.py), made at warm-up.
CANARIES = web.AppKey("canaries", dict[str, canary.CanaryReport])


def build_authenticator(settings: Settings) -> Authenticator:
    """The keys of --api-key and --api-keys-file; an unusable one is refused (ApiKeyError)."""
    check_flag_keys(settings.api_keys)
    keys: list[tuple[str, frozenset[str] | None]] = [(k, None) for k in settings.api_keys]
    if settings.api_keys_file is not None:
        keys += load_keys_file(settings.api_keys_file)
    return Authenticator(keys)


def create_app(settings: Settings, registry: Registry | None = None,
               runtime: Runtime | None = None,
               auth: Authenticator | None = None) -> web.Application:
    tracing = _tracing(settings)  # first: a missing extra is refused before bundles load
    if auth is None:  # before the bundles too: a bad key is refused at once
        auth = build_authenticator(settings)
    runtime = runtime or Runtime.plan(settings)
    if registry is None:
        options = settings.runtime_options(runtime.intra_op_threads, runtime.lone_threads)
        registry = Registry.load(settings.models, options, settings.verify_files)
    metrics = Metrics()
    state = ServerState()
    connections = ConnectionGuard(settings.connections, metrics.dropped_connections)
    middlewares = [connections.middleware(),
                   make_request_middleware(metrics, state, settings.access_log),
                   make_gate_middleware(auth, state)]
    if tracing is not None:  # outermost: its span covers everything the others do
        middlewares.insert(0, tracing.middleware())
    app = web.Application(middlewares=middlewares,
                          client_max_size=settings.requests.max_body_bytes)
    if tracing is not None:
        app.on_cleanup.append(tracing.shutdown)
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[AUTH] = auth
    app[CACHE] = EmbeddingCache(settings.cache)
    app[STATE] = state
    app[RUNTIME] = runtime
    app[CONNECTIONS] = connections
    app[CANARIES] = {}
    _cache_gauges(app)
    app.cleanup_ctx.append(_engines)
    for path in EMBEDDING_PATHS:
        app.router.add_post(path, embeddings)
    app.router.add_post("/v2/embed", partial(cohere_embed, version="2"))
    app.router.add_post("/v1/embed", partial(cohere_embed, version="1"))
    app.router.add_post("/tokenize", tokenize_view)
    for path in DETOKENIZE_PATHS:
        app.router.add_post(path, detokenize_view)
    for path in RERANK_PATHS:
        app.router.add_post(path, rerank)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/info", info)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi_view)
    if settings.docs:
        add_docs_routes(app)
    return app


def _tracing(settings: Settings) -> Tracing | None:
    """The OpenTelemetry middleware's owner when --otlp-endpoint is set; None (and nothing of
    opentelemetry imported) otherwise."""
    if settings.otlp_endpoint is None:
        return None
    try:
        from .tracing import Tracing
    except ImportError as exc:
        raise TracingUnavailable(exc.name or str(exc)) from None
    log.info("traces: OTLP/HTTP to %s", settings.otlp_endpoint)
    return Tracing(settings.otlp_endpoint)


def _cache_gauges(app: web.Application) -> None:
    cache, registry = app[CACHE], app[METRICS].registry
    Gauge("edge_embed_cache_entries", "Vectors in the embedding cache",
          registry=registry).set_function(lambda: len(cache))
    Gauge("edge_embed_cache_bytes", "Bytes held by the embedding cache",
          registry=registry).set_function(lambda: cache.bytes)
    state = app[STATE]
    Gauge("edge_embed_inflight_requests", "HTTP requests being handled",
          registry=registry).set_function(lambda: state.inflight)
    connections = app[CONNECTIONS]
    Gauge("edge_embed_open_connections", "Open client connections",
          registry=registry).set_function(lambda: connections.open)


async def _engines(app: web.Application) -> AsyncIterator[None]:
    """Start-up: executors, one engine per model, the request path, warm-up. Clean-up: stop
    the engines, then the executors they run on."""
    settings, runtime, metrics = app[SETTINGS], app[RUNTIME], app[METRICS]
    idle = app[STATE].idle = asyncio.Event()
    idle.set()
    model_executor = ThreadPoolExecutor(runtime.concurrent_runs,
                                        thread_name_prefix="edge-embed-model")
    tokenizer_executor = ThreadPoolExecutor(runtime.tokenizer_threads,
                                            thread_name_prefix="edge-embed-tokenize")
    # Short requests' own lane: never queued behind long documents (service/embeddings.py).
    short_tokenizer_executor = ThreadPoolExecutor(1, thread_name_prefix="edge-embed-tokenize-s")
    parse_executor = ThreadPoolExecutor(1, thread_name_prefix="edge-embed-parse")
    engines = Engines()
    in_flight = InFlight()
    for served in app[REGISTRY]:
        engine = ModelEngine(
            served.id, served.model, model_executor, metrics, batching=settings.batching,
            queue=settings.queue, workers=runtime.concurrent_runs,
            arena_shrink=settings.arena_shrink, worker_restarts=settings.worker_restarts,
            in_flight=in_flight)
        engines[served.id] = engine
        engine.start()
    app[ENGINES] = engines
    app[EMBEDDINGS] = EmbeddingsPath(app[REGISTRY], engines, app[CACHE], metrics,
                                     settings.requests, tokenizer_executor,
                                     short_tokenizer_executor, parse_executor)
    app[RERANK] = RerankPath(app[REGISTRY], engines, metrics, settings.requests,
                             tokenizer_executor, short_tokenizer_executor, parse_executor)
    loop = asyncio.get_running_loop()
    lone_sessions: list[asyncio.Future[None]] = []
    try:
        # Canaries first: the warm-up's last run then leaves the arena as it found the model.
        for served in app[REGISTRY]:
            report = await _check_canaries(served, model_executor, settings.canary_failure)
            app[CANARIES][served.id] = report
            if report.agreement is not None:
                metrics.canary_agreement.labels(served.id).set(report.agreement)
                metrics.canary_gate.labels(served.id).set(report.gate or 0.0)
            metrics.canary_failed.labels(served.id).set(float(report.status == "failed-serving"))
        for engine in engines.values():
            await engine.warmup()
        # What loading and warming up freed, handed back before the first request.
        memory.trim()
        # After warm-up, not before /ready: until a model's lone session is built, every run
        # takes its side-by-side one.
        lone_sessions = [loop.run_in_executor(None, _complete_sessions, s)
                         for s in app[REGISTRY]]
        yield
    finally:
        for engine in engines.values():
            await engine.stop()
        for built in lone_sessions:
            with contextlib.suppress(Exception):
                await built
        model_executor.shutdown(wait=True)
        # Tokenizing not yet started belongs to requests that are gone by now: dropped, not
        # waited for.
        for executor in (tokenizer_executor, short_tokenizer_executor, parse_executor):
            executor.shutdown(wait=False, cancel_futures=True)


async def _check_canaries(served: ServedModel, executor: ThreadPoolExecutor,
                          on_failure: canary.CanaryFailure) -> canary.CanaryReport:
    """The bundle's canaries embedded here, judged against its gate (may raise CanaryFailed)."""
    model = served.model
    canaries = canary.load(model.folder, model.manifest)
    if canaries is None:
        log.info("canaries %s: absent (the bundle was built without them)", served.id)
        return canary.CanaryReport("absent")
    loop = asyncio.get_running_loop()
    measured = await loop.run_in_executor(executor, canary.measure, model, canaries)
    return canary.check_gate(model.folder, model.manifest, measured, on_failure)


# ---- helpers ---------------------------------------------------------------------------------
def _complete_sessions(served: ServedModel) -> None:
    try:
        served.model.sessions.complete()
    except Exception:  # the side-by-side session still serves every run
        log.exception("could not build the lone session of %s; every run takes the "
                      "side-by-side session", served.id)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON)


def require_json(request: web.Request) -> None:
    """415 unless the body is declared JSON (parameters such as charset allowed): a form or
    text/plain POST, which a web page may send cross-site without a preflight, is refused."""
    if request.content_type != _JSON:
        sent = request.headers.get("Content-Type", "")
        raise UnsupportedMediaType(
            f"Content-Type must be {_JSON}, got {sent[:100]!r}." if sent
            else f"Content-Type must be {_JSON}; the request has none.", param="Content-Type")


async def read_body(request: web.Request, limit: int, timeout_s: float,
                    started: float) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (never read whole first), and
    with 408 (the connection closed) unless all of it arrives within `timeout_s` of `started`
    (the loop's clock): a client trickling its body holds a request slot that long at most."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The request body is {length} bytes; the limit is {limit}.",
                              param="body")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout_at(started + timeout_s):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.",
                                          param="body")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s "
                             f"({size} bytes came).", param="body",
                             headers={"Connection": "close"}) from None
    except ConnectionResetError:  # aiohttp's word for a client that left mid-body
        raise ClientGone("The client closed the connection while sending the body.") from None
    return b"".join(chunks)


# ---- routes ----------------------------------------------------------------------------------
async def _read(request: web.Request, shape: Callable[[Any], T]) -> tuple[T, float]:
    """The body, as `shape` parses it, and when the request arrived (the loop's clock)."""
    app = request.app
    started = asyncio.get_running_loop().time()
    settings = app[SETTINGS]
    require_json(request)
    path = app[EMBEDDINGS]
    with path.bodies.hold(request.content_length):  # a 429 before a large body is read
        raw = await read_body(request, settings.requests.max_body_bytes,
                              settings.connections.body_timeout_s, started)
        return await path.parse(raw, shape), started


def _limits(request: web.Request) -> dict[str, int]:
    limits = request.app[SETTINGS].requests
    return {"max_inputs": limits.max_inputs, "max_input_chars": limits.max_input_chars}


def _caller(request: web.Request, started: float) -> Caller:
    transport = request.transport
    return Caller(key=request.get(API_KEY), log=request[LOG_KEY], started=started,
                  is_gone=lambda: transport is None or transport.is_closing())


async def embeddings(request: web.Request) -> web.Response:
    req, started = await _read(request, partial(parse_request, **_limits(request)))
    result = await request.app[EMBEDDINGS](req, _caller(request, started))
    return web.Response(body=result.body(request[LOG_KEY].request_id), content_type=_JSON,
                        headers={TRUNCATED_HEADER: str(len(result.warnings))})


async def rerank(request: web.Request) -> web.Response:
    """The rerank routes (service/rerank.py): the body's shape is told by route and fields."""
    limits = request.app[SETTINGS].requests
    req, started = await _read(request, partial(
        parse_rerank, path=request.path, max_documents=limits.max_rerank_documents,
        max_chars=limits.max_input_chars))
    result = await request.app[RERANK](req, _caller(request, started))
    return web.Response(body=result.body(request[LOG_KEY].request_id), content_type=_JSON,
                        headers={TRUNCATED_HEADER: str(len(result.warnings))})


async def cohere_embed(request: web.Request, version: ApiVersion) -> web.Response:
    """Cohere's embed (service/cohere.py) over the embeddings request path."""
    req, started = await _read(request, partial(parse_cohere, version=version,
                                                **_limits(request)))
    # the input type names a prompt of the model's; an unknown or hidden model is the path's 404
    served = request.app[REGISTRY].find(req.request.model)
    asked = req.for_prompts(served.model.manifest.prompts if served is not None else {})
    try:
        result = await request.app[EMBEDDINGS](asked, _caller(request, started))
    except InvalidRequest as exc:
        raise cohere_error(exc) from None
    return web.Response(body=cohere_body(req, result, request[LOG_KEY].request_id),
                        content_type=_JSON,
                        headers={TRUNCATED_HEADER: str(len(result.warnings))})


async def tokenize_view(request: web.Request) -> web.Response:
    """/tokenize (service/tokenize.py): the embeddings path's own tokenizing, in TEI's or
    vLLM's shape."""
    req, _ = await _read(request, partial(parse_tokenize, **_limits(request)))
    app = request.app
    served = pick_model(app[REGISTRY], req.model,
                        partial(Authenticator.may_use, request.get(API_KEY)))
    request[LOG_KEY].model, request[LOG_KEY].inputs = served.id, len(req.texts)
    prompt = prompt_for(check_tokenize(req, served), served.model.manifest)
    work = partial(tokenize, served.model.tokenizer, req.texts, prompt, detail=req.shape == "tei")
    if sum(len(t) for t in req.texts) <= INLINE_TOKENIZE_CHARS:
        tokens = work()
    else:
        tokens = await asyncio.get_running_loop().run_in_executor(
            app[EMBEDDINGS].tokenizer_executor, work)
    body, cut = tokenize_body(req, served, tokens, prompt)
    return web.Response(body=body, content_type=_JSON, headers={TRUNCATED_HEADER: str(cut)})


async def detokenize_view(request: web.Request) -> web.Response:
    req, _ = await _read(request, partial(parse_detokenize, **_limits(request)))
    served = pick_model(request.app[REGISTRY], req.model,
                        partial(Authenticator.may_use, request.get(API_KEY)))
    request[LOG_KEY].model = served.id
    return web.Response(body=detokenize(req, served.model.tokenizer), content_type=_JSON)


async def list_models(request: web.Request) -> web.Response:
    key = request.get(API_KEY)
    created = int(request.app[RUNTIME].started)
    canaries = request.app[CANARIES]
    data = [s.info(created, _canary_json(canaries, s.id)) for s in request.app[REGISTRY]
            if Authenticator.may_use(key, s.names)]
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    served = request.app[REGISTRY].get(request.match_info["model"],
                                        partial(Authenticator.may_use, request.get(API_KEY)))
    return _json(served.info(int(request.app[RUNTIME].started),
                             _canary_json(request.app[CANARIES], served.id)))


def _canary_json(reports: dict[str, canary.CanaryReport], model_id: str) -> dict[str, Any] | None:
    report = reports.get(model_id)
    return None if report is None else report.to_json()


def _model_health(app: web.Application, served: ServedModel) -> dict[str, Any]:
    engine = app[ENGINES].get(served.id)
    status: dict[str, Any] = engine.health() if engine is not None else {"alive": False}
    p = served.model.providers
    status.update(provider=list(p.used), provider_fell_back=p.fell_back,
                  provider_message=p.message or None,
                  canary=_canary_json(app[CANARIES], served.id), warnings=served.warnings())
    return status


def auth_warning(settings: Settings, auth: Authenticator) -> str | None:
    """What to say when anyone who reaches the server may use it, or None."""
    if auth.enabled or is_loopback(settings.host):
        return None
    return (f"no API keys are configured and the server listens on {settings.host}: anyone "
            "who can reach it may use it; set --api-key or --api-keys-file")


async def health(request: web.Request) -> web.Response:
    """Liveness: every engine's workers are running (a dead one means: restart the process).

    A model served although its canaries failed (--canary-failure serve) makes the status
    "failed-serving": alive, and loud about it. With auth on, a caller without a key (a probe)
    or with a wrong key gets the status alone; the detail (models, faults) goes to a key, for
    its own models."""
    app = request.app
    auth = app[AUTH]
    try:  # a probe sends no key; a wrong one is answered as a probe, never failed
        key = authenticate(request, auth)
    except Unauthorized:
        key = None
    models = {s.id: _model_health(app, s) for s in app[REGISTRY]}
    alive = all(m["alive"] for m in models.values())
    faults = sum(int(m.get("faults", 0)) for m in models.values())
    failed = any((m.get("canary") or {}).get("status") == "failed-serving"
                 for m in models.values())
    status = ("dead" if not alive else "failed-serving" if failed
              else "degraded" if faults else "ok")
    code = 200 if alive else 503
    if auth.enabled and key is None:
        return _json({"status": status}, code)
    body: dict[str, Any] = {"status": status, "auth": "on" if auth.enabled else "off",
                            "models": {s.id: models[s.id] for s in app[REGISTRY]
                                       if Authenticator.may_use(key, s.names)}}
    warning = auth_warning(app[SETTINGS], auth)
    if warning is not None:
        body["warnings"] = [warning]
    return _json(body, code)


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reasons: list[str] = []
    if state.draining:
        reasons.append("draining")
    engines = request.app[ENGINES]
    for s in request.app[REGISTRY]:
        engine = engines.get(s.id)
        if engine is None or not engine.warmed:
            reasons.append(f"{s.id}: not warmed up")
        elif not engine.alive:
            reasons.append(f"{s.id}: engine dead")
    if reasons:
        return _json({"status": "not ready", "reasons": reasons}, 503)
    return _json({"status": "ready"})


async def info(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    key = request.get(API_KEY)
    served = [s for s in app[REGISTRY] if Authenticator.may_use(key, s.names)]
    return _json({
        "name": "edge-embed", "version": __version__, "limits": settings.limits(),
        "threads": app[RUNTIME].info(),
        "providers": {"requested": list(settings.providers),
                      "fallback_allowed": settings.provider_fallback,
                      "models": {s.id: list(s.model.providers.used) for s in served},
                      "fell_back": {s.id: s.model.providers.message
                                    for s in served if s.model.providers.fell_back}},
        "models": [s.id for s in served],
        "auth": app[AUTH].enabled,
        "cache": {"enabled": app[CACHE].enabled, "entries": len(app[CACHE]),
                  "bytes": app[CACHE].bytes},
    })


async def metrics_view(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_view(request: web.Request) -> web.Response:
    """The document for this caller: the models its key may use (service/openapi.py)."""
    key, settings = request.get(API_KEY), request.app[SETTINGS]
    models = [s for s in request.app[REGISTRY] if Authenticator.may_use(key, s.names)]
    return _json(openapi_spec(settings, models, docs=settings.docs))
