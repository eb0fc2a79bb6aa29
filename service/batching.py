"""Cutting length-sorted token rows into model runs: the one cut the engine and the bulk job use.

A batch costs RUN_COST_TOKENS plus its padded tokens (longest x count); batches stay within the
policy's token and input budgets. Over rows sorted by length the cheapest cut is found exactly
(best[j]: cheapest cost of the first j rows) in O(rows x max_inputs).

Pure: no engine, no event loop, so the offline corpus job cuts exactly as the service does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .admission import RUN_COST_TOKENS
from .limits import BatchPolicy


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
