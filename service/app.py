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
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from .. import __version__
from . import canary
from .auth import Authenticator, load_keys_file
from .cache import EmbeddingCache
from .cpus import plan_lone_threads, plan_threads, usable_cpus
from .embeddings import Caller, EmbeddingsPath
from .engine import Engines, InFlight, ModelEngine
from .errors import PayloadTooLarge, TracingUnavailable
from .metrics import Metrics
from .middleware import (
    KEY_KEY,
    LOG_KEY,
    ServerState,
    make_gate_middleware,
    make_request_middleware,
)
from .models import Registry, ServedModel
from .openapi import openapi_spec
from .settings import Settings

if TYPE_CHECKING:  # imported at run time only when --otlp-endpoint is given
    from .tracing import Tracing

log = logging.getLogger("edge_embed.app")

TRUNCATED_HEADER = "X-Edge-Embed-Truncated"
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings", "/api/embeddings", "/api/v2/embeddings")
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
# Set by the `_engines` clean-up context, which owns them: present while the app runs.
ENGINES = web.AppKey("engines", Engines)
EMBEDDINGS = web.AppKey("embeddings", EmbeddingsPath)
# Each model's canary check (service/canary.py), made at warm-up.
CANARIES = web.AppKey("canaries", dict[str, canary.CanaryReport])


def build_authenticator(settings: Settings) -> Authenticator:
    keys: list[tuple[str, frozenset[str] | None]] = [(k, None) for k in settings.api_keys]
    if settings.api_keys_file is not None:
        keys += load_keys_file(settings.api_keys_file)
    return Authenticator(keys)


def create_app(settings: Settings, registry: Registry | None = None,
               runtime: Runtime | None = None,
               auth: Authenticator | None = None) -> web.Application:
    tracing = _tracing(settings)  # first: a missing extra is refused before bundles load
    runtime = runtime or Runtime.plan(settings)
    if registry is None:
        options = settings.runtime_options(runtime.intra_op_threads, runtime.lone_threads)
        registry = Registry.load(settings.models, options, settings.verify_files)
    metrics = Metrics()
    state = ServerState()
    auth = auth or build_authenticator(settings)
    middlewares = [make_request_middleware(metrics, state, settings.access_log),
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
    app[CANARIES] = {}
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
    loop = asyncio.get_running_loop()
    lone_sessions: list[asyncio.Future[None]] = []
    try:
        for engine in engines.values():
            await engine.warmup()
        for served in app[REGISTRY]:
            report = await _check_canaries(served, model_executor, settings.canary_failure)
            app[CANARIES][served.id] = report
            if report.agreement is not None:
                metrics.canary_agreement.labels(served.id).set(report.agreement)
                metrics.canary_gate.labels(served.id).set(report.gate or 0.0)
            metrics.canary_failed.labels(served.id).set(float(report.status == "failed-serving"))
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
    return canary.judge(model.folder, model.manifest, measured, on_failure)


# ---- helpers ---------------------------------------------------------------------------------
def _complete_sessions(served: ServedModel) -> None:
    try:
        served.model.sessions.complete()
    except Exception:  # the side-by-side session still serves every run
        log.exception("could not build the lone session of %s; every run takes the "
                      "side-by-side session", served.id)


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


# ---- routes ----------------------------------------------------------------------------------
async def embeddings(request: web.Request) -> web.Response:
    app = request.app
    started = asyncio.get_running_loop().time()
    path = app[EMBEDDINGS]
    with path.bodies.hold(request.content_length):  # a 503 before a large body is read
        req = await path.parse(await read_body(request, app[SETTINGS].requests.max_body_bytes))
    transport = request.transport
    rlog = request[LOG_KEY]
    result = await path(req, Caller(
        key=request.get(KEY_KEY), log=rlog, started=started,
        is_gone=lambda: transport is None or transport.is_closing()))
    return web.Response(body=result.body(rlog.request_id), content_type=_JSON,
                        headers={TRUNCATED_HEADER: str(len(result.warnings))})


async def list_models(request: web.Request) -> web.Response:
    key = request.get(KEY_KEY)
    created = int(request.app[RUNTIME].started)
    canaries = request.app[CANARIES]
    data = [s.info(created, _canary_json(canaries, s.id)) for s in request.app[REGISTRY]
            if Authenticator.may_use(key, s.names)]
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    served = request.app[REGISTRY].get(request.match_info["model"])
    Authenticator.allow(request.get(KEY_KEY), served.names)
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


async def health(request: web.Request) -> web.Response:
    """Liveness: every engine's workers are running (a dead one means: restart the process).

    A model served although its canaries failed (--canary-failure serve) makes the status
    "failed-serving": alive, and loud about it."""
    models = {s.id: _model_health(request.app, s) for s in request.app[REGISTRY]}
    alive = all(m["alive"] for m in models.values())
    faults = sum(int(m.get("faults", 0)) for m in models.values())
    failed = any((m.get("canary") or {}).get("status") == "failed-serving"
                 for m in models.values())
    status = ("dead" if not alive else "failed-serving" if failed
              else "degraded" if faults else "ok")
    return _json({"status": status, "models": models}, 200 if alive else 503)


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
    return _json({
        "name": "edge-embed", "version": __version__, "limits": settings.limits(),
        "threads": app[RUNTIME].info(),
        "providers": {"requested": list(settings.providers),
                      "fallback_allowed": settings.provider_fallback,
                      "models": {s.id: list(s.model.providers.used) for s in app[REGISTRY]},
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
