"""`make soak`: a bounded memory soak of the service; RSS must level off.

Starts the service on a bundle, keeps a few closed-loop clients busy for a few minutes with
random inputs whose lengths range from one token to beyond the model's limit (so truncation,
every padded batch shape and the arena's growth are exercised), samples the server's RSS from
/proc/PID/status, prints the curve as a table and decides:

    levels off  <=>  max RSS over the last third of the run <= 1.1 x max RSS over the middle third

(the first third is warm-up: the arena and caches fill there). Exit 0 when it levels off and no
request failed, 1 otherwise. Not part of `make test`: it takes minutes by design.

    python -m edge_embed.bench.soak --model models/all-minilm-l6-v2-int8 [--duration 180] [--plot]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from edge_embed.bench.load import model_id
from edge_embed.bench.server import Server
from edge_embed.bench.wordlist import WORDS
from edge_embed.core.bundle import load_manifest

# A bounded few minutes, not hours: 3 min covers the arena's warm-up and two thirds
# of steady state on the 2-core build machine.
DEFAULT_DURATION_S = 180.0
# Samples per run: 36 points (one every 5 s by default) draw a readable curve and give each
# third a dozen points for its maximum.
SAMPLES = 36
# The verdict's tolerance: the last third may peak at most 10 % above the middle third
# (arena chunks are allocated in steps, so a flat process still moves a little).
LEVEL_TOLERANCE = 1.10
# Closed-loop clients: enough to keep batches forming on 2 cores, few enough that the run
# measures memory, not queueing (the service's queue bound is far above 4 x 16 inputs).
DEFAULT_CLIENTS = 4
# Inputs per request, uniformly 1..this.
DEFAULT_MAX_INPUTS = 16
# Lengths go past the model's limit by this factor, so some inputs are cut (truncation path).
OVER_LIMIT_FACTOR = 1.5
# Share of requests sent as token ids rather than text (the other input form, other code path).
TOKEN_ID_SHARE = 0.2
REQUEST_TIMEOUT_S = 60.0
BAR_WIDTH = 50
RESULTS = Path("bench/results")


@dataclass
class SoakStats:
    ok: int = 0
    failed: int = 0
    inputs: int = 0
    failures: dict[str, int] = field(default_factory=dict)


def random_input(rng: random.Random, max_tokens: int, vocab: int,
                 as_ids: bool) -> str | list[int]:
    """One token up to OVER_LIMIT_FACTOR x the limit, as text or as token ids."""
    # Half the inputs short (the common case), half spread uniformly up to past the limit.
    longest = int(max_tokens * OVER_LIMIT_FACTOR)
    n = rng.randint(1, 8) if rng.random() < 0.5 else rng.randint(1, longest)
    if as_ids:
        # ids from the model's own vocabulary, above the special tokens at its start
        low = min(1000, max(1, vocab // 10))
        return [rng.randrange(low, vocab) for _ in range(n)]
    # One word of WORDS is one to two tokens; n words span one token to past the limit.
    return " ".join(rng.choice(WORDS) for _ in range(n))


async def client(session: aiohttp.ClientSession, url: str, model: str, rng: random.Random,
                 max_tokens: int, vocab: int, max_inputs: int, stop_at: float,
                 stats: SoakStats) -> None:
    while time.monotonic() < stop_at:
        n = rng.randint(1, max_inputs)
        # The API takes strings or id lists, not a mix: one form per request.
        as_ids = rng.random() < TOKEN_ID_SHARE
        inputs = [random_input(rng, max_tokens, vocab, as_ids) for _ in range(n)]
        payload = {"model": model, "input": inputs,
                   "encoding_format": rng.choice(["float", "base64"])}
        try:
            async with session.post(url, json=payload,
                                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as r:
                body = await r.read()
                if r.status == 200:
                    stats.ok += 1
                    stats.inputs += len(inputs)
                    continue
                key = f"HTTP {r.status}: {body[:160]!r}"
        except (TimeoutError, aiohttp.ClientError) as err:
            key = f"{type(err).__name__}: {err}"
        stats.failed += 1
        stats.failures[key] = stats.failures.get(key, 0) + 1


async def sampler(server: Server, interval: float, stop_at: float, start: float,
                  stats: SoakStats, out: list[tuple[float, int, int]]) -> None:
    while True:
        out.append((time.monotonic() - start, server.rss() // 1024, stats.ok))
        if time.monotonic() >= stop_at:
            return
        await asyncio.sleep(min(interval, max(0.0, stop_at - time.monotonic())))


async def soak(server: Server, model: str, *, duration_s: float, clients: int,
               max_inputs: int, max_tokens: int, vocab: int,
               seed: int) -> tuple[list[tuple[float, int, int]], SoakStats]:
    stats = SoakStats()
    samples: list[tuple[float, int, int]] = []
    start = time.monotonic()
    stop_at = start + duration_s
    url = f"{server.url}/v1/embeddings"
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            sampler(server, duration_s / SAMPLES, stop_at, start, stats, samples),
            *(client(session, url, model, random.Random(seed * 1000 + i), max_tokens, vocab,
                     max_inputs, stop_at, stats) for i in range(clients)))
    return samples, stats


def thirds(samples: Sequence[tuple[float, int, int]],
           duration_s: float) -> tuple[list[int], list[int], list[int]]:
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for t, rss, _ in samples:
        parts[min(2, int(3 * t / duration_s))].append(rss)
    return parts


def verdict(samples: Sequence[tuple[float, int, int]], duration_s: float) -> tuple[bool, str]:
    _, middle, last = thirds(samples, duration_s)
    if not middle or not last:
        return False, "too few RSS samples to judge (run longer)"
    m, lst = max(middle), max(last)
    ok = lst <= LEVEL_TOLERANCE * m
    return ok, (f"max RSS last third {lst / 1024:.1f} MiB {'<=' if ok else '>'} "
                f"{LEVEL_TOLERANCE:g} x max RSS middle third {m / 1024:.1f} MiB "
                f"(= {LEVEL_TOLERANCE * m / 1024:.1f} MiB): "
                + ("RSS levels off" if ok else "RSS does NOT level off"))


def table(samples: Sequence[tuple[float, int, int]]) -> str:
    top = max(rss for _, rss, _ in samples)
    low = min(rss for _, rss, _ in samples)
    lines = [f"{'t (s)':>7} {'RSS MiB':>9} {'requests':>9}  curve ({low / 1024:.0f}.."
             f"{top / 1024:.0f} MiB)"]
    for t, rss, done in samples:
        span = max(1, top - low)
        bar = "#" * (1 + round((BAR_WIDTH - 1) * (rss - low) / span))
        lines.append(f"{t:7.1f} {rss / 1024:9.1f} {done:9d}  {bar}")
    return "\n".join(lines)


def plot(samples: Sequence[tuple[float, int, int]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s[0] for s in samples], [s[1] / 1024 for s in samples], marker=".")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m edge_embed.bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder to serve")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds")
    p.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    p.add_argument("--max-inputs", type=int, default=DEFAULT_MAX_INPUTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action="store_true",
                   help=f"also write the curve as a PNG under {RESULTS}/")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for the service (repeatable)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.max_inputs < 1:
        p.error("--duration, --clients and --max-inputs must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = load_manifest(Path(args.model))
    vocab = manifest.vocab_size or 1000
    with Server(args.model, extra_args=args.server_arg) as server:
        server.wait_ready()
        model = asyncio.run(model_id(server.url, {}))
        print(f"soak: {args.duration:g} s, {args.clients} clients, 1..{args.max_inputs} inputs "
              f"of 1..{int(manifest.max_tokens * OVER_LIMIT_FACTOR)} tokens "
              f"(limit {manifest.max_tokens}) against {model} (pid {server.proc.pid})",
              flush=True)
        samples, stats = asyncio.run(soak(
            server, model, duration_s=args.duration, clients=args.clients,
            max_inputs=args.max_inputs, max_tokens=manifest.max_tokens, vocab=vocab,
            seed=args.seed))
        failed_log = server.tail() if stats.failed else ""
    print(table(samples))
    print(f"requests: {stats.ok} ok, {stats.failed} failed; {stats.inputs} inputs embedded")
    for key, count in sorted(stats.failures.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  FAILED x{count}: {key}")
    ok, why = verdict(samples, args.duration)
    print(f"verdict: {why}")
    if args.plot:
        print(f"plot: {plot(samples, RESULTS / 'soak_rss.png', f'soak: {model}')}")
    if stats.failed:
        print(f"--- service log (tail) ---\n{failed_log}")
    passed = ok and stats.failed == 0
    print("soak: PASS" if passed else "soak: FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
