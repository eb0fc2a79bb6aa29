"""OpenTelemetry traces over OTLP/HTTP, when the server is started with --otlp-endpoint.

Imported only then (service/app.py imports it inside `create_app`): without the flag nothing of
opentelemetry is imported. Each HTTP request is a server span (a child of the caller's W3C
`traceparent`); an embeddings request gets child spans built when it ends from the timings the
request path recorded (`RequestLog.phases`): `tokenize`, `queue` and one `inference` span per
model run it took part in, with that run's real start and end and `edge_embed.batch_size`. A
span per request rather than one per shared run, which would sit in a trace of its own: each
request's waterfall stays whole.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import __version__
from .middleware import LOG_KEY, Handler, Phase, RequestLog

# The OTLP/HTTP path of traces: appended to a collector's base URL (the OTLP convention for
# OTEL_EXPORTER_OTLP_ENDPOINT), kept when the URL already names it.
TRACES_PATH = "/v1/traces"
# Per export to the collector, retries included: a collector that does not answer within it
# loses that batch of spans rather than holding the server. It also bounds the final flush at
# shutdown: after the 20 s drain, 5 s more stays inside Kubernetes' 30 s grace.
EXPORT_TIMEOUT_S = 5.0


def traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


class Tracing:
    """A tracer provider of its own (not the process-global one: tests build many apps) that
    batches spans to the collector; `shutdown` flushes what is left."""

    def __init__(self, endpoint: str) -> None:
        self.url = traces_url(endpoint)
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": "edge-embed", "service.version": __version__}))
        exporter = OTLPSpanExporter(endpoint=self.url, timeout=EXPORT_TIMEOUT_S)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("edge_embed.service", __version__)
        self.propagator = TraceContextTextMapPropagator()

    def middleware(self) -> Any:
        tracer, propagator = self.tracer, self.propagator

        @web.middleware
        async def tracing_middleware(request: web.Request,
                                     handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            parent = propagator.extract(dict(request.headers))
            # One reading of both clocks per request: the phases are perf_counter readings, and
            # converting each with its own reading would let a child start a few ns before its
            # parent or end after it. The server span is timed on the same base.
            clock = _Clock()
            with tracer.start_as_current_span(
                    f"{request.method} {route}", context=parent, kind=SpanKind.SERVER,
                    start_time=clock.wall0, end_on_exit=False,
                    attributes={"http.request.method": request.method, "http.route": route,
                                "url.path": request.path}) as span:
                try:
                    response = await handler(request)
                    span.set_attribute("http.response.status_code", response.status)
                    if response.status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    rlog = request.get(LOG_KEY)
                    if rlog is not None:
                        _annotate(span, rlog)
                        for phase in rlog.phases:
                            _child(tracer, span, phase, rlog.model, clock)
                    return response
                finally:
                    span.end(end_time=clock.wall(time.perf_counter_ns()))

        return tracing_middleware

    async def shutdown(self, _app: web.Application) -> None:
        # the last spans are flushed over the network: off the event loop
        await asyncio.to_thread(self.provider.shutdown)


def _annotate(span: trace.Span, rlog: RequestLog) -> None:
    span.set_attribute("edge_embed.request_id", rlog.request_id)
    if rlog.model is not None:
        span.set_attribute("edge_embed.model", rlog.model)
        span.set_attribute("edge_embed.inputs", rlog.inputs)
        span.set_attribute("edge_embed.tokens", rlog.tokens)
        span.set_attribute("edge_embed.cache_hits", rlog.cache_hits)
    if rlog.error:
        span.set_attribute("error.type", rlog.error)


class _Clock:
    """Wall-clock nanoseconds (what spans take) from perf_counter readings (what phases hold)."""

    def __init__(self) -> None:
        self.wall0 = time.time_ns()
        self.perf0 = time.perf_counter_ns()

    def wall(self, perf_ns: int) -> int:
        return self.wall0 + perf_ns - self.perf0


def _child(tracer: trace.Tracer, parent: trace.Span, phase: Phase, model: str | None,
           clock: _Clock) -> None:
    attributes = {**phase.attributes, "edge_embed.model": model or ""}
    child = tracer.start_span(phase.name, context=trace.set_span_in_context(parent),
                              kind=SpanKind.INTERNAL, attributes=attributes,
                              start_time=clock.wall(round(phase.start * 1e9)))
    child.end(end_time=clock.wall(round(phase.end * 1e9)))
