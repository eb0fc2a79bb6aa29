"""Overload on a shared box: the server's saturated throughput, then a flood, a CPU hog beside it.

    python -m edge_embed.bench.flood --url http://127.0.0.1:8000 --model all-minilm-l6-v2

1. A process burning one core starts beside the server (another tenant of an edge box).
2. Saturated throughput: a few clients send requests of long texts back to back for a while;
   inputs per second is what the server does on this box, with the neighbour, at full load.
3. The flood: hundreds of such requests at once. Each answer's status and time are recorded.
   Goodput is the inputs answered with 200 per second over the flood (from its first request
   to its last 200).

A server that admits by time answers the flood with 200s (all inside the deadline) and 429s
(at once, with Retry-After), and keeps its goodput near the saturated throughput. The test
(tests/test_reliability_flood.py) asserts that; this module also runs against any server, so the
same figures can be taken of an older build.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp

from .wordlist import WORDS

SEED = 20261129
# Long inputs: 200 words are ~250-300 MiniLM tokens, cut at its 256-token limit: the costliest
# input there is, which is what fills a queue fastest.
LONG_WORDS = 200
INPUTS_PER_REQUEST = 8
# The flood: as many requests at once as an outside client sent when it found the fault.
FLOOD_REQUESTS = 600
# Saturation: enough clients that the queue never runs dry between requests (two runs side by
# side, one more request waiting for each), few enough that admission never refuses them.
SATURATE_CLIENTS = 4
SATURATE_SECONDS = 10.0
# A client gives up on an answer after this long: far past any server's deadline, so a hang
# shows as a missing answer (status 0), not as a stuck test.
CLIENT_TIMEOUT_S = 120.0


def long_texts(count: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(LONG_WORDS)) for i in range(count)]


@contextmanager
def cpu_hog(processes: int = 1) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes that each keep one core busy until the block ends."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(processes)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (connection error or client timeout)
    seconds: float
    inputs: int
    retry_after: str | None


@dataclass(frozen=True)
class Flood:
    answers: tuple[Answer, ...]
    window_s: float  # from the first request to the last 200

    @property
    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)

    @property
    def served_inputs(self) -> int:
        return sum(a.inputs for a in self.answers if a.status == 200)

    @property
    def goodput(self) -> float:
        return self.served_inputs / self.window_s if self.window_s > 0 else 0.0

    def slowest(self, status: int) -> float:
        """Seconds the slowest answer with `status` took (0 if there was none)."""
        return max((a.seconds for a in self.answers if a.status == status), default=0.0)


async def _post(session: aiohttp.ClientSession, url: str, model: str,
                texts: Sequence[str]) -> Answer:
    start = time.perf_counter()
    try:
        async with session.post(f"{url}/v1/embeddings",
                                json={"model": model, "input": list(texts),
                                      "encoding_format": "base64"},
                                timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)) as r:
            await r.read()
            return Answer(r.status, time.perf_counter() - start, len(texts),
                          r.headers.get("Retry-After"))
    except (aiohttp.ClientError, TimeoutError):
        return Answer(0, time.perf_counter() - start, len(texts), None)


def _requests(texts: Sequence[str], count: int, offset: int = 0) -> list[list[str]]:
    n = INPUTS_PER_REQUEST
    return [[texts[(offset + i * n + k) % len(texts)] for k in range(n)] for i in range(count)]


async def saturate(url: str, model: str, texts: Sequence[str],
                   seconds: float = SATURATE_SECONDS,
                   clients: int = SATURATE_CLIENTS) -> float:
    """Inputs per second answered with 200 by `clients` closed-loop clients over `seconds`."""
    requests = _requests(texts, len(texts) // INPUTS_PER_REQUEST)
    served = [0]
    cursor = [0]

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        while time.perf_counter() < until:
            body = requests[cursor[0] % len(requests)]
            cursor[0] += 1
            answer = await _post(session, url, model, body)
            if answer.status == 200 and time.perf_counter() <= until:
                served[0] += answer.inputs

    async with aiohttp.ClientSession() as session:
        # A short first round warms the server's throughput estimate up to this load.
        warm = time.perf_counter() + seconds / 5
        await asyncio.gather(*(client(session, warm) for _ in range(clients)))
        served[0] = 0
        start = time.perf_counter()
        await asyncio.gather(*(client(session, start + seconds) for _ in range(clients)))
        return served[0] / (time.perf_counter() - start)


async def flood(url: str, model: str, texts: Sequence[str],
                requests: int = FLOOD_REQUESTS) -> Flood:
    bodies = _requests(texts, requests, offset=len(texts) // 2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        answers = await asyncio.gather(*(_post(session, url, model, b) for b in bodies))
    ends = [start + a.seconds for a in answers if a.status == 200]
    window = (max(ends) - start) if ends else 0.0
    return Flood(tuple(answers), window)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.bench.flood", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True, help="the served model id")
    p.add_argument("--requests", type=int, default=FLOOD_REQUESTS)
    p.add_argument("--seconds", type=float, default=SATURATE_SECONDS,
                   help="saturation window")
    p.add_argument("--hogs", type=int, default=1, help="busy processes beside the server")
    args = p.parse_args(argv)
    texts = long_texts(512)
    with cpu_hog(args.hogs):
        saturated = asyncio.run(saturate(args.url, args.model, texts, args.seconds))
        result = asyncio.run(flood(args.url, args.model, texts, args.requests))
    print(report(saturated, result))
    return 0


def report(saturated: float, result: Flood) -> str:
    counts = ", ".join(f"{n} x {s}" for s, n in sorted(result.statuses.items()))
    return (f"saturated throughput {saturated:.1f} inputs/s; flood of {len(result.answers)} "
            f"requests: {counts}; goodput {result.goodput:.1f} inputs/s over "
            f"{result.window_s:.1f} s = {result.goodput / max(saturated, 1e-9):.2f} x saturated; "
            f"slowest 200 {result.slowest(200):.2f} s, slowest 429 {result.slowest(429):.2f} s")


if __name__ == "__main__":
    raise SystemExit(main())
