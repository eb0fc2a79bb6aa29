"""In-process baselines: the same inputs embedded with no server in between.

`--kind ort`: the bundle through service.encoder.BundleModel (tokenize, onnxruntime, pool,
normalize), the session built exactly as the service builds it: the ceiling for serving.
`--kind st`: sentence-transformers on torch fp32, with torch using every usable CPU: what
users run by default. Each runs a workload's requests as batches, one after another (no
cross-request batching; the c=16 workload is run as batches of 16, the engine's ideal).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .stats import Window, window
from .worker import serve
from .workloads import Workload

Embed = Callable[[Sequence[str]], object]


def ort_embedder(bundle: Path) -> Embed:
    from service.encoder import BundleModel

    model = BundleModel(bundle)

    def embed(texts: Sequence[str]) -> object:
        return model.embed(texts, batch_size=len(texts))

    return embed


def st_embedder(source: Path) -> Embed:
    # The source is a local folder; never reach for the hub (unreachable on build machines).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from service.cpus import usable_cpus

    torch.set_num_threads(usable_cpus())
    model = SentenceTransformer(str(source), device="cpu")

    def embed(texts: Sequence[str]) -> object:
        with torch.inference_mode():
            return model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True)

    return embed


class Runner:
    def __init__(self, embed: Embed) -> None:
        self.embed = embed
        self.cursor: dict[str, int] = {}

    def measure(self, w: Workload, seconds: float, max_requests: int, warmup: int) -> Window:
        batches = w.batches()
        warm_until = time.perf_counter() + seconds / 5
        for _ in range(warmup):
            if time.perf_counter() > warm_until:
                break
            self._next(w.name, batches)
        latencies: list[float] = []
        inputs = 0
        start = time.perf_counter()
        deadline = start + seconds
        while len(latencies) < max_requests and time.perf_counter() < deadline:
            batch = self._next(w.name, batches, run=False)
            t0 = time.perf_counter()
            self.embed(batch)
            latencies.append(time.perf_counter() - t0)
            inputs += len(batch)
        return window(latencies, inputs, 0, time.perf_counter() - start)

    def _next(self, name: str, batches: list[list[str]], run: bool = True) -> list[str]:
        i = self.cursor.get(name, 0)
        self.cursor[name] = (i + 1) % len(batches)
        if run:
            self.embed(batches[i])
        return batches[i]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    parser.add_argument("--kind", choices=("ort", "st"), required=True)
    parser.add_argument("--model", type=Path, required=True,
                        help="a bundle folder (ort) or a sentence-transformers folder (st)")
    parser.add_argument("--workloads", type=Path, required=True)
    args = parser.parse_args(argv)
    embed = ort_embedder(args.model) if args.kind == "ort" else st_embedder(args.model)
    return serve(args.workloads, Runner(embed).measure)


if __name__ == "__main__":
    raise SystemExit(main())
