"""`edge-embed bench rerank`: one query with 20 and with 100 documents of ~60 tokens, scored by the
int8 service, the fp32 service and sentence-transformers' CrossEncoder on torch, in one run.

Each system gets the same requests in interleaved rounds (a round: every system, every workload,
`--window` seconds each, one request at a time); reported per workload and system: pairs per
second and the median (p50) latency of a request, over the rounds' requests. The services are
measured over HTTP on /v1/rerank as a client sees them; CrossEncoder in this process, its
`predict` on the same pairs (batch size 32, its default), as a user of sentence-transformers
runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from edge_embed.core.bundle import load_manifest
from edge_embed.core.tooling import ToolError, check_bundles, run_cli

from .server import Server
from .stats import percentile
from .workloads import TextMaker

# The two lists a reranker is handed: a search's top 20, and a generous top 100.
DOCUMENTS = (20, 100)
# ~60 tokens a document, a passage-sized chunk (special tokens included, by the bundle's own
# tokenizer).
DOCUMENT_TOKENS = 60
QUERY = "how do I keep the hospital budget within the agreement"
SEED = 20261208
WINDOW_S = 5.0
ROUNDS = 3
# A request's own timeout: far above any one request here; a hung server fails the run.
REQUEST_TIMEOUT_S = 60.0
RESULT_JSON = "rerank.json"
RESULT_TABLE = "rerank.txt"

Score = Callable[[str, Sequence[str]], None]


@dataclass
class Figures:
    latencies_s: list[float] = field(default_factory=list)
    pairs: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies_s)
        return {"pairs_per_s": round(self.pairs / self.seconds, 1) if self.seconds else 0.0,
                "p50_ms": round(percentile(ordered, 50) * 1000, 2),
                "requests": len(ordered)}


def http_scorer(server: Server, model: str) -> Score:
    def score(query: str, documents: Sequence[str]) -> None:
        body = json.dumps({"model": model, "query": query, "documents": list(documents),
                           "return_documents": False}).encode()
        status, payload = server.request("POST", "/v1/rerank", body, timeout=REQUEST_TIMEOUT_S)
        if status != 200:
            raise ToolError(f"{server.url}/v1/rerank answered {status}: {payload[:200]!r}")
    return score


def torch_scorer(source: Path) -> Score:
    # torch and sentence-transformers, seconds to import: only for the torch baseline
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(source), device="cpu", local_files_only=True)

    def score(query: str, documents: Sequence[str]) -> None:
        model.predict([(query, d) for d in documents], show_progress_bar=False)
    return score


def measure(score: Score, documents: Sequence[str], window_s: float, into: Figures) -> None:
    score(QUERY, documents)  # warm: the first request of a shape pays for its buffers
    end = time.perf_counter() + window_s
    while True:
        start = time.perf_counter()
        score(QUERY, documents)
        took = time.perf_counter() - start
        into.latencies_s.append(took)
        into.pairs += len(documents)
        into.seconds += took
        if time.perf_counter() >= end:
            return


def run(int8: Path, fp32: Path, source: Path | None, window_s: float,
        rounds: int) -> dict[str, Any]:
    manifest = load_manifest(int8)
    if manifest.task != "rerank" or load_manifest(fp32).task != "rerank":
        raise ToolError("--int8 and --fp32 must be rerank bundles (edge-embed export of a "
                        "cross-encoder, then edge-embed quantize)")
    tokenizer = Tokenizer.from_file(str(int8 / manifest.tokenizer_file))
    maker = TextMaker(tokenizer, SEED)
    docs = [maker.text(DOCUMENT_TOKENS) for _ in range(max(DOCUMENTS))]
    servers = {name: Server(bundle) for name, bundle in (("int8", int8), ("fp32", fp32))}
    try:
        for server in servers.values():
            server.wait_ready()
        systems: dict[str, Score] = {
            name: http_scorer(server, load_manifest(bundle).id)
            for (name, server), bundle in zip(servers.items(), (int8, fp32), strict=True)}
        if source is not None:
            systems["cross-encoder (torch)"] = torch_scorer(source)
        figures = {(s, n): Figures() for s in systems for n in DOCUMENTS}
        for _ in range(rounds):
            for n in DOCUMENTS:
                for name, score in systems.items():
                    measure(score, docs[:n], window_s, figures[(name, n)])
    finally:
        for server in servers.values():
            server.stop()
    return {"model": manifest.id, "document_tokens": DOCUMENT_TOKENS, "window_s": window_s,
            "rounds": rounds, "results": {
                f"{n} documents": {name: figures[(name, n)].summary() for name in systems}
                for n in DOCUMENTS}}


def table(result: dict[str, Any]) -> str:
    lines = [f"rerank: {result['model']}, one query, documents of ~{result['document_tokens']} "
             f"tokens, {result['rounds']} rounds x {result['window_s']:g} s",
             f"{'workload':<14}{'system':<24}{'pairs/s':>10}{'p50 ms':>10}"]
    for workload, systems in result["results"].items():
        base = systems.get("fp32", {}).get("pairs_per_s") or 0.0
        for name, f in systems.items():
            ratio = f" ({f['pairs_per_s'] / base:.2f}x fp32)" if base else ""
            lines.append(f"{workload:<14}{name:<24}{f['pairs_per_s']:>10.1f}{f['p50_ms']:>10.2f}"
                         + ratio)
    return "\n".join(lines) + "\n"


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--int8", type=Path, required=True, help="the int8 rerank bundle")
    p.add_argument("--fp32", type=Path, required=True, help="the fp32 rerank bundle")
    p.add_argument("--source", type=Path, help="the cross-encoder folder, for the torch "
                   "baseline (CrossEncoder.predict); left out without it")
    p.add_argument("--out", type=Path, required=True, help="folder for rerank.json and .txt")
    p.add_argument("--window", type=float, default=WINDOW_S,
                   help=f"seconds per system per workload per round (default {WINDOW_S:g})")
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help=f"interleaved rounds (default {ROUNDS})")
    return p


def main(argv: list[str] | None = None, prog: str = "edge-embed bench rerank") -> int:
    args = parser(prog).parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        check_bundles({"--int8": args.int8, "--fp32": args.fp32})
        if args.window <= 0 or args.rounds <= 0:
            raise ToolError("--window and --rounds must be positive")
        result = run(args.int8, args.fp32, args.source, args.window, args.rounds)
        text = table(result)
        print(text, end="")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / RESULT_JSON).write_text(json.dumps(result, indent=2) + "\n")
        (args.out / RESULT_TABLE).write_text(text)
        return 0

    return run_cli(prog, body)

