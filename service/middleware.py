"""Middlewares: request id, errors in the OpenAI shape, access log and metrics; drain and auth.

Every failure leaves here as `{"error": {message, type, param, code}}`: client mistakes as the
right 4xx, aiohttp's own 404/405/413 converted, and anything unexpected as a 500 whose message
carries the request id that the log line carries too. No traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .auth import OPEN_PATHS, ApiKey, Authenticator
from .errors import (
    ApiError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from .metrics import Metrics

log = logging.getLogger("edge_embed.app")
access_log = logging.getLogger("edge_embed.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Request-Id"
_MAX_CLIENT_REQUEST_ID = 128  # a longer client-sent id is replaced by our own


@dataclass(frozen=True)
class Phase:
    """A timed step of a request (tokenize, queue, a model run): perf_counter seconds. What a
    trace shows as the request's child spans (service/tracing.py)."""

    name: str
    start: float
    end: float
    attributes: dict[str, str | int | float] = field(default_factory=dict)


@dataclass
class RequestLog:
    """What the access log line says about one request; handlers fill it in."""

    request_id: str
    model: str | None = None
    inputs: int = 0
    tokens: int = 0
    truncated: int = 0
    cache_hits: int = 0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    error: str | None = None
    phases: list[Phase] = field(default_factory=list)


@dataclass
class ServerState:
    draining: bool = False
    inflight: int = 0
    idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.inflight += 1
        if self.idle is not None:
            self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self.idle is not None:
            self.idle.set()


LOG_KEY = web.RequestKey("log", RequestLog)
API_KEY = web.RequestKey("api_key", ApiKey)  # set only when keys are configured


def error_response(error: ApiError, request_id: str) -> web.Response:
    headers = {**error.headers, REQUEST_ID_HEADER: request_id}
    return web.Response(status=error.status, body=orjson.dumps(error.body()),
                        content_type="application/json", headers=headers)


def _from_http(exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return NotFound("Unknown path; see /openapi.json for the API.", param="path")
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return MethodNotAllowed(f"Method not allowed here; allowed: {allow}.",
                                headers={"Allow": allow} if allow else {})
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large.", param="body")
    error = ApiError(exc.reason or "HTTP error", code=None)
    error.status = exc.status
    error.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return error


def make_request_middleware(metrics: Metrics, state: ServerState,
                            log_requests: bool) -> Any:
    requests, seconds = metrics.requests, metrics.request_seconds

    @web.middleware
    async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        rid = sent if 0 < len(sent) <= _MAX_CLIENT_REQUEST_ID and sent.isprintable() \
            else uuid.uuid4().hex
        rlog = RequestLog(rid)
        request[LOG_KEY] = rlog
        state.enter()
        try:
            try:
                response = await handler(request)
                response.headers[REQUEST_ID_HEADER] = rid
            except ApiError as exc:
                rlog.error = exc.code
                response = error_response(exc, rid)
            except web.HTTPException as exc:
                api = _from_http(exc)
                rlog.error = api.code
                response = error_response(api, rid)
            except asyncio.CancelledError:
                rlog.error = "client_closed_request"
                _finish(request, rlog, 499, start, requests, seconds, log_requests)
                raise
            except Exception:
                # A real fault: the log gets the traceback, the client the request id only.
                log.exception("unhandled error in %s %s (request id %s)", request.method,
                              request.path, rid)
                rlog.error = "internal_error"
                response = error_response(InternalError(
                    f"The server had an error processing this request; request id {rid}.",
                    extra={"request_id": rid}), rid)
            _finish(request, rlog, response.status, start, requests, seconds, log_requests)
            return response
        finally:
            state.leave()

    return request_middleware


def _finish(request: web.Request, rlog: RequestLog, status: int, start: float,
            requests: Any, seconds: Any, log_requests: bool) -> None:
    elapsed = time.perf_counter() - start
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    requests.labels(route, str(status)).inc()
    seconds.labels(route).observe(elapsed)
    if log_requests:
        line: dict[str, Any] = {
            "ts": round(time.time(), 3), "request_id": rlog.request_id,
            "method": request.method, "path": request.path, "status": status,
            "ms": round(elapsed * 1000, 3)}
        if rlog.model is not None:
            line.update(model=rlog.model, inputs=rlog.inputs, tokens=rlog.tokens,
                        truncated=rlog.truncated, cache_hits=rlog.cache_hits,
                        queue_ms=round(rlog.queue_ms, 3),
                        inference_ms=round(rlog.inference_ms, 3))
        if rlog.error:
            line["error"] = rlog.error
        access_log.info(orjson.dumps(line).decode())


def authenticate(request: web.Request, auth: Authenticator) -> ApiKey | None:
    """The request's key (kept on the request), or 401; None when auth is off."""
    key = auth.check(request.headers.get("Authorization"))
    if key is not None:
        request[API_KEY] = key
    return key


def make_gate_middleware(auth: Authenticator, state: ServerState) -> Any:
    """Draining (503) first, then the API key; the probes and /metrics stay open."""

    @web.middleware
    async def gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if state.draining:
            raise Unavailable("The server is shutting down; retry on another instance.",
                              headers={"Retry-After": "1", "Connection": "close"})
        authenticate(request, auth)
        return await handler(request)

    return gate_middleware
