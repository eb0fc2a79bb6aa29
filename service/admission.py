"""Admission by time: how much work is ahead, how fast it goes, and whether a request fits.

A request is admitted only if the work queued ahead of it plus its own, at the throughput
measured so far, ends within its deadline with a margin (`QueueLimits.deadline_share`);
otherwise it gets 429 at once, with a `Retry-After` from the same estimate. Admitting by size
alone (so many inputs or tokens) let clients in that then waited out their whole timeout for
nothing when the CPUs were slower than the bound assumed (a neighbour process busy on a core).

Work is counted in one unit, the cost model the batch cut also uses: a run costs
`RUN_COST_TOKENS` plus its padded tokens. The throughput is measured, never assumed: each run's
cost over its wall time, averaged over the last few runs, times the runs that go side by side.
A calibration run at warm-up seeds it before the first request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_embed.core.batching import RUN_COST_TOKENS, BatchPolicy

from .limits import QueueLimits

# Weight of the newest run in the throughput average: the last ~10 runs count (a fraction of a
# second under load), so a neighbour taking a core shows within a few runs, while one run
# delayed by the scheduler moves the estimate by a fifth only.
RATE_SMOOTHING = 0.2
# Throughput assumed before any run was timed (cost units per second per run), under what int8
# MiniLM does on 2 cores (docs/measurements.md#initial_cost_per_s). Only a server that skipped
# its warm-up uses it.
INITIAL_COST_PER_S = 10_000.0
# A run in flight is, on average, half done when a request arrives.
RUNNING_SHARE_LEFT = 0.5
# Retry-After bounds (seconds): clients should come back soon, but not hammer a full queue.
RETRY_AFTER_MIN_S = 1
RETRY_AFTER_MAX_S = 30
# Before tokenizing, a text's token count is estimated from its length: English averages 4-5
# characters per WordPiece/BPE token, so 4 errs towards counting more. The estimate holds the
# request's place only while it is tokenized; the exact count replaces it at submit.
CHARS_PER_TOKEN_ESTIMATE = 4
# Tokenizing, in the same unit: the tokenizer reads about this many characters in the CPU time
# the model spends on one token, so a text's tokenizing is counted while it waits for the
# tokenizer. Figures: docs/measurements.md#tokenize_chars_per_token
TOKENIZE_CHARS_PER_TOKEN = 100


def estimate_tokens(chars_or_ids: int, is_text: bool, limit: int, scanned_chars: int = 0) -> int:
    """What an input will cost: its tokens once tokenized and cut (special tokens included),
    plus the `scanned_chars` the tokenizer reads of it, in tokens of model time."""
    body = chars_or_ids // CHARS_PER_TOKEN_ESTIMATE if is_text else chars_or_ids
    return min(limit, body + 2) + scanned_chars // TOKENIZE_CHARS_PER_TOKEN


@dataclass
class Meter:
    """Work in cost units, and the measured rate at which one run gets through it."""

    batching: BatchPolicy
    runs: int  # runs that go side by side for this model
    per_run: float = INITIAL_COST_PER_S
    measured: bool = False

    def cost(self, tokens: int, inputs: int) -> float:
        """Work's cost: its tokens plus the fixed cost of the runs the batch budgets cut it into.

        Padding is not counted (unknown before the cut; ~6 % on a mixed stream): the deadline
        margin covers it.
        """
        runs = max(1, math.ceil(tokens / self.batching.max_tokens),
                   math.ceil(inputs / self.batching.max_inputs))
        return tokens + RUN_COST_TOKENS * runs

    def record(self, cost: float, seconds: float) -> None:
        if seconds <= 0:
            return
        rate = cost / seconds
        if not self.measured:
            self.per_run, self.measured = rate, True
        else:
            self.per_run += RATE_SMOOTHING * (rate - self.per_run)

    @property
    def rate(self) -> float:
        """Cost units per second over all the runs side by side."""
        return max(self.per_run, 1.0) * self.runs

    def seconds(self, cost: float) -> float:
        return cost / self.rate


@dataclass(frozen=True)
class Verdict:
    admit: bool
    eta_s: float  # when the request's work would end, from now
    retry_after_s: int


def judge(meter: Meter, limits: QueueLimits, *, ahead: float, own: float,
          time_left_s: float, timeout_s: float) -> Verdict:
    """Admit if the work ahead plus this request's ends within its share of the time left.

    Nothing ahead admits any request the per-request limits allowed, however large: refusing
    it would refuse it forever, since it can never be faster than on an idle server.
    """
    eta = meter.seconds(ahead + own)
    admit = ahead <= 0 or eta <= limits.deadline_share * time_left_s
    # A client coming back gets a fresh timeout; by then the work ahead has drained at `rate`.
    wait = eta - limits.deadline_share * timeout_s
    retry = int(min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, math.ceil(wait))))
    return Verdict(admit, eta, retry)
