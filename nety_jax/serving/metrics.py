"""The server's Prometheus metrics (``GET /metrics``): requests by route template and status,
their latency, tokens generated, batch sizes, queue depth, and the prefix cache's counters."""
from __future__ import annotations

import time


class Metrics:
    """The registry and the instruments that both engines and the HTTP side update."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry()
        self.requests = Counter("nety_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.tokens = Counter("nety_generated_tokens", "tokens generated", registry=self.registry)
        self.batch_size = Histogram("nety_batch_size", "rows per compiled batch", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.latency = Histogram("nety_request_latency_seconds", "request latency", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.queue_depth = Gauge("nety_queue_depth", "requests waiting", registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)

    def count_request(self, scope: dict, status: int, start: float) -> None:
        """Counts a request under its route's template (``/v1/models/{model_id:path}``), never the raw
        path: a client inventing paths must not grow /metrics; every unknown path is one label."""
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "(unknown)"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(time.perf_counter() - start)


def metrics_for(backend) -> Metrics:
    """The server's metrics, with the prefix cache's counters where the backend's model has one."""
    metrics = Metrics()
    cache = getattr(getattr(backend, "model", None), "prefix_cache", None)
    if cache is not None:  # backends without a model (exported artifacts, test doubles) have no cache
        from nety_jax.serving.prefix_cache import CacheCollector
        metrics.registry.register(CacheCollector(cache))
    return metrics
