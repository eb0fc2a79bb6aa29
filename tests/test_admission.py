"""Admission by time, as arithmetic: the cost model, the measured rate, the verdict."""

from __future__ import annotations

import pytest

from edge_embed.core.batching import RUN_COST_TOKENS, BatchPolicy
from edge_embed.service.admission import (
    RATE_SMOOTHING,
    RETRY_AFTER_MAX_S,
    RETRY_AFTER_MIN_S,
    Meter,
    estimate_tokens,
    judge,
)
from edge_embed.service.limits import QueueLimits

BATCH = BatchPolicy(max_tokens=1000, max_inputs=10)
QUEUE = QueueLimits(deadline_share=0.5)


def meter(per_run: float, runs: int = 2) -> Meter:
    m = Meter(BATCH, runs)
    m.record(per_run, 1.0)
    return m


def test_cost_counts_the_runs_either_budget_needs() -> None:
    m = Meter(BATCH, 1)
    assert m.cost(100, 1) == 100 + RUN_COST_TOKENS
    assert m.cost(2500, 3) == 2500 + 3 * RUN_COST_TOKENS  # token budget: 3 runs
    assert m.cost(50, 25) == 50 + 3 * RUN_COST_TOKENS  # input budget: 3 runs


def test_rate_is_seeded_by_the_first_run_then_averaged() -> None:
    m = Meter(BATCH, runs=2)
    assert not m.measured
    m.record(1000.0, 0.5)
    assert m.measured and m.rate == pytest.approx(2 * 2000.0)
    m.record(1000.0, 1.0)  # a slower run moves the estimate by RATE_SMOOTHING of the gap
    assert m.per_run == pytest.approx(2000.0 + RATE_SMOOTHING * (1000.0 - 2000.0))


def test_admits_what_ends_within_its_share_of_the_time_left() -> None:
    m = meter(1000.0)  # 2000 cost units per second over two runs
    fits = judge(m, QUEUE, ahead=1000.0, own=900.0, time_left_s=2.0, timeout_s=2.0)
    assert fits.admit and fits.eta_s == pytest.approx(0.95)
    late = judge(m, QUEUE, ahead=1000.0, own=1100.0, time_left_s=2.0, timeout_s=2.0)
    assert not late.admit and late.eta_s == pytest.approx(1.05)
    # The same work is refused once the request has used part of its time (a slow body read).
    assert not judge(m, QUEUE, ahead=1000.0, own=900.0, time_left_s=1.5, timeout_s=2.0).admit


def test_nothing_ahead_admits_any_request() -> None:
    m = meter(10.0)
    assert judge(m, QUEUE, ahead=0.0, own=1e9, time_left_s=1.0, timeout_s=1.0).admit


def test_retry_after_is_when_the_work_ahead_will_have_drained() -> None:
    m = meter(1000.0)  # 2000/s
    # 20,000 units ahead: 10 s of work; a fresh request may start once 10 - 0.5 * 4 = 8 s passed.
    verdict = judge(m, QUEUE, ahead=20_000.0, own=0.0, time_left_s=4.0, timeout_s=4.0)
    assert not verdict.admit and verdict.retry_after_s == 8
    barely = judge(m, QUEUE, ahead=4_100.0, own=0.0, time_left_s=4.0, timeout_s=4.0)
    assert barely.retry_after_s == RETRY_AFTER_MIN_S
    huge = judge(m, QUEUE, ahead=1e9, own=0.0, time_left_s=4.0, timeout_s=4.0)
    assert huge.retry_after_s == RETRY_AFTER_MAX_S


def test_token_estimate_before_tokenizing() -> None:
    assert estimate_tokens(400, True, 256) == 102  # ~4 characters a token, plus the frame
    assert estimate_tokens(40_000, True, 256) == 256  # cut at the model's limit
    assert estimate_tokens(10, False, 256) == 12  # token ids count as they are
