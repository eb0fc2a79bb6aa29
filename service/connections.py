"""Connections: counted at accept, capped, and closed when a request's headers do not arrive.

What aiohttp has no knob for, done at the transport: `ConnectionGuard.protocol(factory)` wraps
aiohttp's protocol factory (`AppRunner.server`) so that every accepted connection is counted
(`edge_embed_open_connections`), one past `max_connections` is answered 503 and closed before
aiohttp sees it, and one whose request headers are not complete `header_timeout_s` after it
opened (or after the first byte of a later request) is closed. The middleware tells the guard
when a request's headers are complete; the header clock is off until its answer is done.
Keep-alive and lingering are aiohttp's own knobs (serve.py), a body's time the request path's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web
from prometheus_client import Counter

from .errors import Unavailable
from .limits import FILES_BESIDE_CONNECTIONS, ConnectionLimits

log = logging.getLogger("edge_embed.connections")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ProtocolFactory = Callable[[], asyncio.Protocol]


def _refusal(limit: int) -> bytes:
    """A whole HTTP answer, written at accept to a connection past the limit."""
    body = orjson.dumps(Unavailable(
        f"The server has its limit of {limit} open connections; retry shortly, or reuse a "
        "connection.").body())
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


class ConnectionGuard:
    """The server's open connections: their count, their limit, their header clock."""

    def __init__(self, limits: ConnectionLimits, dropped: Counter) -> None:
        self.limits = limits
        self.open = 0
        self._dropped = dropped  # labelled by reason: limit | header_timeout
        self.refusal = _refusal(limits.max_connections)

    def fit_open_files(self) -> int:
        """Raise the open-file soft limit to hold every connection the limit lets in, as far as
        the hard limit allows (past it accept() would fail, unanswered); the soft limit now."""
        want = self.limits.max_connections + FILES_BESIDE_CONNECTIONS
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= want:
            return soft
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("the open-file limit (hard: %d) is below --max-connections %d plus %d "
                        "other files: past it new connections fail unanswered; raise it "
                        "(ulimit -n) or lower --max-connections", hard,
                        self.limits.max_connections, FILES_BESIDE_CONNECTIONS)
        return new

    def protocol(self, factory: ProtocolFactory) -> ProtocolFactory:
        """A protocol factory for `loop.create_server`: `factory`'s protocols, guarded."""
        def make() -> asyncio.Protocol:
            return _Guarded(self, factory)
        return make

    def middleware(self) -> Any:
        """Stops a connection's header clock while one of its requests is handled."""

        @web.middleware
        async def connection_middleware(request: web.Request,
                                        handler: Handler) -> web.StreamResponse:
            transport = request.transport
            conn = transport.get_protocol() if transport is not None else None
            if not isinstance(conn, _Guarded):  # the in-process test server: nothing to guard
                return await handler(request)
            conn.request_started()
            try:
                return await handler(request)
            finally:
                conn.request_ended()

        return connection_middleware

    def drop(self, reason: str) -> None:
        self._dropped.labels(reason).inc()


class _Guarded(asyncio.Protocol):
    """One connection; aiohttp's protocol inside it is made only once the connection is let in."""

    def __init__(self, guard: ConnectionGuard, factory: ProtocolFactory) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._handling = 0  # requests of this connection in the handler now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        guard = self._guard
        if guard.open >= guard.limits.max_connections:
            guard.drop("limit")
            tcp.write(guard.refusal)
            tcp.close()
            return
        guard.open += 1
        self._transport = tcp
        self._start_clock()
        self._inner = self._factory()
        self._inner.connection_made(tcp)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._handling == 0 and self._clock is None:  # the first byte of a next request
            self._start_clock()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        if self._inner is None:  # refused at accept: never counted
            return
        self._guard.open -= 1
        self._transport = None
        self._inner.connection_lost(exc)

    def request_started(self) -> None:
        self._handling += 1
        self._stop_clock()

    def request_ended(self) -> None:
        self._handling -= 1

    def _start_clock(self) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.call_later(self._guard.limits.header_timeout_s, self._headers_late)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _headers_late(self) -> None:
        self._clock = None
        if self._handling or self._transport is None or self._transport.is_closing():
            return
        self._guard.drop("header_timeout")
        self._transport.close()
