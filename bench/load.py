"""`make load`: a bounded open-loop load test of the service on loopback.

Requests are sent at a fixed rate (an open loop: request i leaves at start + i / rate whether or
not earlier ones have answered, so a slow server cannot slow the test down and hide its own
latency) for a fixed time. Every answer must be a 200 whose body holds one vector of the right
size per input; anything else is a failure and the exit code is 1. Prints throughput and latency
percentiles.

    python -m edge_embed.bench.load --model models/all-minilm-l6-v2-int8 [--rate 40] [--duration 60]
    python -m edge_embed.bench.load --url http://127.0.0.1:8000 --model-id all-minilm-l6-v2

The service runs in a subprocess started here (unless --url is given), the same command a user
runs, so the numbers include HTTP, JSON and batching, not only the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from edge_embed.bench.server import Server
from edge_embed.bench.stats import percentile
from edge_embed.bench.wordlist import WORDS

# 40 requests/s of 1-8 short sentences is about a tenth of what the int8 MiniLM serves on the
# 2-core build machine (1260-2437 short inputs/s in process, rising with the batch to 32), so a
# healthy server answers every one of them; a failure at this rate is a bug, not a capacity limit.
DEFAULT_RATE = 40.0
# 60 s: long enough for batching, caches and the arena to reach steady state.
DEFAULT_DURATION_S = 60.0
# Inputs per request, drawn uniformly from 1..this: the mix a RAG indexer and a query path send.
DEFAULT_MAX_INPUTS = 8
# Words per input, uniformly 1..this: short sentences, well under MiniLM's 256-token limit.
DEFAULT_MAX_WORDS = 48
# A request still unanswered after this long counts as a failure (the service's own request
# timeout is shorter, so a healthy server has answered, with something, long before).
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# Connections the client may open; above the number of requests in flight at the default rate.
CLIENT_CONNECTIONS = 256
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def make_text(rng: random.Random, max_words: int) -> str:
    """Random words from the benchmark's fixed list (reproducible from --seed)."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))


# --- the service ------------------------------------------------------------------------------


async def model_id(base_url: str, headers: dict[str, str]) -> str:
    """The first served model's id (GET /v1/models)."""
    async with aiohttp.ClientSession(headers=headers) as session, \
            session.get(f"{base_url}/v1/models") as r:
        r.raise_for_status()
        body = await r.json()
        return str(body["data"][0]["id"])


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    latency_s: float
    ok: bool
    inputs: int
    detail: str = ""  # what went wrong, for the report
    kind: str = ""  # how failures are grouped in the report: "HTTP 429 server_overloaded", ...


def error_kind(status: int, body: bytes) -> str:
    """`HTTP <status> <code>` from an OpenAI-shaped error body (the code alone when unparsable)."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "?"
    return f"HTTP {status} {code}"


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    max_lag_s: float = 0.0  # how far behind schedule the sender ever fell

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


async def one_request(session: aiohttp.ClientSession, url: str, payload: dict[str, object],
                      n_inputs: int, timeout_s: float) -> Outcome:
    start = time.perf_counter()
    try:
        async with session.post(url, json=payload,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            body = await r.read()
            latency = time.perf_counter() - start
            if r.status != 200:
                return Outcome(latency, False, n_inputs, f"HTTP {r.status}: {body[:200]!r}",
                               error_kind(r.status, body))
            parsed = json.loads(body)
            data = parsed.get("data") if isinstance(parsed, dict) else None
            if not isinstance(data, list) or len(data) != n_inputs or any(
                    not isinstance(d.get("embedding"), list) or not d["embedding"] for d in data):
                return Outcome(latency, False, n_inputs, f"malformed body: {body[:200]!r}",
                               "malformed 200")
            return Outcome(latency, True, n_inputs)
    except (TimeoutError, aiohttp.ClientError, ValueError) as err:
        return Outcome(time.perf_counter() - start, False, n_inputs,
                       f"{type(err).__name__}: {err}", type(err).__name__)


async def run_load(base_url: str, model: str, *, rate: float, duration_s: float,
                   max_inputs: int, max_words: int, seed: int, timeout_s: float,
                   headers: dict[str, str]) -> LoadResult:
    rng = random.Random(seed)
    total = int(rate * duration_s)
    url = f"{base_url}/v1/embeddings"
    result = LoadResult()
    connector = aiohttp.TCPConnector(limit=CLIENT_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        tasks: list[asyncio.Task[Outcome]] = []
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                result.max_lag_s = max(result.max_lag_s, now - due)
            n = rng.randint(1, max_inputs)
            texts = [make_text(rng, max_words) for _ in range(n)]
            payload: dict[str, object] = {"model": model, "input": texts,
                                          "encoding_format": "float"}
            tasks.append(asyncio.create_task(one_request(session, url, payload, n, timeout_s)))
        result.outcomes = list(await asyncio.gather(*tasks))
        result.wall_s = time.perf_counter() - start
    return result


def report(result: LoadResult, rate: float, duration_s: float) -> str:
    ok = [o for o in result.outcomes if o.ok]
    latencies = sorted(o.latency_s * 1000 for o in ok)
    inputs = sum(o.inputs for o in ok)
    lines = [
        f"load: {len(result.outcomes)} requests at {rate:g}/s for {duration_s:g} s "
        f"(open loop; sender max lag {result.max_lag_s * 1000:.1f} ms)",
        f"  succeeded: {len(ok)}   failed: {len(result.failures)}",
        f"  throughput: {len(ok) / result.wall_s:.1f} requests/s, {inputs / result.wall_s:.1f} "
        f"inputs/s over {result.wall_s:.1f} s",
        "  latency ms: " + "  ".join(f"p{p:g} {percentile(latencies, p):.1f}"
                                     for p in PERCENTILES)
        + (f"  max {latencies[-1]:.1f}" if latencies else ""),
    ]
    kinds: dict[str, list[Outcome]] = {}
    for o in result.failures:
        kinds.setdefault(o.kind, []).append(o)
    for kind, group in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  FAILED x{len(group)} {kind}, e.g. {group[0].detail[:160]}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_embed.bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="bundle folder: start the service on it here")
    target.add_argument("--url", help="an already running service, e.g. http://127.0.0.1:8000")
    p.add_argument("--model-id", help="model name to request (default: the first served)")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds")
    p.add_argument("--max-inputs", type=int, default=DEFAULT_MAX_INPUTS)
    p.add_argument("--max-words", type=int, default=DEFAULT_MAX_WORDS)
    p.add_argument("--timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S,
                   help="client timeout per request, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("EDGE_EMBED_LOAD_API_KEY"))
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for the started service (repeatable)")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.max_inputs < 1 or args.max_words < 1:
        p.error("--rate, --duration, --max-inputs and --max-words must be positive")
    return args


def _run(args: argparse.Namespace, base_url: str) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model_id or asyncio.run(model_id(base_url, headers))
    result = asyncio.run(run_load(base_url, model, rate=args.rate, duration_s=args.duration,
                                  max_inputs=args.max_inputs, max_words=args.max_words,
                                  seed=args.seed, timeout_s=args.timeout, headers=headers))
    print(report(result, args.rate, args.duration))
    if result.failures:
        print(f"load: FAIL ({len(result.failures)} of {len(result.outcomes)} requests failed)")
        return 1
    print("load: PASS (zero failures)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.url:
        return _run(args, args.url.rstrip("/"))
    with Server(args.model, extra_args=args.server_arg) as server:
        server.wait_ready()
        code = _run(args, server.url)
        if code:
            print(f"--- service log (tail) ---\n{server.tail()}")
        return code


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
