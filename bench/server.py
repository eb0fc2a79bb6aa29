"""The service under test, for the benchmarks: a service process (service/process.py) timed to
its first answer, with the engine's batch counters read from /metrics.

Talks to it with the standard library only (the orchestrator must stay light: the load comes
from the client process, not from here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from edge_embed.service.process import READY_TIMEOUT_S, ServerError, ServiceProcess

# Cold-start polling: fine enough that the poll interval is small against a ~0.3 s start.
COLD_START_POLL_S = 0.002


@dataclass(frozen=True)
class BatchCounters:
    """Cumulative engine counters from /metrics; subtract two snapshots for one workload."""

    real_tokens: float = 0.0
    padding_tokens: float = 0.0
    batches: float = 0.0
    batch_inputs: float = 0.0

    def __add__(self, other: BatchCounters) -> BatchCounters:
        return BatchCounters(self.real_tokens + other.real_tokens,
                             self.padding_tokens + other.padding_tokens,
                             self.batches + other.batches, self.batch_inputs + other.batch_inputs)

    def __sub__(self, other: BatchCounters) -> BatchCounters:
        return BatchCounters(self.real_tokens - other.real_tokens,
                             self.padding_tokens - other.padding_tokens,
                             self.batches - other.batches, self.batch_inputs - other.batch_inputs)

    @property
    def padding_share(self) -> float | None:
        total = self.real_tokens + self.padding_tokens
        return self.padding_tokens / total if total else None

    @property
    def mean_batch(self) -> float | None:
        return self.batch_inputs / self.batches if self.batches else None


def parse_counters(text: str) -> BatchCounters:
    real = padding = batches = inputs = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edge_embed_batch_tokens_total":
                if s.labels.get("kind") == "real":
                    real += s.value
                elif s.labels.get("kind") == "padding":
                    padding += s.value
            elif s.name == "edge_embed_batch_size_count":
                batches += s.value
            elif s.name == "edge_embed_batch_size_sum":
                inputs += s.value
    return BatchCounters(real, padding, batches, inputs)


class Server(ServiceProcess):
    """A service process for a benchmark: start-up timed at a fine poll, batch counters."""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S,
                   poll_s: float = COLD_START_POLL_S) -> float:
        """Seconds from process start until /ready answered 200."""
        return super().wait_ready(timeout, poll_s)

    def first_embedding(self, model: str, text: str, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from process start until an embedding request answered 200."""
        body = json.dumps({"model": model, "input": text}).encode()
        return self.poll("POST", "/v1/embeddings", body, timeout, COLD_START_POLL_S)

    def counters(self) -> BatchCounters:
        status, payload = self.request("GET", "/metrics")
        if status != 200:
            raise ServerError(f"/metrics answered {status}")
        return parse_counters(payload.decode())
