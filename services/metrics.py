"""Prometheus metrics, exported through BentoML's own ``/metrics`` (``bentoml.metrics`` follows
BentoML's multiprocess set-up, so every worker's samples are merged).

Names follow Triton's and BentoML's habits: request counts by status, latency, and the batch
sizes actually formed (average batch = inference items ÷ executions). Label values come only from
loaded versions, Podium's endpoint names and its fixed set of statuses — never from what a client
typed — so the number of series is bounded whatever clients send.
"""

from __future__ import annotations

import functools
from typing import Any

# The model/version label of a request no loaded version answered (an unknown name in the URL).
UNKNOWN = "unknown"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        import bentoml

        m = bentoml.metrics
        self.requests = m.Counter(
            name="podium_requests_total", documentation="requests by model, version, endpoint and status",
            labelnames=["model", "version", "endpoint", "status"])
        self.latency = m.Histogram(
            name="podium_request_duration_seconds", documentation="request latency in the server",
            labelnames=["model", "version", "endpoint"], buckets=LATENCY_BUCKETS)
        self.batch_size = m.Histogram(
            name="podium_batch_size", documentation="items per executed batch",
            labelnames=["model", "version"], buckets=BATCH_BUCKETS)
        self.batch_requests = m.Histogram(
            name="podium_batch_requests", documentation="requests merged into one executed batch",
            labelnames=["model", "version"], buckets=BATCH_BUCKETS)
        self.items = m.Counter(
            name="podium_inference_items_total", documentation="items (samples) inferred",
            labelnames=["model", "version"])
        self.executions = m.Counter(
            name="podium_inference_executions_total", documentation="model executions (batches)",
            labelnames=["model", "version"])
        self.compute = m.Histogram(
            name="podium_compute_duration_seconds", documentation="model execution time per batch",
            labelnames=["model", "version"], buckets=LATENCY_BUCKETS)
        self.queue_wait = m.Histogram(
            name="podium_queue_duration_seconds", documentation="time a request waited for its batch",
            labelnames=["model", "version"], buckets=LATENCY_BUCKETS)

        # labels() lookups cost more than the observation itself: keep the children.
        self._batch_children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def observe_batch(self, model: str, version: str, requests: int, items: int,
                      compute_s: float, waits: list[float]) -> None:
        children = self._batch_children.get((model, version))
        if children is None:
            children = self._batch_children[(model, version)] = tuple(
                metric.labels(model, version) for metric in (
                    self.batch_size, self.batch_requests, self.items, self.executions,
                    self.compute, self.queue_wait))
        size, per_batch, item_count, runs, compute, queue_wait = children
        size.observe(items)
        per_batch.observe(requests)
        item_count.inc(items)
        runs.inc()
        compute.observe(compute_s)
        for wait in waits:
            queue_wait.observe(wait)

    def observe_request(self, model: str, version: str, endpoint: str, status: int,
                        seconds: float) -> None:
        key = (model, version, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(model, version, endpoint, str(status)),
                self.latency.labels(model, version, endpoint))
        count, latency = children
        count.inc()
        latency.observe(seconds)


@functools.cache
def get_metrics() -> Any:
    return Metrics()
