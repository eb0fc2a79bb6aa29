"""`edge-embed bench bulk`: the corpus job on the mixed-length stream, against raw onnxruntime.

Three systems embed the same corpus (the mixed-lengths workload's length distribution, written
once as JSON Lines), each in a fresh worker process, interleaved round by round so that a
neighbour's load on a shared machine falls on all of them alike:
- `raw`: the bundle through core.encoder.BundleModel in the service's thread layout,
  window by window: tokenize, sort by length, fixed batches of the engine's BATCH_INPUTS, the
  service's concurrent runs; no reading, no Parquet, no manifest. The ceiling.
- `local`: `edge-embed embed` in-process mode, end to end (validation pass, hashing, Parquet,
  manifest), one shard per window.
- `ray`: `edge-embed embed --ray` on a one-node Ray started in the worker with every usable CPU
  (the cluster's start is not timed; the actors' start, bundle loads included, is).
The local run's RSS is sampled while it runs: flat means the corpus (MULTIPLE windows) costs
no more memory than its first shards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from tokenizers import Tokenizer

from edge_embed.core.batching import BATCH_INPUTS
from edge_embed.core.bundle import load_manifest
from edge_embed.core.cpus import plan_threads, usable_cpus
from edge_embed.service.process import process_rss

from .workloads import SEED, build

# Rows per window: the local job's shard (what it holds in memory at once) and the raw
# baseline's unit of sorting.
WINDOW_ROWS = 1000
# The corpus is this many windows: enough that growth per shard would show against the start.
MULTIPLE = 20
ROUNDS = 2
# RSS is sampled this often; a shard takes ~0.5 s at these sizes.
RSS_POLL_S = 0.05
# RSS is compared from this many written shards on: the first shards grow the arena and the
# tokenizer's caches to their working size.
RSS_WARM_SHARDS = 2
SYSTEMS = ("raw", "local", "ray")
RESULT_JSON = "bulk.json"
RESULT_TABLE = "bulk.txt"
QUICK_WINDOW_ROWS = 50
QUICK_MULTIPLE = 4


def corpus_texts(bundle: Path, rows: int) -> list[str]:
    """`rows` texts with the mixed workload's lengths, from seeded workload builds."""
    manifest = load_manifest(bundle)
    tokenizer = Tokenizer.from_file(str(bundle / manifest.tokenizer_file))
    texts: list[str] = []
    seed = SEED
    while len(texts) < rows:
        mixed = {w.name: w for w in build(tokenizer, manifest.max_tokens, quick=True,
                                          seed=seed)}["mixed"]
        texts.extend(t for r in mixed.requests for t in r)
        seed += 1
    return texts[:rows]


# ---- the worker (one system, one run, in its own process) -----------------------------------
# Each system imports its heavy stack (onnxruntime, Ray) inside its function: a worker process
# holds only what it measures (the local worker's RSS is sampled), not the other systems'.
def _raw(bundle: Path, corpus: Path, window: int) -> int:
    from edge_embed.core.encoder import BundleModel
    from edge_embed.core.runtime import RuntimeOptions

    threads, runs = plan_threads(usable_cpus(), None, None)
    model = BundleModel(bundle, RuntimeOptions(intra_op_threads=threads))
    texts = [orjson.loads(line)["text"] for line in corpus.read_bytes().splitlines()]
    pool = ThreadPoolExecutor(runs)
    start = time.perf_counter()
    for first in range(0, len(texts), window):
        tokens = model.tokenizer.encode(texts[first:first + window])
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i].ids))
        batches = [order[i:i + BATCH_INPUTS] for i in range(0, len(order), BATCH_INPUTS)]
        rows = [[tokens[i].ids for i in batch] for batch in batches]
        for pooled in pool.map(model.run, rows):
            model.finish(pooled)
    return _report(len(texts), time.perf_counter() - start)


def _job(bundle: Path, corpus: Path, window: int, out: Path, ray_mode: bool) -> int:
    from edge_embed.corpus.cli import main as embed_main

    args = [str(corpus), "--model", str(bundle), "--out", str(out), "--shard-rows",
            str(window), "--quiet"]
    if ray_mode:
        from edge_embed.corpus.ray_runner import start_local_ray

        start_local_ray(usable_cpus())
        args.append("--ray")
    start = time.perf_counter()
    code = embed_main(args)
    if code:
        return code
    rows = sum(1 for _ in corpus.open("rb"))
    return _report(rows, time.perf_counter() - start)


def _report(rows: int, seconds: float) -> int:
    print(json.dumps({"rows": rows, "seconds": seconds}), flush=True)
    return 0


def worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="edge-embed bench bulk worker")
    p.add_argument("--kind", choices=SYSTEMS, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--window", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.kind == "raw":
        return _raw(a.model, a.corpus, a.window)
    return _job(a.model, a.corpus, a.window, a.out, a.kind == "ray")


# ---- the orchestrator ------------------------------------------------------------------------
def _run(kind: str, bundle: Path, corpus: Path, window: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edge_embed.bench.bulk", "worker", "--kind", kind, "--model",
           str(bundle), "--corpus", str(corpus), "--window", str(window), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, int]] = []  # (shards written, RSS bytes)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(RSS_POLL_S):
            shards = len(list(out.glob("part-*.parquet"))) if out.is_dir() else 0
            samples.append((shards, process_rss(proc.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    if kind == "local":
        sampler.start()
    stdout, stderr = proc.communicate()
    stop.set()
    if proc.returncode:
        raise RuntimeError(f"bench bulk: the {kind} worker failed:\n{stderr[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    result["inputs_per_s"] = result["rows"] / result["seconds"]
    if samples:
        warm = [rss for shards, rss in samples if shards >= RSS_WARM_SHARDS]
        # The highest RSS seen while each shard was being made (index: shards written so far).
        per_shard: dict[int, int] = {}
        for shards, rss in samples:
            per_shard[shards] = max(rss, per_shard.get(shards, 0))
        result["rss_mb"] = {"at_warm": round(warm[0] / 2**20, 1) if warm else None,
                            "max_after_warm": round(max(warm) / 2**20, 1) if warm else None,
                            "max": round(max(r for _, r in samples) / 2**20, 1),
                            "per_shard": [round(per_shard[k] / 2**20, 1)
                                          for k in sorted(per_shard)],
                            "samples": len(samples)}
    return result


def run(bundle: Path, window: int, multiple: int, rounds: int,
        systems: Sequence[str]) -> dict[str, Any]:
    rows = window * multiple
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with corpus.open("w", encoding="utf-8") as f:
            for text in corpus_texts(bundle, rows):
                f.write(json.dumps({"text": text}) + "\n")
        for r in range(rounds):
            for kind in systems:
                runs[kind].append(_run(kind, bundle, corpus, window, Path(tmp) / f"{kind}-{r}"))
    med = {k: statistics.median(x["inputs_per_s"] for x in v) for k, v in runs.items()}
    ratios = {}
    if "raw" in med and "local" in med:
        ratios["local/raw"] = med["local"] / med["raw"]
    if "local" in med and "ray" in med:
        ratios["ray/local"] = med["ray"] / med["local"]
    # Per round as well: each pair ran back to back, so the per-round ratio is the fair one.
    per_round = [{f"{a}/{b}": runs[a][i]["inputs_per_s"] / runs[b][i]["inputs_per_s"]
                  for a, b in (("local", "raw"), ("ray", "local")) if a in runs and b in runs}
                 for i in range(rounds)]
    return {"bundle": str(bundle), "rows": rows, "window_rows": window, "rounds": rounds,
            "inputs_per_s": med, "ratios": ratios, "per_round": per_round, "runs": runs}


def table(result: dict[str, Any]) -> str:
    lines = [f"bulk job: {result['rows']} inputs (mixed lengths), windows of "
             f"{result['window_rows']}, median of {result['rounds']} interleaved rounds"]
    for kind, rate in result["inputs_per_s"].items():
        lines.append(f"  {kind:<6} {rate:10,.0f} inputs/s")
    for name, value in result["ratios"].items():
        lines.append(f"  {name:<10} {value:.2f}x  (per round: "
                     + ", ".join(f"{r[name]:.2f}" for r in result["per_round"] if name in r)
                     + ")")
    local = result["runs"].get("local", [])
    for i, run_ in enumerate(local):
        rss = run_.get("rss_mb")
        if rss:
            series = rss["per_shard"]
            marks = sorted({min(len(series) - 1, round(q * (len(series) - 1)))
                            for q in (0.1, 0.25, 0.5, 0.75, 1.0)})
            lines.append(f"  local RSS round {i + 1} (MB, highest while shard k was made): "
                         + ", ".join(f"k={k}: {series[k]}" for k in marks))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "edge-embed bench bulk") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, metavar="BUNDLE")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--window", type=int, default=WINDOW_ROWS, help="rows per window/shard")
    p.add_argument("--multiple", type=int, default=MULTIPLE, help="the corpus in windows")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--no-ray", action="store_true", help="leave out the Ray run")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tests)")
    a = p.parse_args(argv)
    window, multiple = ((QUICK_WINDOW_ROWS, QUICK_MULTIPLE) if a.quick
                        else (a.window, a.multiple))
    systems = [s for s in SYSTEMS if not (a.no_ray and s == "ray")]
    result = run(a.model, window, multiple, 1 if a.quick else a.rounds, systems)
    text = table(result)
    print(text, end="")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / RESULT_JSON).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (a.out / RESULT_TABLE).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
