"""How model runs are formed: the budgets, and the one cut the engine and the corpus job use.

A batch costs RUN_COST_TOKENS plus its padded tokens (longest x count); batches stay within the
policy's token and input budgets. Over rows sorted by length the cheapest cut is found exactly
(best[j]: cheapest cost of the first j rows) in O(rows x max_inputs).

Pure: no engine, no event loop, so the offline corpus job cuts exactly as the service does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Padded tokens per model run (longest x count): 4 texts of 256 tokens, 32 of 32. Smaller runs
# keep a single-threaded run's activations in cache and bound the arena; short requests still
# batch 32 at a time. Figures: docs/measurements.md#batch_tokens
BATCH_TOKENS = 1024
# Short inputs gain throughput up to batch 32 and lose it at 64 (docs/measurements.md#batch_inputs).
BATCH_INPUTS = 32
# Extra wait to fill a batch when the worker is free. 0: never wait; batches form from what
# queues while a run is in flight, so an idle server answers at once
# (figures: docs/measurements.md#batch_delay_ms).
BATCH_DELAY_MS = 0.0
# Pad batch widths up to a multiple of this (fewer distinct shapes for onnxruntime's arena).
# 1: padding cost more throughput than the arena saved (--arena-shrink is the memory knob); a
# lone input is never padded. Figures: docs/measurements.md#pad_multiple
PAD_MULTIPLE = 1


@dataclass(frozen=True)
class BatchPolicy:
    max_tokens: int = BATCH_TOKENS
    max_inputs: int = BATCH_INPUTS
    delay_ms: float = BATCH_DELAY_MS
    pad_multiple: int = PAD_MULTIPLE


# What one more model run costs beyond its tokens (session call, executor hop, pooling, the
# worker's bookkeeping), in tokens of compute; batches are cut where padding would cost more
# than another run. Figures: docs/measurements.md#run_cost_tokens
RUN_COST_TOKENS = 16


def padded_width(longest: int, count: int, policy: BatchPolicy, model_max_tokens: int) -> int:
    """The width a batch of `count` rows whose longest has `longest` tokens is padded to."""
    if count <= 1:
        return longest  # a lone input has no batch-mates to pad for
    m = max(1, policy.pad_multiple)
    return min(-(-longest // m) * m, max(longest, model_max_tokens))


def cut_sorted(lengths: Sequence[int], policy: BatchPolicy,
               model_max_tokens: int) -> list[tuple[int, int]]:
    """The cheapest cut of rows of these lengths (ascending) as [start, end) ranges, in order."""
    n = len(lengths)
    best = [0.0] + [math.inf] * n
    start = [0] * (n + 1)  # where the last batch of the best cut of the first j rows starts
    for j in range(1, n + 1):
        longest = lengths[j - 1]
        for i in range(j - 1, max(-1, j - 1 - policy.max_inputs), -1):
            count = j - i
            width = padded_width(longest, count, policy, model_max_tokens)
            if count > 1 and width * count > policy.max_tokens:
                break
            cost = best[i] + RUN_COST_TOKENS + width * count
            if cost < best[j]:
                best[j], start[j] = cost, i
    ranges: list[tuple[int, int]] = []
    j = n
    while j > 0:
        ranges.append((start[j], j))
        j = start[j]
    ranges.reverse()
    return ranges
