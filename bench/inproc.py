"""In-process baselines: the same inputs embedded with no server in between.

`--kind ort`: the bundle through core.encoder.BundleModel (tokenize, onnxruntime, pool,
normalize), the session built exactly as the service builds it and run in the service's layout
(as many batches at once as the service has concurrent runs, each on its intra-op threads; the
service's lone session, for a request that is the whole load, is not used here): the ceiling
for serving under load.
`--kind peer`: the peers' int8 graph (bench/peer.py) through the same BundleModel, on one session
with every usable CPU and one batch at a time: how fastembed and infinity run it, no server.
`--kind st`: sentence-transformers on torch fp32, with torch using every usable CPU: what
users run by default. Each runs a workload's requests as batches, one after another (no
cross-request batching; the c=16 workload is run as batches of 16, the engine's ideal).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_embed.core.cpus import plan_threads, usable_cpus

from .stats import Window, window
from .worker import serve
from .workloads import Workload

if TYPE_CHECKING:
    from edge_embed.core.encoder import BundleModel

Embed = Callable[[Sequence[str]], object]


# Each embedder imports its stack inside it: a worker process loads only the system it measures
# (onnxruntime or torch, never both).
def ort_embedder(bundle: Path) -> tuple[Embed, int]:
    """The embedder and how many batches to run at once: the service's default thread plan."""
    from edge_embed.core.encoder import BundleModel
    from edge_embed.core.runtime import RuntimeOptions

    threads, runs = plan_threads(usable_cpus(), None, None)
    model = BundleModel(bundle, RuntimeOptions(intra_op_threads=threads))
    return _embed(model), runs


def peer_embedder(bundle: Path) -> Embed:
    """One session with every usable CPU (and no second one), one batch at a time."""
    from edge_embed.core.encoder import BundleModel
    from edge_embed.core.runtime import RuntimeOptions

    return _embed(BundleModel(bundle, RuntimeOptions(intra_op_threads=usable_cpus())))


def _embed(model: BundleModel) -> Embed:

    def embed(texts: Sequence[str]) -> object:
        return model.embed(texts, batch_size=len(texts))

    return embed


def st_embedder(source: Path) -> Embed:
    # The source is a local folder; never reach for the hub (unreachable on build machines).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(usable_cpus())
    model = SentenceTransformer(str(source), device="cpu")

    def embed(texts: Sequence[str]) -> object:
        with torch.inference_mode():
            return model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True)

    return embed


class Runner:
    """Runs a workload's batches back to back on `parallel` threads (onnxruntime and the
    tokenizer release the GIL, so batches on different threads run side by side)."""

    def __init__(self, embed: Embed, parallel: int = 1) -> None:
        self.embed = embed
        self.parallel = max(1, parallel)
        self.cursor: dict[str, int] = {}
        self._lock = threading.Lock()

    def measure(self, w: Workload, seconds: float, max_requests: int, warmup: int) -> Window:
        batches = w.batches()
        warm_until = time.perf_counter() + seconds / 5
        for _ in range(warmup):
            if time.perf_counter() > warm_until:
                break
            self.embed(self._next(w.name, batches))
        latencies: list[float] = []
        counts = [0]
        start = time.perf_counter()
        deadline = start + seconds

        def loop() -> None:
            while time.perf_counter() < deadline:
                with self._lock:
                    if len(latencies) >= max_requests:
                        return
                batch = self._next(w.name, batches)
                t0 = time.perf_counter()
                self.embed(batch)
                took = time.perf_counter() - t0
                with self._lock:
                    latencies.append(took)
                    counts[0] += len(batch)

        threads = [threading.Thread(target=loop) for _ in range(self.parallel - 1)]
        for t in threads:
            t.start()
        loop()
        for t in threads:
            t.join()
        return window(latencies, counts[0], 0, time.perf_counter() - start)

    def _next(self, name: str, batches: list[list[str]]) -> list[str]:
        with self._lock:
            i = self.cursor.get(name, 0)
            self.cursor[name] = (i + 1) % len(batches)
        return batches[i]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_embed.bench.inproc", description=__doc__)
    parser.add_argument("--kind", choices=("ort", "peer", "st"), required=True)
    parser.add_argument("--model", type=Path, required=True,
                        help="a bundle folder (ort, peer) or a sentence-transformers folder (st)")
    parser.add_argument("--workloads", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.kind == "ort":
        embed, parallel = ort_embedder(args.model)
    else:
        embed = peer_embedder(args.model) if args.kind == "peer" else st_embedder(args.model)
        parallel = 1
    return serve(args.workloads, Runner(embed, parallel).measure)


if __name__ == "__main__":
    raise SystemExit(main())
