"""The HTTP load generator: a process of its own that drives the service over 127.0.0.1.

`python -m edge_embed.bench.client --url URL --model ID --workloads FILE` answers measure commands
(see
worker.py). Request bodies are encoded before the clock starts; each window keeps `concurrency`
requests in flight, stops at its time limit or request count, and checks every answer carries
one vector per input. Consecutive windows continue through the workload's request pool rather
than restarting it, so the service's cache sees new texts (requests also ask it not to cache).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import aiohttp
import orjson

from .stats import Window, window
from .worker import serve
from .workloads import Workload

# Generous: a window is a few seconds; a request slower than this is a hung server.
REQUEST_TIMEOUT_S = 60.0


class Client:
    def __init__(self, url: str, model: str, encoding: str) -> None:
        self.url = url.rstrip("/") + "/v1/embeddings"
        self.model = model
        self.encoding = encoding
        self.bodies: dict[str, list[bytes]] = {}
        self.cursor: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.session: aiohttp.ClientSession | None = None

    def _bodies(self, w: Workload) -> list[bytes]:
        if w.name not in self.bodies:
            self.bodies[w.name] = [orjson.dumps({
                "model": self.model,
                "input": r[0] if len(r) == 1 else list(r),
                "encoding_format": self.encoding,
                **({} if w.cached else {"cache_control": {"no_cache": True}}),
            }) for r in w.requests]
        return self.bodies[w.name]

    def measure(self, w: Workload, seconds: float, max_requests: int, warmup: int) -> Window:
        return self.loop.run_until_complete(self._measure(w, seconds, max_requests, warmup))

    async def _measure(self, w: Workload, seconds: float, max_requests: int,
                       warmup: int) -> Window:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        bodies = self._bodies(w)
        sizes = [len(r) for r in w.requests]
        if warmup:
            await self._drive(bodies, sizes, w, min(w.concurrency, warmup), seconds / 5, warmup)
        return await self._drive(bodies, sizes, w, w.concurrency, seconds, max_requests)

    async def _drive(self, bodies: list[bytes], sizes: list[int], w: Workload, concurrency: int,
                     seconds: float, max_requests: int) -> Window:
        assert self.session is not None
        session = self.session
        latencies: list[float] = []
        counts = {"sent": 0, "inputs": 0, "errors": 0}
        first_error: list[str] = []
        start = time.perf_counter()
        deadline = start + seconds
        last = start
        headers = {"Content-Type": "application/json"}

        async def one_client() -> None:
            nonlocal last
            while counts["sent"] < max_requests and time.perf_counter() < deadline:
                counts["sent"] += 1
                i = self.cursor.get(w.name, 0)
                self.cursor[w.name] = (i + 1) % len(bodies)
                t0 = time.perf_counter()
                try:
                    async with session.post(self.url, data=bodies[i], headers=headers) as resp:
                        payload = await resp.read()
                        ok = resp.status == 200 and len(orjson.loads(payload)["data"]) == sizes[i]
                        reason = f"HTTP {resp.status}: {payload[:200]!r}"
                except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
                    ok, reason = False, f"{type(exc).__name__}: {exc}"
                done = time.perf_counter()
                last = max(last, done)
                if ok:
                    latencies.append(done - t0)
                    counts["inputs"] += sizes[i]
                else:
                    counts["errors"] += 1
                    if not first_error:
                        first_error.append(reason)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        return window(latencies, counts["inputs"], counts["errors"], last - start,
                      first_error[0] if first_error else "")

    def close(self) -> None:
        if self.session is not None:
            self.loop.run_until_complete(self.session.close())
        self.loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_embed.bench.client", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workloads", type=Path, required=True)
    parser.add_argument("--encoding", choices=("float", "base64"), default="base64")
    args = parser.parse_args(argv)
    client = Client(args.url, args.model, args.encoding)
    try:
        return serve(args.workloads, client.measure)
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
