"""One measurement window's result, shared by every worker (HTTP client, onnxruntime, torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Window:
    requests: int  # requests (HTTP) or batches (in-process) completed
    inputs: int  # texts embedded
    errors: int  # failed requests (non-200 or a malformed answer); not counted in `inputs`
    seconds: float  # from the first send to the last completion
    p50_ms: float  # latency of one request / batch call
    p90_ms: float
    p99_ms: float
    first_error: str = ""

    @property
    def throughput(self) -> float:
        """Texts embedded per second."""
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": self.throughput}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def window(latencies_s: Sequence[float], inputs: int, errors: int, seconds: float,
           first_error: str = "") -> Window:
    ms = sorted(x * 1000 for x in latencies_s)
    return Window(len(ms), inputs, errors, seconds, percentile(ms, 50), percentile(ms, 90),
                  percentile(ms, 99), first_error)


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        return 0.0
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
