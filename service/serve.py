"""`edge-embed serve` / `python -m edge_embed.service`: load bundles, serve, drain on SIGTERM.

Start-up failures (a bad bundle, a missing provider, an unreadable keys file) are one line on
stderr naming the file and field, and exit code 2. On SIGTERM (or SIGINT): /ready turns 503 and
new requests get 503 at once, in-flight requests finish within --drain-timeout, then exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import orjson
from aiohttp import web

from edge_embed.core.errors import StartupError

from .app import AUTH, CONNECTIONS, REGISTRY, RUNTIME, STATE, auth_warning, create_app
from .limits import LINGER_S
from .settings import Settings, parse_settings

log = logging.getLogger("edge_embed.serve")
# After the drain, aiohttp's own shutdown closes idle keep-alive connections; in-flight ones are
# already done, so a short grace is enough.
_SHUTDOWN_GRACE_S = 1.0


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # onnxruntime and aiohttp's own access log would double ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _startup_log(app: web.Application, settings: Settings, port: int) -> None:
    for served in app[REGISTRY]:
        m, p = served.model.manifest, served.model.providers
        log.info("bundle %s", orjson.dumps({
            "id": m.id, "folder": str(served.model.folder), "aliases": list(m.aliases),
            "precision": m.precision, "dimensions": m.dimensions, "max_tokens": m.max_tokens,
            "providers": list(p.used), "fell_back": p.fell_back}).decode())
        if p.fell_back:
            log.warning("provider fallback for %s: %s", m.id, p.message)
        for warning in served.warnings():
            log.warning("bundle %s: %s", m.id, warning)
    log.info("threads %s", orjson.dumps(app[RUNTIME].info()).decode())
    log.info("limits %s", orjson.dumps(settings.limits()).decode())
    log.info("listening on http://%s:%d (auth %s)", settings.host, port,
             "on" if app[AUTH].enabled else "off")
    open_warning = auth_warning(settings, app[AUTH])
    if open_warning is not None:
        log.warning("%s", open_warning)


async def listen(app: web.Application, settings: Settings
                 ) -> tuple[web.AppRunner, asyncio.Server]:
    """The app started and listening; each connection guarded (service/connections.py)."""
    limits = settings.connections
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S,
                           handle_signals=False, keepalive_timeout=limits.keepalive_timeout_s,
                           lingering_time=LINGER_S)
    await runner.setup()
    assert runner.server is not None  # set by setup()
    app[CONNECTIONS].fit_open_files()
    loop = asyncio.get_running_loop()
    # Our own listener rather than a TCPSite: the protocol factory is wrapped, so that
    # connections are counted and capped at accept, below aiohttp.
    server = await loop.create_server(app[CONNECTIONS].protocol(runner.server), settings.host,
                                      settings.port, reuse_address=True)
    return runner, server


async def serve(settings: Settings, app: web.Application) -> int:
    runner, server = await listen(app, settings)
    port = settings.port
    with contextlib.suppress(Exception):
        port = server.sockets[0].getsockname()[1]
    _startup_log(app, settings, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    state = app[STATE]
    state.draining = True
    log.info("draining: %d request(s) in flight, up to %.1f s", state.inflight,
             settings.drain_timeout)
    if state.idle is not None and state.inflight:
        try:
            await asyncio.wait_for(state.idle.wait(), settings.drain_timeout)
        except TimeoutError:
            log.warning("drain timeout: %d request(s) still in flight", state.inflight)
    server.close()  # no new connections; aiohttp's clean-up closes the open ones
    await runner.cleanup()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "edge-embed serve") -> int:
    settings = parse_settings(argv, prog)
    setup_logging(settings.log_level)
    try:
        app = create_app(settings)
    except StartupError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    except Exception as exc:  # onnxruntime refusing a model file, a tokenizer that won't load
        sys.stderr.write(f"{prog}: cannot load the bundle(s): {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}\n")
        return 2
    try:
        return asyncio.run(serve(settings, app))
    except StartupError as exc:  # raised at warm-up: a model's canaries failed
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
