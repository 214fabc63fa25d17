"""Prometheus metrics of one server: requests, latency, batch sizes. One registry per app, so two apps
in one process (tests, benchmarks) keep separate counts."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("selectune_requests", "HTTP requests by route and status code", ["route", "method", "status"], registry=r)
        self.latency = Histogram("selectune_request_seconds", "HTTP request latency by route", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.examples = Counter("selectune_examples", "Examples predicted, by delta", ["model"], registry=r)
        self.generated_tokens = Counter("selectune_generated_tokens", "Tokens generated (POST /v1/generate), by delta", ["model"], registry=r)
        self.batch_examples = Histogram("selectune_batch_examples", "Examples per forward pass, by serving path", ["path"],
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_deltas = Histogram("selectune_batch_deltas", "Distinct deltas per mixed forward pass", buckets=SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("selectune_batch_seconds", "Model time per batch (all its forward passes)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("selectune_queue_wait_seconds", "Time a request waited before its batch ran",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.models = Gauge("selectune_models_loaded", "Deltas served, by path", ["path"], registry=r)
        self.refused = Counter("selectune_deltas_refused", "Deltas refused at load (wrong base, damaged, ...)", registry=r)
        self.dropped = Counter("selectune_requests_dropped", "Requests given up before their answer (deadline, disconnected); "
                               "their jobs do not run", ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
