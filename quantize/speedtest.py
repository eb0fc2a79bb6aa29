"""Speed of candidate bundles relative to their fp32 bundle, measured as interleaved ratios.

    python -m edge_embed.quantize.speedtest FP32_BUNDLE CANDIDATE [CANDIDATE ...] [--rounds 12]

In one process, round after round, every bundle runs the same batch of 32 short inputs and the
same batch of 32 inputs of ~256 tokens (from the evaluation set), in rotating order; each round
gives a ratio fp32 time / candidate time, and the median ratio is printed. On a shared 2-core
machine absolute times swing by 2x from minute to minute; ratios taken seconds apart do not.
This is a measurement tool, not a test (speed is asserted nowhere).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from edge_embed.core.feeds import I64
from edge_embed.core.runtime import RuntimeOptions

# Batch 32: where short-input throughput peaks on 2 cores (int8 MiniLM: rising from 1260/s at
# smaller batches to 2437/s at 32, lower at 64).
BATCH = 32
# Short inputs: the evaluation set's paraphrase sentences (10-25 tokens).
SHORT_KIND = "para"
# Timed calls per round: a short batch takes ~20-80 ms, a long one ~0.3-0.6 s.
SHORT_CALLS = 4
LONG_CALLS = 1


def eval_batches(model: BundleModel) -> dict[str, list[I64]]:
    """{"short": 32 paraphrase sentences, "long": the 32 longest texts}, as token-id rows."""
    items = load_eval_set().items
    short = [i.text for i in items if i.kind == SHORT_KIND][:BATCH]
    longest = sorted(items, key=lambda i: -len(i.text))[:BATCH]
    tok = model.tokenizer
    return {"short": [t.ids for t in tok.encode(short)],
            "long": [t.ids for t in tok.encode([i.text for i in longest])]}


def _time(model: BundleModel, batch: Sequence[I64], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        model.run(batch)
    return (time.perf_counter() - start) / calls


def measure(paths: Sequence[Path], rounds: int, level: str,
            threads: int | None = None) -> dict[str, dict[str, float]]:
    """{bundle: {"short": median ratio, "long": ..., "short_ms": ..., "long_ms": ...}}."""
    options = RuntimeOptions(graph_optimization=level, intra_op_threads=threads)
    return measure_models({str(p): BundleModel(p, options) for p in paths}, rounds)


def measure_models(models: dict[str, BundleModel], rounds: int,
                   kinds: Sequence[tuple[str, int]] = (("short", SHORT_CALLS),
                                                       ("long", LONG_CALLS)),
                   ) -> dict[str, dict[str, float]]:
    """As `measure`, for loaded models under any labels (the first is the baseline): the same
    batches, in rotating order round after round."""
    names = list(models)
    batches = eval_batches(models[names[0]])
    ratios: dict[str, dict[str, list[float]]] = {n: {k: [] for k, _ in kinds} for n in names}
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k, _ in kinds} for n in names}
    for model in models.values():  # warm-up: first runs allocate the arena and pack weights
        for kind, _ in kinds:
            model.run(batches[kind])
    for r in range(rounds):
        for kind, calls in kinds:
            order = names[r % len(names):] + names[: r % len(names)]
            took = {n: _time(models[n], batches[kind], calls) for n in order}
            for n in names:
                ratios[n][kind].append(took[names[0]] / took[n])
                times[n][kind].append(took[n])
    return {n: {**{k: statistics.median(ratios[n][k]) for k, _ in kinds},
                **{f"{k}_ms": 1000 * statistics.median(times[n][k]) for k, _ in kinds}}
            for n in names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.quantize.speedtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fp32", type=Path)
    p.add_argument("candidates", type=Path, nargs="+")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--level", default="auto", choices=("auto", "basic", "extended", "all"),
                   help="onnxruntime graph optimization level (auto: the service's choice)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every "
                   "usable CPU, as the service; 1 is steadier on a machine shared with others)")
    args = p.parse_args(argv)
    result = measure([args.fp32, *args.candidates], args.rounds, args.level, args.threads)
    print(f"{'bundle':50s} {'short x':>8s} {'long x':>8s} {'short ms':>9s} {'long ms':>9s}")
    for path, r in result.items():
        print(f"{path[-50:]:50s} {r['short']:8.2f} {r['long']:8.2f} {r['short_ms']:9.1f} "
              f"{r['long_ms']:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
