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
    from .app import REGISTRY, RUNTIME

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
             "on" if settings.api_keys or settings.api_keys_file else "off")


async def serve(settings: Settings, app: web.Application) -> int:
    from .app import STATE

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    port = settings.port
    with contextlib.suppress(Exception):
        port = runner.addresses[0][1]
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
    await runner.cleanup()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "edge-embed serve") -> int:
    settings = parse_settings(argv, prog)
    setup_logging(settings.log_level)
    from .app import create_app  # after logging: loading bundles logs

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
