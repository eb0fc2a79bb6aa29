"""Prometheus metrics (prometheus_client), one registry per app so tests never share counters.

Every metric is listed, with its type, labels and meaning, in docs/metrics.md (a test holds the
two together); deploy/grafana/ has a dashboard built on them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Latency buckets from 1 ms (one short sentence, int8, 2 cores) to 30 s (a queue at its limit).
_LATENCY = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_*: RSS, CPU seconds, open files (Linux /proc; elsewhere it exports nothing)
        ProcessCollector(registry=r)
        self.requests = Counter("edge_embed_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("edge_embed_request_seconds", "HTTP request latency",
                                         ["route"], buckets=_LATENCY, registry=r)
        self.inputs = Counter("edge_embed_inputs", "Inputs embedded", ["model"], registry=r)
        self.tokens = Counter("edge_embed_tokens", "Tokens embedded (after truncation)",
                              ["model"], registry=r)
        self.truncated = Counter("edge_embed_truncated_inputs",
                                 "Inputs cut at the model's token limit", ["model"], registry=r)
        self.cache = Counter("edge_embed_cache", "Embedding cache lookups", ["result"],
                             registry=r)
        self.batches = Counter("edge_embed_batches", "Model runs", ["model"], registry=r)
        self.batch_size = Histogram("edge_embed_batch_size", "Inputs per model run", ["model"],
                                    buckets=_BATCH, registry=r)
        self.batch_tokens = Counter("edge_embed_batch_tokens",
                                    "Tokens computed in model runs, padding included",
                                    ["model", "kind"], registry=r)  # kind: real|padding
        self.inference_seconds = Histogram("edge_embed_inference_seconds", "Model run time",
                                           ["model"], buckets=_LATENCY, registry=r)
        self.queue_seconds = Histogram("edge_embed_queue_seconds", "Time queued before a run",
                                       ["model"], buckets=_LATENCY, registry=r)
        self.queue_inputs = Gauge("edge_embed_queue_inputs", "Inputs waiting", ["model"],
                                  registry=r)
        self.rejected = Counter("edge_embed_rejected", "Requests refused before the model",
                                ["reason"], registry=r)  # overloaded|draining|...
        self.dropped = Counter("edge_embed_dropped_inputs",
                               "Queued inputs dropped before the model (timeout, client gone)",
                               ["model", "reason"], registry=r)
        self.dropped_connections = Counter(
            "edge_embed_dropped_connections",
            "Connections closed before a request was handled (limit, header_timeout)",
            ["reason"], registry=r)
        self.engine_faults = Counter("edge_embed_engine_faults", "Model runs that raised",
                                     ["model"], registry=r)
        self.canary_agreement = Gauge(
            "edge_embed_canary_agreement",
            "Start-up check: min cosine of the bundle's canaries vs their reference vectors",
            ["model"], registry=r)
        self.canary_gate = Gauge("edge_embed_canary_gate",
                                 "The least canary agreement the bundle accepts", ["model"],
                                 registry=r)
        self.canary_failed = Gauge(
            "edge_embed_canary_failed",
            "1 while a model is served although its canaries failed (--canary-failure serve)",
            ["model"], registry=r)
